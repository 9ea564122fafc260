"""Date-range batches and the engines that run per-batch tasks on them.

A ``TrainingBatch`` is a plan, not data: it names its date range, the rows it trains on
(by realization) and evaluates (by origin), and the window of rows it must load, margins
included. Tasks are pure functions of (batch, config, ...), so any engine (in-process, a
local Dask cluster, a remote scheduler) gives the same numbers.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from recursive_training.exceptions import DataError, ExecutionError

log = logging.getLogger(__name__)
Result = TypeVar("Result")


@dataclass(frozen=True)
class TrainingBatch:
    """One date range ``[start, end)`` and the global rows it needs.

    Row numbers index the source's timestamps. ``train_rows`` are realization rows whose
    samples this batch adds to the statistics; ``eval_rows`` are origin rows it predicts;
    ``window_rows`` is what it loads: both, plus lags, rule history and fill margin.
    """

    batch_id: int
    start: pd.Timestamp
    end: pd.Timestamp
    variables: tuple[str, ...]
    train_rows: tuple[int, int]
    eval_rows: tuple[int, int]
    window_rows: tuple[int, int]
    window_first: pd.Timestamp
    window_last: pd.Timestamp

    @property
    def is_empty(self) -> bool:
        """True when the batch has no row to train on and none to evaluate."""
        return self.train_rows[0] >= self.train_rows[1] and self.eval_rows[0] >= self.eval_rows[1]

    def __str__(self) -> str:
        return f"batch {self.batch_id} [{self.start:%Y-%m-%d}, {self.end:%Y-%m-%d})"


def batch_boundaries(start: pd.Timestamp, end: pd.Timestamp, batch_size_days: int) -> list[pd.Timestamp]:
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
    horizon: int,
    history: int,
    fill_limit: int,
) -> list[TrainingBatch]:
    """Cut ``[start, end)`` into batches; every sample lands in exactly one batch per role.

    A sample with origin row o is usable when ``o >= lags`` (its lagged changes exist) and
    its realization row ``o + horizon`` is before ``end``. It trains the batch holding its
    realization and is evaluated by the batch holding its origin. Windows also load
    ``history`` rows (the longest rule window) and ``fill_limit`` rows before the first
    origin, so forward-filling and rules see the same values in every batching.
    """
    rows = int(timestamps.searchsorted(end))
    edges = batch_boundaries(start, end, batch_size_days)
    positions = [int(timestamps.searchsorted(edge)) for edge in edges]
    positions[-1] = rows
    batches = []
    for k, (lo, hi) in enumerate(zip(positions[:-1], positions[1:], strict=True)):
        train = (max(lo, lags + horizon), hi)
        evaluate = (max(lo, lags), min(hi, rows - horizon))
        first = max(0, min(train[0] - horizon, evaluate[0]) - max(lags, history) - fill_limit)
        last = min(rows, max(train[1], evaluate[1] + horizon))
        window = (first, max(first, last))
        batches.append(
            TrainingBatch(
                batch_id=k,
                start=edges[k],
                end=edges[k + 1],
                variables=tuple(variables),
                train_rows=train,
                eval_rows=evaluate,
                window_rows=window,
                window_first=timestamps[window[0]] if window[1] > window[0] else edges[k],
                window_last=timestamps[window[1] - 1] if window[1] > window[0] else edges[k],
            )
        )
    return batches


def check_batch_size(timestamps: pd.DatetimeIndex, batch_size_days: int) -> None:
    """Refuse batches shorter than the data's typical spacing: they would hold no sample."""
    if len(timestamps) < 2:
        return
    spacing = pd.Timedelta(np.median(np.diff(timestamps.asi8)), unit="ns")
    if pd.Timedelta(days=batch_size_days) < spacing:
        raise DataError(
            f"batch_size_days={batch_size_days} is shorter than the spacing of the data "
            f"(rows are about {spacing.days or spacing} apart), so batches would hold no "
            f"sample; use --batch-size-days {max(1, int(np.ceil(spacing / pd.Timedelta(days=1))))} or more"
        )


def current_worker() -> str:
    """Name of the Dask worker running this task, or ``local:<pid>`` outside Dask."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"local:{os.getpid()}"


ProgressCallback = Callable[[str, int, int], None]


class Engine(ABC):
    """Runs one task function over many argument tuples and yields results as they finish."""

    description = "engine"

    @abstractmethod
    def map_unordered(self, task: Callable[..., Result], arguments: Sequence[tuple[Any, ...]]) -> Iterator[Result]:
        """Yield ``task(*args)`` for every tuple in ``arguments``, in completion order."""

    def close(self) -> None:
        """Release what the engine started."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class SerialEngine(Engine):
    """Runs tasks one after another in this process."""

    description = "serial (in-process)"

    def map_unordered(self, task: Callable[..., Result], arguments: Sequence[tuple[Any, ...]]) -> Iterator[Result]:
        for args in arguments:
            yield task(*args)


class DaskEngine(Engine):
    """Runs tasks on a Dask cluster: a local one it starts, or a scheduler it connects to.

    Tasks are not retried on exceptions (a data error would fail again); a task whose
    worker dies is rescheduled by the scheduler (``distributed.scheduler.allowed-failures``).
    """

    def __init__(self, client: Any, cluster: Any | None, description: str) -> None:
        self.client = client
        self.cluster = cluster
        self.description = description

    @classmethod
    def local(cls, max_workers: int | None) -> DaskEngine:
        """Start a LocalCluster of single-threaded worker processes."""
        from distributed import Client, LocalCluster

        workers = max_workers or os.cpu_count() or 1
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return cls(Client(cluster), cluster, f"local Dask cluster ({workers} workers)")

    @classmethod
    def remote(cls, address: str, timeout_seconds: float = 30.0) -> DaskEngine:
        """Connect to an existing scheduler, failing clearly if it does not answer in time."""
        from distributed import Client

        try:
            client = Client(address, timeout=timeout_seconds)
        except (OSError, TimeoutError) as e:
            raise ExecutionError(
                f"cannot reach the Dask scheduler at {address} within {timeout_seconds:.0f}s: {e}; "
                "check the address and that the scheduler is running"
            ) from e
        return cls(client, None, f"Dask scheduler {address}")

    def map_unordered(self, task: Callable[..., Result], arguments: Sequence[tuple[Any, ...]]) -> Iterator[Result]:
        from distributed import as_completed

        if not arguments:
            return
        futures = self.client.map(task, *zip(*arguments, strict=True), pure=False, retries=0)
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            self.client.cancel(futures)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def create_engine(use_dask: bool, max_workers: int | None, scheduler_address: str | None) -> Engine:
    """The engine the config asks for."""
    if scheduler_address:
        return DaskEngine.remote(scheduler_address)
    if use_dask:
        return DaskEngine.local(max_workers)
    return SerialEngine()
