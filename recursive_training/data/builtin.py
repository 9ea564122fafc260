"""Data shipped with the package: a seeded synthetic VAR and real US macro data.

``builtin:synthetic`` has a known ground truth so tests and users can check that
training recovers it. Its changes follow a stable VAR(2):
``d_{t+1} = c + A_0 d_t + A_1 d_{t-1} + e``, on business days, with variables on very
different scales (so a scale-free ridge penalty matters). Options ride in the URI:
``builtin:synthetic?n_variables=100&years=30&seed=7``. With ``signal=0`` every coefficient
and drift is zero: independent random walks, where no model or rule can beat a coin flip
(what the honesty of rule validation is checked on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recursive_training.constants import INTERCEPT
from recursive_training.data.common import DataSource, InMemorySource, query_options
from recursive_training.data.panel import PanelSource, PanelSpec
from recursive_training.exceptions import DataError
from recursive_training.features import feature_names

NAMED_SERIES = ("spx_close", "us_10y_yield", "gdp_growth", "inflation_rate")
SYNTHETIC_START = pd.Timestamp("2000-01-03")
TRUE_LAGS = 2


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and seed of a synthetic panel."""

    n_variables: int = 4
    years: float = 20.0
    seed: int = 0
    noise: float = 1.0
    signal: bool = True

    @classmethod
    def from_query(cls, query: str, uri: str) -> SyntheticSpec:
        """Parse ``n_variables=..&years=..&seed=..&noise=..&signal=0|1`` with clear errors."""
        types = {"n_variables": int, "years": float, "seed": int, "noise": float, "signal": int}
        values: dict[str, int | float | bool] = {**query_options(query, types, uri)}
        if values.get("signal", 1) not in (0, 1):
            raise DataError(f"option signal={values['signal']} must be 0 or 1", source=uri)
        if "signal" in values:
            values["signal"] = bool(values["signal"])
        spec = cls(**values)  # type: ignore[arg-type]
        if spec.n_variables < 1 or spec.years <= 0 or spec.noise < 0:
            raise DataError("n_variables >= 1, years > 0 and noise >= 0 are required", source=uri)
        return spec

    @property
    def names(self) -> list[str]:
        """Variable names: the four design examples first, then series_NNN."""
        return [
            NAMED_SERIES[i] if i < len(NAMED_SERIES) else f"series_{i:03d}"
            for i in range(self.n_variables)
        ]


@dataclass(frozen=True)
class VarProcess:
    """The ground-truth process in the variables' own units."""

    intercept: np.ndarray  # (m,)
    coefficients: (
        np.ndarray
    )  # (TRUE_LAGS, m, m): coefficients[l][v, u] = effect of change u at lag l on v
    scale: np.ndarray  # (m,) noise standard deviation of each variable's change


def synthetic_process(spec: SyntheticSpec) -> VarProcess:
    """Draw a stable sparse VAR(2) on changes, then give each variable its own scale."""
    rng = np.random.default_rng(spec.seed)
    m = spec.n_variables
    a0 = np.diag(rng.uniform(-0.3, 0.4, m))
    a1 = np.diag(rng.uniform(-0.15, 0.15, m))
    for lag_matrix, strength in ((a0, 0.25), (a1, 0.1)):
        links = rng.random((m, m)) < min(1.0, 2.0 / m)
        np.fill_diagonal(links, False)
        lag_matrix[links] = rng.uniform(-strength, strength, int(links.sum()))
    companion = np.zeros((2 * m, 2 * m))
    companion[:m, :m], companion[:m, m:], companion[m:, :m] = a0, a1, np.eye(m)
    radius = float(np.max(np.abs(np.linalg.eigvals(companion))))
    if radius > 0.8:  # keep the process comfortably stationary
        a0, a1 = a0 * 0.8 / radius, a1 * (0.8 / radius) ** 2
    scale = 10.0 ** rng.uniform(-2, 1, m)
    drift = rng.uniform(-0.05, 0.05, m)
    standardized = np.stack([a0, a1])
    coefficients = standardized * scale[None, :, None] / scale[None, None, :]
    if not spec.signal:
        return VarProcess(np.zeros(m), np.zeros_like(coefficients), scale)
    return VarProcess(intercept=drift * scale, coefficients=coefficients, scale=scale)


def simulate(spec: SyntheticSpec) -> pd.DataFrame:
    """Simulate levels on business days from SYNTHETIC_START for ``spec.years`` years."""
    process = synthetic_process(spec)
    index = pd.bdate_range(SYNTHETIC_START, periods=max(int(spec.years * 261), TRUE_LAGS + 2))
    rng = np.random.default_rng([spec.seed, 1])
    shocks = rng.standard_normal((len(index), spec.n_variables)) * process.scale * spec.noise
    changes = np.zeros_like(shocks)
    a0, a1 = process.coefficients
    for t in range(2, len(index)):
        changes[t] = process.intercept + a0 @ changes[t - 1] + a1 @ changes[t - 2] + shocks[t]
    levels = 100.0 * process.scale + np.cumsum(changes, axis=0)
    return pd.DataFrame(levels, index=index, columns=spec.names)


def ground_truth(spec: SyntheticSpec, lags: int) -> pd.DataFrame:
    """True coefficients of the horizon-1 model with ``lags`` lags: features x targets."""
    process = synthetic_process(spec)
    names = spec.names
    truth = pd.DataFrame(0.0, index=feature_names(names, lags), columns=names)
    truth.loc[INTERCEPT] = process.intercept
    for lag in range(min(lags, TRUE_LAGS)):
        for u_index, u in enumerate(names):
            truth.loc[f"{u}.change.lag{lag}"] = process.coefficients[lag][:, u_index]
    return truth


class SyntheticSource(InMemorySource):
    """``builtin:synthetic``: simulated once per process, then sliced per batch."""

    def __init__(self, uri: str, spec: SyntheticSpec) -> None:
        self.spec = spec
        super().__init__(uri, simulate(spec))


def macro_frame() -> pd.DataFrame:
    """statsmodels' US quarterly macro data, 1959Q1-2009Q3, indexed by quarter start."""
    from statsmodels.datasets import macrodata

    data = macrodata.load_pandas().data
    quarter_start = pd.DataFrame(
        {"year": data["year"].astype(int), "month": 3 * data["quarter"].astype(int) - 2, "day": 1}
    )
    frame: pd.DataFrame = data.drop(columns=["year", "quarter"])
    return frame.set_index(pd.DatetimeIndex(pd.to_datetime(quarter_start)))


def open_builtin(uri: str) -> DataSource:
    """Open ``builtin:NAME[?options]``."""
    name, _, query = uri.removeprefix("builtin:").partition("?")
    if name == "synthetic":
        return SyntheticSource(uri, SyntheticSpec.from_query(query, uri))
    if name == "panel":
        return PanelSource(uri, PanelSpec.from_query(query, uri))
    if name == "macro":
        if query:
            raise DataError("builtin:macro takes no options", source=uri)
        return InMemorySource(uri, macro_frame())
    raise DataError(
        "unknown builtin data set; use builtin:synthetic, builtin:panel or builtin:macro",
        source=uri,
    )
