"""Engines that run per-batch tasks: in this process, on a local Dask cluster, or on a
remote scheduler, with the run's deadlines; and the choice between them.

Engines know batches only to name them in messages; what a task computes is the stages'
business (``stages/``), so this module never imports them.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import queue
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Final, TypeVar

import numpy as np

from recursive_training import interrupts
from recursive_training.config import TrainingConfig
from recursive_training.exceptions import ExecutionError, TrainingError
from recursive_training.parallel_trainer import TrainingBatch

log = logging.getLogger(__name__)
Result = TypeVar("Result")


def current_worker() -> str:
    """Name of the Dask worker running this task, or ``local:<pid>`` outside Dask."""
    if "distributed" not in sys.modules:  # not on a worker; importing it would cost ~1 s
        return f"local:{os.getpid()}"
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"local:{os.getpid()}"


# Below this many multiply-adds in the statistics stage (sample rows x features x
# (features + variables)), a local cluster's start-up (2-3 s, more on a busy machine) and
# per-task costs outweigh what extra cores save: the map stages run 1e9-5e9 of them per
# second in-process here, and a warm 2-worker cluster was at best 1.4x faster than one
# (benchmarks/bench_dask.py, docs/dask.md).
MIN_LOCAL_DASK_WORK: Final = 2e10
# With fewer batches than this, at most a few workers are ever busy at once.
MIN_LOCAL_DASK_BATCHES: Final = 4
# Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which turns off glibc's adaptive mmap
# threshold: every numpy temporary above 128 KiB is then mmapped and page-faulted afresh,
# which made batches 1.5x slower on workers than in-process. Large temporaries come from
# the heap again with this (benchmarks/bench_dask.py, docs/dask.md).
WORKER_MALLOC: Final = {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 2**25}
# Tasks per worker thread submitted ahead of the results the driver has taken: one running
# and one queued keeps every thread busy across the driver's round trip (17-19 ms here),
# and bounds the results waiting in a worker's memory (see DaskEngine).
TASKS_PER_THREAD: Final = 2


Limit = tuple[float, str]  # a perf_counter() deadline and the reason to give when it passes


def overdue(limits: list[Limit]) -> str | None:
    """The reason of the first limit that has passed, if any has."""
    now = time.perf_counter()
    return next((reason for expires, reason in limits if expires < now), None)


def _timeout(limits: list[Limit]) -> tuple[float | None, str]:
    """Seconds until the earliest limit (None: no limit) and the reason it gives."""
    expires, reason = min(limits, default=(math.inf, ""))
    return (None if expires == math.inf else max(0.0, expires - time.perf_counter())), reason


def describe_task(arguments: Sequence[Any], index: int) -> str:
    """How messages name a task: by its batch when its first argument is one."""
    first = arguments[0] if arguments else None
    return str(first) if isinstance(first, TrainingBatch) else f"task {index}"


@contextmanager
def failures_named(label: str) -> Iterator[None]:
    """Put ``label`` in front of a TrainingError's message (same type); note it on others."""
    try:
        yield
    except TrainingError as e:
        if label in str(e):
            raise
        named = copy.copy(e)
        named.args = (f"{label}: {e}",)
        raise named from e
    except Exception as e:
        e.add_note(f"raised while running {label}")
        raise


@dataclass(frozen=True)
class Deadlines:
    """How long one batch and the whole run may take (None: unlimited), timed from ``began``.

    Times are ``time.perf_counter()`` values, the clock the pipeline starts a run with.
    """

    batch_seconds: float | None = None
    run_seconds: float | None = None
    began: float = field(default_factory=time.perf_counter)

    def run_limit(self) -> list[Limit]:
        """When the run is over time and what the error says then (none without a limit)."""
        if self.run_seconds is None:
            return []
        reason = f"the run exceeded --run-timeout {self.run_seconds:g}s"
        return [(self.began + self.run_seconds, reason)]

    def batch_limit(self, started: float, what: str) -> list[Limit]:
        """When a batch (or a wait) that began at ``started`` is over time, and why."""
        if self.batch_seconds is None:
            return []
        return [(started + self.batch_seconds, f"{what} --batch-timeout {self.batch_seconds:g}s")]

    def error(self, reason: str, done: int, total: int, context: str = "") -> ExecutionError:
        """The ExecutionError for ``reason``, with the elapsed time and progress."""
        elapsed = time.perf_counter() - self.began
        return ExecutionError(
            f"{reason} ({elapsed:.1f}s into the run, {done} of {total} batches of this stage "
            f"done{context}); raise the timeout, add workers or use smaller batches"
        )


class Engine(ABC):
    """Runs one task function over many argument tuples and yields results as they finish.

    A failing task stops the run with its error, named after its batch; time limits come
    from the engine's ``Deadlines``.
    """

    description = "engine"

    def __init__(self, deadlines: Deadlines | None = None) -> None:
        self.deadlines = deadlines or Deadlines()

    @abstractmethod
    def map_unordered(
        self, task: Callable[..., Result], arguments: Sequence[tuple[Any, ...]]
    ) -> Generator[Result, None, None]:
        """Yield ``task(*args)`` for every tuple in ``arguments``, in completion order."""

    @abstractmethod
    def close(self) -> None:
        """Release what the engine started."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SerialEngine(Engine):
    """Runs tasks one after another in this process.

    A running batch cannot be interrupted here, so the deadlines are checked between batches.
    """

    description = "serial (in-process)"

    def map_unordered(
        self, task: Callable[..., Result], arguments: Sequence[tuple[Any, ...]]
    ) -> Generator[Result, None, None]:
        for index, args in enumerate(arguments):
            if (reason := overdue(self.deadlines.run_limit())) is not None:
                raise self.deadlines.error(reason, index, len(arguments))
            label = describe_task(args, index)
            started = time.perf_counter()
            with failures_named(label):
                result = task(*args)
            ran_over = self.deadlines.batch_limit(started, f"{label} ran longer than")
            if (reason := overdue(ran_over)) is not None:
                raise self.deadlines.error(reason, index, len(arguments))
            yield result

    def close(self) -> None:
        """Nothing to release: the tasks ran in this process."""


def _announce_and_run(topic: str, task: Callable[..., Result], *args: Any) -> Result:
    """On a Dask worker: tell the driver (a Dask event on ``topic``) the task starts, run it."""
    from distributed import get_worker

    worker = get_worker()
    worker.log_event(topic, {"key": worker.get_current_task(), "worker": worker.address})
    return task(*args)


class DaskEngine(Engine):
    """Runs tasks on a Dask cluster: a local one it starts, or a scheduler it connects to.

    Tasks are not retried on exceptions (a data error would fail again); a task whose
    worker dies is rescheduled by the scheduler (``distributed.scheduler.allowed-failures``).
    Workers announce each task as it starts, so the driver can time batches (not queue
    waits) against ``--batch-timeout`` while it waits for results without polling.

    At most ``TASKS_PER_THREAD`` tasks per worker thread are submitted and not yet taken
    by the driver; the next is submitted as each result is taken. A finished task's result
    stays in its worker's memory until the driver has fetched it, so without this bound a
    driver slower than the workers (it receives and writes every prediction) let results
    pile up on the workers: at 100,000 series, 143 MB per evaluation task, gigabytes per
    worker. With it a worker holds at most that many results whatever the number of tasks.
    """

    def __init__(
        self, client: Any, cluster: Any | None, description: str, deadlines: Deadlines | None = None
    ) -> None:
        super().__init__(deadlines)
        self.client = client
        self.cluster = cluster
        self.description = description

    @classmethod
    def local(cls, max_workers: int | None, deadlines: Deadlines | None = None) -> DaskEngine:
        """Start a LocalCluster of single-threaded worker processes."""
        import dask
        from distributed import Client, LocalCluster

        workers = max_workers or os.cpu_count() or 1
        cluster = client = None
        try:
            # a signal in the middle of a start would leave worker processes nobody closes:
            # hold it until both are up, then close them here
            with interrupts.held(), dask.config.set(WORKER_MALLOC):
                cluster = LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
                )
                client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
        except BaseException:
            _close(client, cluster)
            raise
        return cls(client, cluster, f"local Dask cluster ({workers} workers)", deadlines)

    @classmethod
    def remote(
        cls, address: str, connect_timeout: float = 30.0, deadlines: Deadlines | None = None
    ) -> DaskEngine:
        """Connect to an existing scheduler, failing clearly if it does not answer in time."""
        from distributed import Client

        try:
            client = Client(  # type: ignore[no-untyped-call]
                address, timeout=connect_timeout, set_as_default=False
            )
        except (OSError, TimeoutError, ValueError) as e:
            raise ExecutionError(
                f"cannot reach the Dask scheduler at {address} within {connect_timeout:g}s "
                f"(--dask-connect-timeout): {e}; check the address and that the scheduler runs"
            ) from e
        return cls(client, None, f"Dask scheduler {address}", deadlines)

    def map_unordered(
        self, task: Callable[..., Result], arguments: Sequence[tuple[Any, ...]]
    ) -> Generator[Result, None, None]:
        if not arguments:
            return
        token = uuid.uuid4().hex[:12]
        topic = f"pulse-task-started-{token}"
        labels = {
            f"{getattr(task, '__name__', 'task')}-{index}-{token}": describe_task(args, index)
            for index, args in enumerate(arguments)
        }
        events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.client.subscribe_topic(topic, lambda event: events.put(("started", event[1])))
        # Futures by key, each dropped as soon as its result is here: a future the driver
        # holds keeps its result in a worker's memory.
        live: dict[str, Any] = {}
        unsent = iter(zip(labels, self._scatter_arrays(arguments), strict=True))
        run = partial(_announce_and_run, topic, task)

        def top_up() -> None:
            """Submit tasks until ``tasks_ahead`` are out (or none is left): re-counted as
            each result is taken, so workers that join during the stage get work too."""
            chosen = list(itertools.islice(unsent, max(0, self.tasks_ahead() - len(live))))
            if not chosen:
                return
            keys, args = zip(*chosen, strict=True)
            futures = self.client.map(
                run, *zip(*args, strict=True), key=list(keys), pure=False, retries=0
            )
            for future in futures:
                live[future.key] = future
                future.add_done_callback(lambda done: events.put(("done", done.key)))

        try:
            top_up()
            yield from self._results(events, labels, live, top_up)
        finally:
            self.client.unsubscribe_topic(topic)
            self.client.cancel(list(live.values()))

    def tasks_ahead(self) -> int:
        """How many tasks may be submitted and not yet taken: TASKS_PER_THREAD per worker
        thread the scheduler knows now (at least TASKS_PER_THREAD)."""
        threads = int(sum(self.client.nthreads().values()))
        return TASKS_PER_THREAD * max(1, threads)

    def _scatter_arrays(self, arguments: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
        """The arguments, with arrays (batch models) sent to the workers apart from the graph."""
        arrays = [arg for args in arguments for arg in args if isinstance(arg, np.ndarray)]
        if not arrays:
            return [list(args) for args in arguments]
        try:
            sent = iter(self.client.scatter(arrays, hash=False))
        except (OSError, TimeoutError) as e:
            raise ExecutionError(f"cannot send {len(arrays)} arrays to the workers: {e}") from e
        return [
            [next(sent) if isinstance(arg, np.ndarray) else arg for arg in args]
            for args in arguments
        ]

    def _results(
        self,
        events: queue.SimpleQueue[tuple[str, Any]],
        labels: dict[str, str],
        live: dict[str, Any],
        taken: Callable[[], None],
    ) -> Iterator[Any]:
        """Yield results as the ``live`` futures finish, releasing each once its result is
        fetched and then calling ``taken``; fail the run when a deadline passes."""
        pending = set(labels)
        running: dict[str, tuple[float, str]] = {}
        idle_since = time.perf_counter()
        while pending:
            limits = self.deadlines.run_limit()
            for key, (started, worker) in running.items():
                ran = f"{labels[key]} ran on {worker} longer than"
                limits += self.deadlines.batch_limit(started, ran)
            if not running:
                idle = "no batch started or finished within"
                limits += self.deadlines.batch_limit(idle_since, idle)
            timeout, reason = _timeout(limits)
            try:
                kind, payload = events.get(timeout=timeout)
            except queue.Empty:
                raise self._overrun(reason, len(labels) - len(pending), len(labels)) from None
            if kind == "started":
                if payload["key"] in pending:
                    running[payload["key"]] = (time.perf_counter(), payload["worker"])
            elif payload in pending:
                pending.discard(payload)
                running.pop(payload, None)
                idle_since = time.perf_counter()
                done = len(labels) - len(pending)
                future = live[payload]
                result = self._outcome(future, labels[payload], done, len(labels))
                del live[payload]
                future.release()
                taken()
                yield result

    def _outcome(self, future: Any, label: str, done: int, total: int) -> Any:
        """The future's result, fetched within the deadlines; a failure as a clear error."""
        from distributed import KilledWorker

        with failures_named(label):
            if future.status == "finished":  # the result waits on a worker, which may hang
                fetching = f"{label}: fetching its result took longer than"
                timeout, reason = _timeout(
                    self.deadlines.run_limit()
                    + self.deadlines.batch_limit(time.perf_counter(), fetching)
                )
                try:
                    return future.result(timeout=timeout)
                except TimeoutError:
                    holders = ", ".join(self.client.who_has([future]).get(future.key, ()))
                    note = f"; the result is held by {holders or 'no worker'}"
                    raise self._overrun(reason, done - 1, total, note) from None
            try:
                return future.result()
            except KilledWorker as e:
                raise ExecutionError(
                    f"{label} failed: {e.allowed_failures + 1} workers died while running it, "
                    f"the last {e.last_worker.address}; check the worker logs (out of memory?)"
                ) from e
            except CancelledError as e:
                raise ExecutionError(
                    f"{label} was cancelled ({e}); was the connection to the scheduler lost?"
                ) from e

    def _overrun(self, reason: str, done: int, total: int, note: str = "") -> ExecutionError:
        """A deadline's error, with the number of workers the scheduler knows."""
        workers = len(self.client.scheduler_info().get("workers", {}))
        return self.deadlines.error(reason, done, total, f", {workers} worker(s) connected{note}")

    def close(self) -> None:
        """Disconnect; stop the local cluster if this engine started it."""
        _close(self.client, self.cluster)


def _close(client: Any | None, cluster: Any | None) -> None:
    """Close the client and the cluster, if there are any, without being interrupted."""
    with interrupts.held():
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def serial_is_enough(batches: Sequence[TrainingBatch], lags: int) -> str | None:
    """Why a local Dask cluster would only add overhead to this plan, or None if it helps."""
    working = [b for b in batches if not b.is_empty]
    if len(working) < MIN_LOCAL_DASK_BATCHES:
        return f"only {len(working)} batch(es) hold samples"
    variables = len(working[0].variables)
    features = 1 + variables * lags
    samples = sum(b.train_samples for b in working)
    work = samples * features * (features + variables)
    if work < MIN_LOCAL_DASK_WORK:
        return (
            f"the statistics take about {work:.2g} multiply-adds, less than starting "
            f"the cluster costs (threshold {MIN_LOCAL_DASK_WORK:.0g})"
        )
    return None


def create_engine(
    config: TrainingConfig, batches: Sequence[TrainingBatch], began: float | None = None
) -> Engine:
    """The engine the config asks for, but serial when a local cluster would not pay off.

    ``began`` is the ``time.perf_counter()`` at which the run started (for --run-timeout).
    """
    deadlines = Deadlines(
        config.batch_timeout, config.run_timeout, time.perf_counter() if began is None else began
    )
    if config.dask_scheduler_address:
        return DaskEngine.remote(
            config.dask_scheduler_address, config.dask_connect_timeout, deadlines
        )
    if config.use_dask:
        reason = serial_is_enough(batches, config.lags)
        if reason is None:
            return DaskEngine.local(config.max_workers, deadlines)
        log.info("Running serially instead of on a local Dask cluster: %s", reason)
    return SerialEngine(deadlines)
