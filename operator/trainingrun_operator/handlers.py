"""The kopf handlers of the TrainingRun operator: thin wiring around ``reconcile.sync_run``.

Every trigger ends in the same level-triggered pass over one run: a watch event of the
run itself (including the initial listing after a restart), a watch event of a child it
owns (the driver Job, the DaskCluster), and an operator-wide resync that lists all runs
every ``resync_seconds`` (deadlines, TTL, and repair of any pass that failed).

Deliberately no ``@kopf.timer``, ``@kopf.daemon`` or ``@kopf.on.delete``: kopf puts a
finalizer on every object that has one, and a finalizer wedges ``kubectl delete`` while
the operator is down. Children are deleted by the garbage collector through their
ownerReferences instead.

With leader election on, every replica watches, but only the Lease holder reconciles; a
new holder starts with a pass over every run, so nothing a standby ignored is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from typing import Any

import kopf
import prometheus_client
from kopf._core.intents.filters import MetaFilterToken  # the type of kopf.PRESENT

from trainingrun_operator import kube
from trainingrun_operator.constants import (
    DASK_GROUP,
    DASK_VERSION,
    FINALIZER,
    GROUP,
    KOPF_PREFIX,
    KUEUE_GROUP,
    KUEUE_VERSION,
    LABEL_MANAGED_BY,
    LABEL_RUN,
    MANAGER,
    PLURAL,
    VERSION,
)
from trainingrun_operator.exceptions import KubeError
from trainingrun_operator.leadership import LeaderElection
from trainingrun_operator.metrics import OperatorMetrics
from trainingrun_operator.reconcile import PassQueue, sync_run
from trainingrun_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ReconcileStats:
    """Counters of reconcile passes, served with the liveness probe (``/healthz``)."""

    passes: int = 0
    errors: int = 0
    seconds_total: float = 0.0
    seconds_max: float = 0.0

    def record(self, seconds: float, failed: bool) -> None:
        """Count one pass that took `seconds`."""
        self.passes += 1
        self.errors += int(failed)
        self.seconds_total += seconds
        self.seconds_max = max(self.seconds_max, seconds)


CHILD_LABELS: dict[str, str | MetaFilterToken] = {
    LABEL_RUN: kopf.PRESENT,
    LABEL_MANAGED_BY: MANAGER,
}


@kopf.on.startup()
async def operator_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Tune kopf, connect, start the resync loop; the operator settings come in `memo`."""
    # Reconnect watches regularly: a silently dropped connection would stall events forever.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 5
    # Fail API calls in seconds, not kopf's default 5 minutes, so the next pass comes sooner.
    settings.networking.request_timeout = 15
    # kopf's own Events only for warnings and errors; phase transitions are posted by sync_run.
    settings.posting.level = logging.WARNING
    # Our own finalizer and annotation names: kopf's defaults are shared with every other kopf
    # operator (the Dask controller), and kopf removes a finalizer of its name that none of
    # its handlers needs, so on DaskClusters it would fight the Dask controller's finalizer.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
    if "settings" not in memo:  # run as `kopf run -m trainingrun_operator.handlers`
        memo.settings = OperatorSettings.from_env()
    memo.kube = await kube.Kube.connect()
    # The per-run pass queue and the counters, shared by all handlers (kopf gives each object a
    # shallow copy of this memo).
    memo.queue = PassQueue()
    memo.stats = ReconcileStats()
    memo.metrics = OperatorMetrics.create()
    memo.kube.on_request = memo.metrics.count_request
    memo.metrics.count_watch_restarts(show_debug=memo.settings.log_level == "DEBUG")
    memo.metrics_server = None
    if memo.settings.metrics_port:
        served = prometheus_client.start_http_server(
            memo.settings.metrics_port, registry=memo.metrics.registry
        )
        memo.metrics_server = served[0]
    # Set to make the resync loop pass over every run now (on becoming the leader).
    memo.resync_now = asyncio.Event()
    memo.election = None
    if memo.settings.leader_election:
        memo.election = LeaderElection(
            memo.kube, memo.settings, lambda leading: _role_changed(memo, leading)
        )
        memo.electing = asyncio.create_task(memo.election.run())
    else:
        memo.metrics.leader.set(1)
    memo.resync = asyncio.create_task(_resync_forever(memo))


def _active(memo: Any) -> bool:
    """This replica reconciles: it holds the Lease, or leader election is off."""
    election: LeaderElection | None = memo.election
    return election is None or election.leading


def _role_changed(memo: Any, leading: bool) -> None:
    """A new leader passes over every run at once; one that steps down forgets their series."""
    memo.metrics.leader.set(int(leading))
    if leading:
        memo.resync_now.set()
    else:
        memo.metrics.runs.retain(set())


@kopf.on.cleanup()
async def operator_cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync loop, release the Lease (a standby takes over now), stop the metrics."""
    tasks = [memo.resync] + ([memo.electing] if memo.election is not None else [])
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if memo.election is not None:
        try:
            await memo.election.release()
        except KubeError:
            log.exception("could not release the leader-election Lease; it expires by itself")
    if memo.metrics_server is not None:
        memo.metrics_server.shutdown()


@kopf.on.probe(id="now")
def operator_probe(**_: Any) -> str:
    """Liveness: the operator's event loop answers."""
    return datetime.datetime.now(datetime.UTC).isoformat()


@kopf.on.probe(id="reconcile")
def operator_reconcile_metrics(memo: Any, **_: Any) -> dict[str, float]:
    """Metrics: reconcile passes, failed passes, their mean and maximum duration."""
    stats: ReconcileStats = memo.stats
    mean = stats.seconds_total / stats.passes if stats.passes else 0.0
    return {"passes": stats.passes, "errors": stats.errors, "seconds_mean": mean,
            "seconds_max": stats.seconds_max, "runs": len(memo.queue.locks),
            "leading": int(_active(memo))}  # fmt: skip


async def _sync(memo: Any, namespace: str, name: str) -> None:
    """One timed reconcile pass of `namespace/name`."""
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        await sync_run(memo.kube, namespace, name, memo.settings, memo.queue)
    except BaseException as e:
        error = e
        raise
    finally:
        seconds = time.perf_counter() - started
        memo.stats.record(seconds, error is not None)
        memo.metrics.record_pass(seconds, error)


async def _resync_forever(memo: Any) -> None:
    """Every resync period, pass over every run in the watched namespaces."""
    settings: OperatorSettings = memo.settings
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(memo.resync_now.wait(), settings.resync_seconds)
        memo.resync_now.clear()
        if not _active(memo):
            continue
        listed: set[tuple[str, str]] | None = set()
        for namespace in settings.namespaces or (None,):
            try:
                runs = await memo.kube.list_objects(kube.TRAINING_RUNS, namespace)
            except KubeError:
                log.exception("resync: cannot list TrainingRuns; retrying next period")
                listed = None
                continue
            for run in runs:
                meta = run["metadata"]
                memo.metrics.runs.observe(run)
                if listed is not None:
                    listed.add((meta["namespace"], meta["name"]))
                try:
                    await _sync(memo, meta["namespace"], meta["name"])
                except KubeError:
                    log.exception(
                        "resync of %s/%s failed; retrying next period",
                        meta["namespace"],
                        meta["name"],
                    )
        if listed is not None:
            memo.metrics.runs.retain(listed)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def trainingrun_event(
    type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    """The run appeared, changed or was listed after a restart: reconcile it now."""
    if not namespace or not _active(memo):
        return
    if type == "DELETED":
        memo.metrics.runs.forget(namespace, name)
        return
    memo.metrics.runs.observe(body)
    await _sync(memo, namespace, name)


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
@kopf.on.event(DASK_GROUP, DASK_VERSION, "daskclusters", labels=CHILD_LABELS)
async def trainingrun_child_event(
    namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any
) -> None:
    """A driver Job, Dask cluster or one of their pods changed: reconcile its run.

    Pods of both carry the run's labels (the Dask controller copies the DaskCluster's); a
    starting run waits for them to be placed and to run, and says why they are not.
    """
    if namespace and _active(memo):
        await _sync(memo, namespace, labels[LABEL_RUN])


def watch_workloads() -> None:
    """Also reconcile a run when its Kueue Workload changes (admitted, evicted, preempted).

    Registered by ``main`` only when the Kueue route is on, so an operator without Kueue's
    CRDs or the RBAC for them watches nothing of Kueue. (Under ``kopf run -m`` the resync
    still picks admissions up, within ``resync_seconds``.)
    """
    kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, "workloads", labels=CHILD_LABELS)(
        trainingrun_child_event
    )
