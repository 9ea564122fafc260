"""One level-triggered reconcile pass over a TrainingRun and what it owns.

``observe()`` is pure: from the run, its driver Job and its DaskCluster it derives the
status the run should show and the actions that move the world toward the spec.
``reconcile()`` reads the children, performs those actions (each safe to repeat) and
returns the status patch plus the Events to post; the kopf handlers only wire it up.
No state is kept between passes: everything is read back from the API server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import socket
from collections.abc import Mapping
from typing import Any

from trainingrun_operator import kube
from trainingrun_operator.constants import (
    API_VERSION,
    CONDITION_COMPLETE,
    CONDITION_FAILED,
    CONDITION_READY,
    CONDITION_RUNNING,
    CONDITION_SUSPENDED,
    DASHBOARD_PORT,
    DRIVER_SERVICE_ACCOUNT,
    FAILED,
    FINISHED_PHASES,
    KIND,
    MANAGER,
    PENDING,
    PROVISIONING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
)
from trainingrun_operator.exceptions import InvalidSpecError
from trainingrun_operator.objects import Manifest
from trainingrun_operator.rbac import build_driver_role_binding, build_service_account
from trainingrun_operator.settings import OperatorSettings
from trainingrun_operator.spec import RunSpec
from trainingrun_operator.workload import (
    build_dask_cluster,
    build_driver_job,
    cluster_name,
    job_name,
)


class Action(enum.Enum):
    """A change the reconcile pass makes to the run's children."""

    CREATE_JOB = "create the driver Job"
    SUSPEND_JOB = "suspend the driver Job"
    RESUME_JOB = "resume the driver Job"
    CREATE_CLUSTER = "create the Dask cluster"
    DELETE_CLUSTER = "delete the Dask cluster"
    DELETE_RUN = "delete the run (TTL after finish expired)"


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the run."""

    type: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one pass decided: status fields to patch, actions to take, Events to post."""

    status: Manifest
    actions: tuple[Action, ...]
    events: tuple[Event, ...]


def _now_text(now: datetime.datetime) -> str:
    """RFC 3339 in UTC, second precision, as Kubernetes writes times."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime.datetime:
    """Parse a Kubernetes timestamp."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _job_condition(job: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    """The Job's condition of type `kind` when it is True."""
    for condition in (job or {}).get("status", {}).get("conditions", []):
        if condition.get("type") == kind and condition.get("status") == "True":
            found: Mapping[str, Any] = condition
            return found
    return None


def _condition(
    previous: list[Manifest],
    kind: str,
    true: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> Manifest:
    """A metav1.Condition whose lastTransitionTime moves only when its status changes."""
    status = "True" if true else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    changed = old is None or old.get("status") != status
    return {
        "type": kind, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now if changed or old is None else old["lastTransitionTime"],
    }  # fmt: skip


def _phase_and_message(
    run: RunSpec, job: Mapping[str, Any] | None, cluster: Mapping[str, Any] | None
) -> tuple[str, str, str]:
    """The phase the children show, a CamelCase reason and a human message."""
    if (complete := _job_condition(job, "Complete")) is not None:
        return SUCCEEDED, "Completed", complete.get("message") or "the driver finished"
    if (failed := _job_condition(job, "Failed")) is not None:
        reason = failed.get("reason") or "DriverFailed"
        return FAILED, reason, failed.get("message") or "the driver failed"
    if run.suspend:
        return SUSPENDED, "Suspended", "spec.suspend is true: pods deleted until resumed"
    if job is None or cluster is None:
        return PENDING, "Creating", "creating the Dask cluster and the driver Job"
    if job.get("status", {}).get("ready", 0) >= 1:
        return RUNNING, "DriverRunning", "the driver is running the pipeline"
    cluster_phase = cluster.get("status", {}).get("phase", "Created")
    return PROVISIONING, "Provisioning", f"Dask cluster is {cluster_phase}; waiting for the driver"


def observe(
    body: Mapping[str, Any],
    run: RunSpec,
    job: Mapping[str, Any] | None,
    cluster: Mapping[str, Any] | None,
    now: datetime.datetime,
) -> Outcome:
    """Decide the status and the actions of one pass; pure."""
    status: Mapping[str, Any] = body.get("status") or {}
    generation = int(body["metadata"].get("generation", 1))
    phase, reason, message = _phase_and_message(run, job, cluster)
    finished = phase in FINISHED_PHASES
    stamp = _now_text(now)

    actions: list[Action] = []
    if job is None and not finished:
        actions.append(Action.CREATE_JOB)
    elif job is not None and not finished and bool(job["spec"].get("suspend")) != run.suspend:
        actions.append(Action.SUSPEND_JOB if run.suspend else Action.RESUME_JOB)
    wants_cluster = not finished and not run.suspend
    if wants_cluster and cluster is None:
        actions.append(Action.CREATE_CLUSTER)
    elif not wants_cluster and cluster is not None:
        actions.append(Action.DELETE_CLUSTER)

    job_status: Mapping[str, Any] = (job or {}).get("status", {})
    new: Manifest = {
        "phase": phase,
        "message": message,
        "observedGeneration": generation,
        "attempts": int(job_status.get("failed", 0)) + int(job_status.get("active", 0))
        + int(job_status.get("succeeded", 0)),
        "daskCluster": {
            "name": cluster_name(run),
            "dashboardAddress": f"http://{cluster_name(run)}-scheduler.{run.namespace}:{DASHBOARD_PORT}",
        },
    }  # fmt: skip
    if "startTime" not in status and (job_status.get("startTime") or phase == RUNNING):
        new["startTime"] = job_status.get("startTime") or stamp
    completion = status.get("completionTime")
    if finished and completion is None:
        completion = job_status.get("completionTime") or stamp
        new["completionTime"] = completion
    if finished and run.ttl_seconds_after_finished is not None and completion is not None:
        expiry = _parse_time(completion) + datetime.timedelta(
            seconds=run.ttl_seconds_after_finished
        )
        if now >= expiry:
            actions.append(Action.DELETE_RUN)

    previous = list(status.get("conditions", []))
    cluster_running = (cluster or {}).get("status", {}).get("phase") == "Running"
    ready = not finished and not run.suspend and cluster_running and job is not None
    truth = {
        CONDITION_READY: ready,
        CONDITION_RUNNING: phase == RUNNING,
        CONDITION_SUSPENDED: phase == SUSPENDED,
        CONDITION_COMPLETE: phase == SUCCEEDED,
        CONDITION_FAILED: phase == FAILED,
    }
    new["conditions"] = [
        _condition(previous, kind, true, reason, message, generation, stamp)
        for kind, true in truth.items()
    ]

    events: list[Event] = []
    if status.get("phase") != phase:
        kind = "Warning" if phase == FAILED else "Normal"
        events.append(Event(kind, phase, f"{status.get('phase') or 'New'} -> {phase}: {message}"))
    events += [
        Event("Normal", action.name.title().replace("_", ""), action.value) for action in actions
    ]
    return Outcome(new, tuple(actions), tuple(events))


async def ensure_driver_identity(api: kube.Kube, run: RunSpec) -> None:
    """Create the namespace's driver ServiceAccount and RoleBinding, unless the run has its own."""
    if run.service_account_name:
        return
    account = build_service_account(DRIVER_SERVICE_ACCOUNT, run.namespace)
    await api.ensure(kube.SERVICE_ACCOUNTS, account)
    await api.ensure(kube.ROLE_BINDINGS, build_driver_role_binding(run.namespace))


async def reconcile(
    api: kube.Kube, body: Mapping[str, Any], settings: OperatorSettings, now: datetime.datetime
) -> Outcome:
    """Read the run's children, act on what differs from the spec, return status and Events."""
    run = RunSpec.from_body(body)
    job, cluster = await asyncio.gather(
        api.read(kube.JOBS, run.namespace, job_name(run)),
        api.read(kube.DASK_CLUSTERS, run.namespace, cluster_name(run)),
    )
    outcome = observe(body, run, job, cluster, now)
    for action in outcome.actions:
        await _perform(api, action, run, settings)
    return outcome


async def _perform(
    api: kube.Kube, action: Action, run: RunSpec, settings: OperatorSettings
) -> None:
    """Carry out one action; each is idempotent."""
    if action is Action.CREATE_JOB:
        await ensure_driver_identity(api, run)
        await api.ensure(kube.JOBS, build_driver_job(run, settings))
    elif action in (Action.SUSPEND_JOB, Action.RESUME_JOB):
        patch = {"spec": {"suspend": action is Action.SUSPEND_JOB}}
        await api.merge_patch(kube.JOBS, run.namespace, job_name(run), patch)
    elif action is Action.CREATE_CLUSTER:
        await api.ensure(kube.DASK_CLUSTERS, build_dask_cluster(run, settings))
    elif action is Action.DELETE_CLUSTER:
        await api.delete(kube.DASK_CLUSTERS, run.namespace, cluster_name(run))
    else:
        await api.delete(kube.TRAINING_RUNS, run.namespace, run.name)


def build_event(run: Mapping[str, Any], event: Event, now: datetime.datetime) -> Manifest:
    """A core/v1 Event about the TrainingRun `run`."""
    meta = run["metadata"]
    stamp = _now_text(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION, "kind": KIND, "name": meta["name"],
            "namespace": meta["namespace"], "uid": meta["uid"],
        },
        "type": event.type, "reason": event.reason, "message": event.message[:1024],
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        "source": {"component": MANAGER},
        "reportingComponent": MANAGER, "reportingInstance": socket.gethostname(),
    }  # fmt: skip


@dataclasses.dataclass
class PassQueue:
    """Serializes the passes of each run and coalesces triggers that pile up behind one.

    Several triggers can fire at once for a run (its own watch, its children's, the
    resync). A trigger that finds a pass already waiting is dropped: that pass has not
    read the run yet, so it will see whatever this trigger was about.
    """

    locks: dict[str, asyncio.Lock] = dataclasses.field(default_factory=dict)
    waiting: set[str] = dataclasses.field(default_factory=set)

    def forget(self, key: str) -> None:
        """Drop the lock of a run that is gone."""
        self.locks.pop(key, None)


async def sync_run(
    api: kube.Kube, namespace: str, name: str, settings: OperatorSettings, queue: PassQueue
) -> Outcome | None:
    """Reconcile the run `namespace/name` as it is now; write its status and Events.

    Returns None when the pass was coalesced into a waiting one or the run is gone.
    """
    key = f"{namespace}/{name}"
    if key in queue.waiting:
        return None
    queue.waiting.add(key)
    async with queue.locks.setdefault(key, asyncio.Lock()):
        queue.waiting.discard(key)
        body = await api.read(kube.TRAINING_RUNS, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            queue.forget(key)
            return None
        now = datetime.datetime.now(datetime.UTC)
        try:
            outcome = await reconcile(api, body, settings, now)
        except InvalidSpecError as e:
            outcome = Outcome(
                {"phase": FAILED, "message": str(e)}, (), (Event("Warning", "InvalidSpec", str(e)),)
            )
        current = body.get("status") or {}
        # Only what changed, so an idle run costs two GETs per resync and no write.
        changed = {k: v for k, v in outcome.status.items() if current.get(k) != v}
        if changed and Action.DELETE_RUN not in outcome.actions:
            patch = {"status": changed}
            await api.merge_patch(kube.TRAINING_RUNS, namespace, name, patch, "status")
        await asyncio.gather(
            *(api.create(kube.EVENTS, namespace, build_event(body, e, now)) for e in outcome.events)
        )
        return outcome
