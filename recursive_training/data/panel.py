"""A seeded synthetic panel of many series with a known ground truth, in memory or as a file.

``builtin:panel?n_series=N&years=Y&seed=S`` is a universe of N independent series on
business days from PANEL_START. Each series' changes follow its own stable AR(L) with an
intercept and its own scale (log-uniform over five orders of magnitude, 0.01 to 1,000),
plus, unless ``market=0``, the lag-0 change of one shared exogenous series ``market``
(itself an AR(1)):

    d_{i,t+1} = c_i + sum_l a_{i,l} d_{i,t-l} + b_i m_{t} + s_i e_{i,t+1}

so an ``ar`` model with the market as exogenous regressor recovers ``panel_ground_truth``.
Series are simulated in blocks of BLOCK_SERIES with one random stream per block, all
series of a block at once (one numpy step per time step), so a panel does not depend on
how it is written or read, and 10,000 series x 10 years take a couple of seconds.

``write_panel`` writes the panel in long format (``unique_id, ds, y``, the mlforecast
convention) to Parquet, sorted by ``(unique_id, ds)`` with whole series per row group, so
a reader that wants a shard of series touches only that shard's row groups.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recursive_training.constants import INTERCEPT
from recursive_training.data.common import DataSource, query_options
from recursive_training.exceptions import DataError
from recursive_training.models.base import own_lag_names

PANEL_START = pd.Timestamp("2000-01-03")
BUSINESS_DAYS_PER_YEAR = 261
BLOCK_SERIES = 4096
"""Series simulated together from one random stream (fixed: the panel must not depend on it)."""
ROWS_PER_GROUP = 1 << 20
"""Target rows per Parquet row group; a group always holds whole series."""
MARKET = "market"
MARKET_AR = 0.2
"""The market's own AR(1) coefficient on its changes (unit scale, no drift)."""


@dataclass(frozen=True)
class PanelSpec:
    """Size, seed and structure of a synthetic panel (see the module docstring)."""

    n_series: int = 1000
    years: float = 10.0
    seed: int = 0
    lags: int = 2
    market: bool = True
    noise: float = 1.0

    @classmethod
    def from_query(cls, query: str, uri: str) -> PanelSpec:
        """Parse ``n_series=..&years=..&seed=..&lags=..&market=0|1&noise=..`` with clear errors."""
        types = {
            "n_series": int,
            "years": float,
            "seed": int,
            "lags": int,
            "market": int,
            "noise": float,
        }
        values: dict[str, int | float | bool] = {**query_options(query, types, uri)}
        if "market" in values:
            values["market"] = bool(values["market"])
        spec = cls(**values)  # type: ignore[arg-type]
        if spec.n_series < 1 or spec.years <= 0 or spec.lags < 1 or spec.noise < 0:
            raise DataError(
                "n_series >= 1, years > 0, lags >= 1 and noise >= 0 are required", source=uri
            )
        return spec

    @property
    def n_rows(self) -> int:
        """Timestamps per series."""
        return max(int(self.years * BUSINESS_DAYS_PER_YEAR), self.lags + 2)

    @cached_property
    def timestamps(self) -> pd.DatetimeIndex:
        """The business days every series is observed on."""
        return pd.bdate_range(PANEL_START, periods=self.n_rows)

    @cached_property
    def series_names(self) -> list[str]:
        """``s00000``, ``s00001``, ...: zero-padded so string order is numeric order."""
        width = max(5, len(str(self.n_series - 1)))
        return [f"s{i:0{width}d}" for i in range(self.n_series)]

    @property
    def names(self) -> list[str]:
        """Every variable in sorted order: ``market`` (if any) sorts before ``s...``."""
        return ([MARKET] if self.market else []) + self.series_names


@dataclass(frozen=True)
class PanelTruth:
    """The ground-truth process of every series, in the series' own units."""

    intercept: np.ndarray  # (n_series,)
    own: np.ndarray  # (n_series, lags): own[i, l] = effect of the change at lag l
    market: np.ndarray  # (n_series,): effect of the market's latest change (0 without one)
    scale: np.ndarray  # (n_series,): noise standard deviation of each series' change


def _block_truth(spec: PanelSpec, block: int, size: int) -> PanelTruth:
    """The coefficients of one block's series, drawn from that block's own stream."""
    rng = np.random.default_rng([spec.seed, block, 0])
    scale = 10.0 ** rng.uniform(-2.0, 3.0, size)
    raw = rng.uniform(-1.0, 1.0, (size, spec.lags)) * 0.5 ** np.arange(spec.lags)
    persistence = rng.uniform(0.1, 0.8, size)  # sum of |a|: < 1 keeps every series stationary
    own = raw * (persistence / np.abs(raw).sum(axis=1))[:, None]
    intercept = rng.uniform(-0.05, 0.05, size) * scale
    market = rng.uniform(-0.5, 0.5, size) * scale if spec.market else np.zeros(size)
    return PanelTruth(intercept, own, market, scale)


def _blocks(spec: PanelSpec) -> Iterator[tuple[int, int, int]]:
    """``(block, first series, stop)`` of every block."""
    for block, first in enumerate(range(0, spec.n_series, BLOCK_SERIES)):
        yield block, first, min(first + BLOCK_SERIES, spec.n_series)


def panel_truth(spec: PanelSpec) -> PanelTruth:
    """The ground truth of all series (cheap: no simulation)."""
    parts = [_block_truth(spec, block, stop - first) for block, first, stop in _blocks(spec)]
    return PanelTruth(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in PanelTruth.__dataclass_fields__)
    )


def panel_ground_truth(spec: PanelSpec, lags: int | None = None) -> pd.DataFrame:
    """True horizon-1 coefficients: one row per series (``market`` too), columns
    the features of an ``ar`` model with the market as exog (``models.base``):
    ``const``, ``own.change.lag{l}`` and ``market.change.lag{l}``.

    ``lags`` pads with zeros (or cuts) to the lags a model uses; default ``spec.lags``.
    """
    lags = spec.lags if lags is None else lags
    truth = panel_truth(spec)
    columns = own_lag_names([MARKET] if spec.market else [], lags)
    table = pd.DataFrame(0.0, index=pd.Index(spec.names, name="unique_id"), columns=columns)
    kept = min(lags, spec.lags)
    table.loc[spec.series_names, INTERCEPT] = truth.intercept
    table.loc[spec.series_names, columns[1 : 1 + kept]] = truth.own[:, :kept]
    if spec.market:
        table.loc[spec.series_names, f"{MARKET}.change.lag0"] = truth.market
        table.loc[MARKET, "own.change.lag0"] = MARKET_AR
    return table


def market_changes(spec: PanelSpec) -> np.ndarray:
    """The shared market's changes (T,), an AR(1) with unit scale."""
    shocks = np.random.default_rng([spec.seed, 1 << 30]).standard_normal(spec.n_rows) * spec.noise
    changes = np.zeros(spec.n_rows)
    for t in range(1, spec.n_rows):
        changes[t] = MARKET_AR * changes[t - 1] + shocks[t]
    return changes


def simulate_block(spec: PanelSpec, block: int, first: int, stop: int) -> np.ndarray:
    """Levels (T, stop - first) of one block, every series stepped at once."""
    truth = _block_truth(spec, block, stop - first)
    market = market_changes(spec)
    rng = np.random.default_rng([spec.seed, block, 1])
    changes = rng.standard_normal((spec.n_rows, stop - first))
    changes *= truth.scale * spec.noise
    changes[: spec.lags] = 0.0
    step = np.empty(stop - first)
    for t in range(spec.lags, spec.n_rows):
        np.add(truth.intercept, truth.market * market[t - 1], out=step)
        for lag in range(spec.lags):
            step += truth.own[:, lag] * changes[t - 1 - lag]
        changes[t] += step
    return np.cumsum(changes, axis=0, out=changes) + 100.0 * truth.scale


def simulate_panel(spec: PanelSpec) -> np.ndarray:
    """Levels (T, variables) of the whole panel, columns in ``spec.names`` order."""
    levels = np.empty((spec.n_rows, len(spec.names)))
    offset = 1 if spec.market else 0
    if spec.market:
        levels[:, 0] = 100.0 + np.cumsum(market_changes(spec))
    for block, first, stop in _blocks(spec):
        levels[:, offset + first : offset + stop] = simulate_block(spec, block, first, stop)
    return levels


PANEL_SCHEMA = pa.schema(
    [
        ("unique_id", pa.dictionary(pa.int32(), pa.string())),
        ("ds", pa.timestamp("ns")),
        ("y", pa.float64()),
    ]
)


def _long_table(names: Sequence[str], levels: np.ndarray, stamps: pa.Array) -> pa.Table:
    """Long rows of ``levels`` (T, len(names)), sorted by series then time."""
    n_rows, n_series = levels.shape
    codes = pa.array(np.repeat(np.arange(n_series, dtype=np.int32), n_rows))
    ids = pa.DictionaryArray.from_arrays(codes, pa.array(names, pa.string()))
    ds = pa.chunked_array([stamps] * n_series) if n_series else pa.chunked_array([], stamps.type)
    return pa.Table.from_arrays(
        [ids, ds.combine_chunks(), pa.array(levels.T.ravel())], schema=PANEL_SCHEMA
    )


def write_panel(spec: PanelSpec, path: str | Path, rows_per_group: int = ROWS_PER_GROUP) -> Path:
    """Write the panel as long Parquet sorted by ``(unique_id, ds)``, whole series per row
    group (about ``rows_per_group`` rows), one block at a time (memory: one block)."""
    path = Path(path)
    stamps = pa.array(spec.timestamps.to_numpy().astype("datetime64[ns]"))
    per_group = max(1, rows_per_group // spec.n_rows)
    offset = 1 if spec.market else 0
    with pq.ParquetWriter(path, PANEL_SCHEMA, compression="snappy") as writer:
        if spec.market:
            market = 100.0 + np.cumsum(market_changes(spec))
            writer.write_table(_long_table([MARKET], market[:, None], stamps))
        for block, first, stop in _blocks(spec):
            levels = simulate_block(spec, block, first, stop)
            names = spec.names[offset + first : offset + stop]
            for start in range(0, stop - first, per_group):
                group = slice(start, start + per_group)
                writer.write_table(
                    _long_table(names[group], levels[:, group], stamps),
                    row_group_size=per_group * spec.n_rows,
                )
    return path


class PanelSource(DataSource):
    """``builtin:panel``: simulated once per process (8 bytes x T x variables), then sliced."""

    def __init__(self, uri: str, spec: PanelSpec) -> None:
        super().__init__(uri)
        self.spec = spec
        self._levels = simulate_panel(spec)
        self._columns = {name: i for i, name in enumerate(spec.names)}

    def timestamps(self) -> pd.DatetimeIndex:
        return self.spec.timestamps

    def variables(self) -> tuple[str, ...]:
        return tuple(self.spec.names)

    def load(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        self.check_variables(variables)
        rows = self.spec.timestamps.slice_indexer(first, last)
        columns = [self._columns[v] for v in variables]
        return pd.DataFrame(
            self._levels[rows][:, columns],
            index=self.spec.timestamps[rows],
            columns=list(variables),
        )
