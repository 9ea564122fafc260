"""Date-range batches: the plan that the engines (``engines.py``) run tasks over.

A ``TrainingBatch`` is a plan, not data: it names its date range, the rows it trains on
(by realization) and evaluates (by origin), and the window of rows it must load, margins
included. Tasks are pure functions of (batch, task spec, ...), so any engine (in-process,
a local Dask cluster, a remote scheduler) gives the same numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from recursive_training.exceptions import DataError


@dataclass(frozen=True)
class TrainingBatch:
    """One date range ``[start, end)`` and the global rows it needs.

    Row numbers index the source's timestamps. Per horizon (in the order of ``horizons``),
    ``train_rows`` are the realization rows whose samples this batch adds to the statistics
    and ``eval_rows`` the origin rows it predicts; ``window_rows`` is what it loads: every
    horizon's rows, plus lags, rule history and fill margin. A horizon's rows are those a
    run of that horizon alone plans, so each horizon computes what it would alone.
    """

    batch_id: int
    start: pd.Timestamp
    end: pd.Timestamp
    variables: tuple[str, ...]
    horizons: tuple[int, ...]
    train_rows: tuple[tuple[int, int], ...]
    eval_rows: tuple[tuple[int, int], ...]
    window_rows: tuple[int, int]
    window_first: pd.Timestamp
    window_last: pd.Timestamp
    # The window's timestamps (a few KB): a task hands them to the source, so a worker never
    # builds the source's whole time index (a scan of every file of a long panel). Not in
    # the batch's repr or equality: the fields above already determine them.
    window_stamps: NDArray[np.datetime64] = field(
        default_factory=lambda: np.empty(0, dtype="datetime64[ns]"), repr=False, compare=False
    )

    @property
    def is_empty(self) -> bool:
        """True when the batch has no row to train on and none to evaluate, at any horizon."""
        return not any(a < b for a, b in (*self.train_rows, *self.eval_rows))

    @property
    def train_samples(self) -> int:
        """Realization rows trained on, summed over horizons."""
        return sum(b - a for a, b in self.train_rows if b > a)

    def __str__(self) -> str:
        return f"batch {self.batch_id} [{self.start:%Y-%m-%d}, {self.end:%Y-%m-%d})"


@dataclass(frozen=True)
class SeriesShard:
    """The series at positions ``[start, stop)`` of a batch's series: what one task of a
    per-series structure (ar, pooled) loads and processes."""

    start: int
    stop: int


def series_shards(n_series: int, size: int) -> list[SeriesShard]:
    """Consecutive shards of ``size`` series covering ``n_series`` (one when size is 0)."""
    if size <= 0 or size >= n_series:
        return [SeriesShard(0, n_series)]
    return [SeriesShard(start, min(start + size, n_series)) for start in range(0, n_series, size)]


def batch_boundaries(
    start: pd.Timestamp, end: pd.Timestamp, batch_size_days: int
) -> list[pd.Timestamp]:
    """``start, start + d, start + 2d, ..., end``: consecutive windows covering [start, end)."""
    step = pd.Timedelta(days=batch_size_days)
    count = int(np.ceil((end - start) / step))
    return [start + k * step for k in range(count)] + [end]


def plan_batches(
    timestamps: pd.DatetimeIndex,
    start: pd.Timestamp,
    end: pd.Timestamp,
    batch_size_days: int,
    variables: Sequence[str],
    lags: int,
    horizons: Sequence[int],
    history: int,
    fill_limit: int,
) -> list[TrainingBatch]:
    """Cut ``[start, end)`` into batches; every sample lands in exactly one batch per role.

    A sample of horizon h with origin row o is usable when ``o >= lags`` (its lagged changes
    exist) and its realization row ``o + h`` is before ``end``. It trains the batch holding
    its realization and is evaluated by the batch holding its origin. Windows also load
    ``history`` rows (the longest rule window) and ``fill_limit`` rows before the first
    origin, so forward-filling and rules see the same values in every batching (and a
    window widened for other horizons changes nothing).
    """
    rows = int(timestamps.searchsorted(end))
    edges = batch_boundaries(start, end, batch_size_days)
    positions = [int(timestamps.searchsorted(edge)) for edge in edges]
    positions[-1] = rows
    batches = []
    for k, (lo, hi) in enumerate(itertools.pairwise(positions)):
        train = tuple((max(lo, lags + h), hi) for h in horizons)
        evaluate = tuple((max(lo, lags), min(hi, rows - h)) for h in horizons)
        first = max(
            0,
            min(min(t[0] - h, e[0]) for h, t, e in zip(horizons, train, evaluate, strict=True))
            - max(lags, history)
            - fill_limit,
        )
        last = min(
            rows,
            max(max(t[1], e[1] + h) for h, t, e in zip(horizons, train, evaluate, strict=True)),
        )
        window = (first, max(first, last))
        batches.append(
            TrainingBatch(
                batch_id=k,
                start=edges[k],
                end=edges[k + 1],
                variables=tuple(variables),
                horizons=tuple(horizons),
                train_rows=train,
                eval_rows=evaluate,
                window_rows=window,
                window_first=timestamps[window[0]] if window[1] > window[0] else edges[k],
                window_last=timestamps[window[1] - 1] if window[1] > window[0] else edges[k],
                window_stamps=timestamps[window[0] : window[1]].to_numpy(),
            )
        )
    return batches


def check_batch_size(timestamps: pd.DatetimeIndex, batch_size_days: int) -> None:
    """Refuse batches shorter than the data's typical spacing: they would hold no sample."""
    if len(timestamps) < 2:
        return
    spacing = pd.Series(timestamps).diff().median()  # unit-safe: pandas 3 indexes may be in us
    if pd.Timedelta(days=batch_size_days) < spacing:
        days = max(1, int(np.ceil(spacing / pd.Timedelta(days=1))))
        raise DataError(
            f"batch_size_days={batch_size_days} is shorter than the spacing of the data "
            f"(rows are about {spacing.days or spacing} days apart), so batches would hold no "
            f"sample; use --batch-size-days {days} or more"
        )
