"""Prometheus metrics of the operator, served in the text format on their own port.

Operator-wide: reconcile passes and their duration by outcome, API errors, watch-stream
restarts, runs by phase. Per run, in the style of KubeRay's job metrics: an ``_info``
series labelled with namespace, name and phase, the run's duration and its batches done
and total (what the driver reports in ``status.progress``).

Per-run series are computed at scrape time from the last state seen of each run (every
watch event and every resync listing of a run records it), so a scrape costs no API call
and a deleted run's series disappear with it.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trainingrun_operator.constants import (
    FAILED,
    PENDING,
    PROVISIONING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
)
from trainingrun_operator.exceptions import KubeError

PREFIX = "pulse"
PHASES = (PENDING, QUEUED, PROVISIONING, RUNNING, SUSPENDED, SUCCEEDED, FAILED)
# A pass reads two to four objects and may write one: milliseconds normally, seconds when the
# API server is slow or the pass waits its turn in the start queue.
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# What kopf logs (at DEBUG) when it has to restart a watch-stream: 410 Gone, inactivity.
WATCH_LOGGER = "kopf._cogs.clients.watching"
WATCH_RESTART_MARKERS = ("Restarting the watch-stream", "is inactive, reconnecting")


@dataclasses.dataclass(frozen=True)
class RunState:
    """What the per-run series show of one run."""

    namespace: str
    name: str
    phase: str
    start: datetime.datetime | None
    completion: datetime.datetime | None
    batches_done: int | None
    batches_total: int | None


def _time(text: str | None) -> datetime.datetime | None:
    """A Kubernetes timestamp, or None."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def run_state(body: Mapping[str, Any]) -> RunState:
    """The per-run state of a TrainingRun object (a run without status is Pending)."""
    meta = body["metadata"]
    status: Mapping[str, Any] = body.get("status") or {}
    progress: Mapping[str, Any] = status.get("progress") or {}
    return RunState(
        namespace=meta["namespace"],
        name=meta["name"],
        phase=status.get("phase") or PENDING,
        start=_time(status.get("startTime")),
        completion=_time(status.get("completionTime")),
        batches_done=progress.get("batchesCompleted"),
        batches_total=progress.get("batchesTotal"),
    )


class RunCollector(Collector):
    """Runs by phase and the per-run series, from the last state seen of each run."""

    def __init__(self) -> None:
        """No run seen yet."""
        self.runs: dict[tuple[str, str], RunState] = {}

    def observe(self, body: Mapping[str, Any]) -> None:
        """Record the run as it is now."""
        state = run_state(body)
        self.runs[(state.namespace, state.name)] = state

    def forget(self, namespace: str, name: str) -> None:
        """The run is gone: its series go too."""
        self.runs.pop((namespace, name), None)

    def retain(self, present: set[tuple[str, str]]) -> None:
        """Forget every run not in `present` (a complete listing): a missed deletion too."""
        for key in [key for key in self.runs if key not in present]:
            del self.runs[key]

    def collect(self) -> Iterator[Metric]:
        """The series, computed now (called by the scrape, in the server's thread)."""
        runs = list(self.runs.values())  # one atomic copy: the event loop may add runs meanwhile
        now = datetime.datetime.now(datetime.UTC)
        by_phase = GaugeMetricFamily(
            f"{PREFIX}_trainingruns", "TrainingRuns by phase.", labels=["phase"]
        )
        for phase in PHASES:
            by_phase.add_metric([phase], sum(run.phase == phase for run in runs))
        yield by_phase
        keys = ["namespace", "name"]
        info = GaugeMetricFamily(
            f"{PREFIX}_trainingrun_info", "One series per TrainingRun, its phase as a label.",
            labels=[*keys, "phase"],
        )  # fmt: skip
        duration = GaugeMetricFamily(
            f"{PREFIX}_trainingrun_duration_seconds",
            "Seconds since the run's driver started, until it finished.", labels=keys,
        )  # fmt: skip
        done = GaugeMetricFamily(
            f"{PREFIX}_trainingrun_batches_completed",
            "Batches the run has completed in its current stage.", labels=keys,
        )  # fmt: skip
        total = GaugeMetricFamily(
            f"{PREFIX}_trainingrun_batches_total", "Batches of the run's current stage.",
            labels=keys,
        )  # fmt: skip
        for run in runs:
            names = [run.namespace, run.name]
            info.add_metric([*names, run.phase], 1)
            if run.start is not None:
                duration.add_metric(names, ((run.completion or now) - run.start).total_seconds())
            if run.batches_done is not None:
                done.add_metric(names, run.batches_done)
            if run.batches_total is not None:
                total.add_metric(names, run.batches_total)
        yield from (info, duration, done, total)


class WatchRestarts(logging.Filter):
    """Counts the watch-stream restarts kopf logs, and keeps its DEBUG lines out of a quieter log.

    kopf has no hook for them; its watcher logs each restart at DEBUG, so its logger is
    opened to DEBUG and this filter counts those records and lets a DEBUG record through only
    when the operator itself logs at DEBUG.
    """

    def __init__(self, counter: Counter, show_debug: bool) -> None:
        """Count into `counter`."""
        super().__init__()
        self.counter = counter
        self.show_debug = show_debug

    def filter(self, record: logging.LogRecord) -> bool:
        """Count a restart; pass the record on as the operator's log level would."""
        message = record.getMessage()
        if any(marker in message for marker in WATCH_RESTART_MARKERS):
            self.counter.inc()
        return record.levelno > logging.DEBUG or self.show_debug


@dataclasses.dataclass
class OperatorMetrics:
    """Every metric of one operator process, in a registry of its own."""

    registry: CollectorRegistry
    passes: Counter
    pass_seconds: Histogram
    api_errors: Counter
    api_requests: Counter
    watch_restarts: Counter
    leader: Gauge
    runs: RunCollector

    @classmethod
    def create(cls) -> OperatorMetrics:
        """Fresh metrics (a new registry each time, so tests and restarts do not collide)."""
        registry = CollectorRegistry()
        runs = RunCollector()
        registry.register(runs)
        return cls(
            registry=registry,
            passes=Counter(
                f"{PREFIX}_operator_reconcile", "Reconcile passes, by outcome (success, error).",
                ["outcome"], registry=registry,
            ),
            pass_seconds=Histogram(
                f"{PREFIX}_operator_reconcile_duration_seconds",
                "Duration of reconcile passes, by outcome.", ["outcome"],
                buckets=PASS_BUCKETS, registry=registry,
            ),
            api_errors=Counter(
                f"{PREFIX}_operator_api_errors",
                "Kubernetes API calls that failed, by error (KubeError: refused; "
                "KubeUnreachableError: transport).", ["error"], registry=registry,
            ),
            api_requests=Counter(
                f"{PREFIX}_operator_api_requests",
                "Kubernetes API requests of the reconcile loop (kopf's watches not included), "
                "by verb and resource.", ["verb", "resource"], registry=registry,
            ),
            watch_restarts=Counter(
                f"{PREFIX}_operator_watch_restarts",
                "Watch-streams kopf had to restart (410 Gone, inactivity).", registry=registry,
            ),
            leader=Gauge(
                f"{PREFIX}_operator_leader",
                "1 while this replica is the one that reconciles, 0 while it stands by.",
                registry=registry,
            ),
            runs=runs,
        )  # fmt: skip

    def record_pass(self, seconds: float, error: BaseException | None) -> None:
        """Count one reconcile pass that took `seconds` and raised `error` (None: succeeded)."""
        outcome = "success" if error is None else "error"
        self.passes.labels(outcome).inc()
        self.pass_seconds.labels(outcome).observe(seconds)
        if isinstance(error, KubeError):
            self.api_errors.labels(type(error).__name__).inc()

    def count_request(self, verb: str, resource: str) -> None:
        """Count one API request of the reconcile loop."""
        self.api_requests.labels(verb, resource).inc()

    def count_watch_restarts(self, show_debug: bool) -> None:
        """Start counting kopf's watch-stream restarts (see WatchRestarts)."""
        watcher = logging.getLogger(WATCH_LOGGER)
        watcher.setLevel(logging.DEBUG)
        watcher.addFilter(WatchRestarts(self.watch_restarts, show_debug))
