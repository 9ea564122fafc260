"""One level-triggered reconcile pass over a TrainingRun and what it owns.

``observe()`` is pure: from the run, its driver Job and its DaskCluster it derives the
status the run should show and the actions that move the world toward the spec.
``reconcile()`` reads the children, performs those actions (each safe to repeat) and
returns the status patch plus the Events to post; the kopf handlers only wire it up.
No state is kept between passes: everything is read back from the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from trainingrun_operator import kube
from trainingrun_operator.constants import (
    API_VERSION,
    CONDITION_ADMITTED,
    CONDITION_COMPLETE,
    CONDITION_FAILED,
    CONDITION_KSTATUS_READY,
    CONDITION_READY,
    CONDITION_RECONCILING,
    CONDITION_RUNNING,
    CONDITION_STALLED,
    CONDITION_SUSPENDED,
    DASHBOARD_PORT,
    DASK_LABEL_CLUSTER,
    DASK_LABEL_COMPONENT,
    DRIVER_SERVICE_ACCOUNT,
    FAILED,
    FINISHED_PHASES,
    JOB_LABEL_CONTROLLER_UID,
    KIND,
    LABEL_RUN,
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

# Lists the runs that share the start queue (read only when a run waits to start).
OtherRuns = Callable[[], Awaitable[list[Manifest]]]


class Action(enum.Enum):
    """A change the reconcile pass makes to the run's children."""

    CREATE_JOB = "create the driver Job"
    SUSPEND_JOB = "suspend the driver Job"
    RESUME_JOB = "resume the driver Job"
    UPDATE_JOB = "apply activeDeadlineSeconds and backoffLimit to the driver Job"
    CREATE_CLUSTER = "create the Dask cluster"
    SCALE_CLUSTER = "scale the Dask workers to spec.dask.workers"
    DELETE_CLUSTER = "delete the Dask cluster"
    DELETE_STALE_JOB = "delete the driver Job of an earlier run of this name"
    DELETE_STALE_CLUSTER = "delete the Dask cluster of an earlier run of this name"
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


@dataclasses.dataclass(frozen=True)
class Child:
    """What was found under a child's name: ours (owned by this run), an earlier run's, or not."""

    kind: str
    name: str
    found: Manifest | None
    owner_uid: str

    @property
    def ours(self) -> Manifest | None:
        """The object when this run is its controller; never read the state of another's."""
        if self.found is None:
            return None
        owners = self.found["metadata"].get("ownerReferences", [])
        mine = any(o.get("uid") == self.owner_uid and o.get("controller") for o in owners)
        return self.found if mine else None

    @property
    def stale(self) -> bool:
        """An earlier TrainingRun of the same name owns it: it goes, then ours is made."""
        if self.found is None or self.ours is not None:
            return False
        owners = self.found["metadata"].get("ownerReferences", [])
        return any(o.get("kind") == KIND and o.get("apiVersion") == API_VERSION for o in owners)

    @property
    def foreign(self) -> bool:
        """Something else holds the name: the run cannot start until it is removed."""
        return self.found is not None and self.ours is None and not self.stale

    @property
    def deleting(self) -> bool:
        """Deletion of the object has begun."""
        return bool(self.found and self.found["metadata"].get("deletionTimestamp"))


@dataclasses.dataclass(frozen=True)
class Pods:
    """What the run's pods show, as far as starting the run depends on it."""

    scheduler_ready: bool = False
    workers_ready: int = 0
    # Why a Dask pod is not placed (the scheduler's PodScheduled message), if one is not.
    dask_unschedulable: str | None = None
    driver_unschedulable: str | None = None
    # The one line the last failed driver left (its container's termination message).
    driver_failure: str | None = None


@dataclasses.dataclass(frozen=True)
class Observed:
    """The run's children as read in one pass."""

    job: Child
    cluster: Child
    pods: Pods = Pods()
    # The run this one waits for before it may create its Dask cluster (one starts at a time).
    waiting_for: str | None = None


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


def is_admitted(status: Mapping[str, Any]) -> bool:
    """True when the run's status says it was let start (its Admitted condition is True)."""
    return any(
        c.get("type") == CONDITION_ADMITTED and c.get("status") == "True"
        for c in status.get("conditions", [])
    )


def _previous_reason(status: Mapping[str, Any]) -> str | None:
    """The reason the last pass gave (every condition carries it)."""
    conditions = status.get("conditions") or [{}]
    reason: str | None = conditions[0].get("reason")
    return reason


def _waiting_for_dask(run: RunSpec, pods: Pods) -> tuple[str, str]:
    """Reason and message of a run whose Dask cluster cannot work yet."""
    if pods.dask_unschedulable:
        return "Unschedulable", f"waiting for capacity: {pods.dask_unschedulable}"
    scheduler = "running" if pods.scheduler_ready else "starting"
    return "WaitingForDask", (
        f"waiting for the Dask cluster: scheduler {scheduler}, "
        f"{pods.workers_ready}/{run.workers_to_start} workers running"
    )


def _progress(
    run: RunSpec, previous_phase: str | None, observed: Observed
) -> tuple[str, str, str, list[Action]]:
    """Phase, reason, message and actions of a run that has not finished."""
    job, cluster, pods = observed.job.ours, observed.cluster.ours, observed.pods
    if observed.job.stale or observed.cluster.stale:
        actions = (
            [Action.DELETE_STALE_JOB] if observed.job.stale and not observed.job.deleting else []
        )
        if observed.cluster.stale and not observed.cluster.deleting:
            actions.append(Action.DELETE_STALE_CLUSTER)
        names = [c.name for c in (observed.job, observed.cluster) if c.stale]
        return (
            PENDING,
            "DeletingEarlierRun",
            (f"waiting for {' and '.join(names)} of an earlier run of this name to be deleted"),
            actions,
        )
    if observed.job.foreign or observed.cluster.foreign:
        child = observed.job if observed.job.foreign else observed.cluster
        return (
            PENDING,
            "NameTaken",
            (
                f"{child.kind} {child.name} exists and is not owned by this run: delete it or "
                "rename the run"
            ),
            [],
        )
    if job is not None and not job["spec"].get("suspend"):
        # The driver started: from here the phase only moves forward.
        if job.get("status", {}).get("ready", 0) >= 1 or previous_phase == RUNNING:
            return RUNNING, "DriverRunning", "the driver is running the pipeline", []
        if pods.driver_unschedulable:
            return (
                PROVISIONING,
                "Unschedulable",
                (f"waiting for capacity for the driver: {pods.driver_unschedulable}"),
                [],
            )
        return PROVISIONING, "DriverStarting", "the Dask cluster runs; the driver is starting", []
    if cluster is None:
        if observed.waiting_for:
            return (
                PENDING,
                "Queued",
                (
                    f"waiting for run {observed.waiting_for} to start first "
                    "(runs start one at a time)"
                ),
                [],
            )
        return PENDING, "CreatingCluster", "creating the Dask cluster", [Action.CREATE_CLUSTER]
    if not (pods.scheduler_ready and pods.workers_ready >= run.workers_to_start):
        reason, message = _waiting_for_dask(run, pods)
        return PENDING, reason, message, []
    action = Action.CREATE_JOB if job is None else Action.RESUME_JOB
    return PROVISIONING, "DriverStarting", "the Dask cluster runs; starting the driver", [action]


def _job_drift(run: RunSpec, job: Mapping[str, Any] | None) -> bool:
    """True when the Job's deadline or retry limit differs from the spec's."""
    if job is None:
        return False
    spec = job["spec"]
    return bool(
        spec.get("activeDeadlineSeconds") != run.active_deadline_seconds
        or spec.get("backoffLimit") != run.backoff_limit
    )


def _startup_expired(
    body: Mapping[str, Any], run: RunSpec, phase: str, now: datetime.datetime
) -> bool:
    """True when a run that never started has waited longer than startupDeadlineSeconds."""
    status: Mapping[str, Any] = body.get("status") or {}
    if run.startup_deadline_seconds is None or "startTime" in status:
        return False
    if phase not in (PENDING, PROVISIONING):
        return False
    created = _parse_time(body["metadata"]["creationTimestamp"])
    return now - created > datetime.timedelta(seconds=run.startup_deadline_seconds)


def observe(
    body: Mapping[str, Any], run: RunSpec, observed: Observed, now: datetime.datetime
) -> Outcome:
    """Decide the status and the actions of one pass; pure.

    Phases move forward only: a finished run stays finished whatever happens to its
    children, and a run whose driver ran stays Running between the driver's attempts.
    """
    status: Mapping[str, Any] = body.get("status") or {}
    previous_phase = status.get("phase")
    generation = int(body["metadata"].get("generation", 1))
    job, cluster = observed.job.ours, observed.cluster.ours
    job_status: Mapping[str, Any] = (job or {}).get("status", {})
    actions: list[Action] = []
    if previous_phase in FINISHED_PHASES:
        phase, reason = previous_phase, _previous_reason(status) or previous_phase
        message = status.get("message", "")
    elif (complete := _job_condition(job, "Complete")) is not None:
        phase, reason = SUCCEEDED, "Completed"
        message = complete.get("message") or "the driver finished"
    elif (failed := _job_condition(job, "Failed")) is not None:
        phase, reason = FAILED, failed.get("reason") or "DriverFailed"
        job_message = failed.get("message") or "the driver failed"
        failure = observed.pods.driver_failure
        message = f"{failure} ({job_message})" if failure else job_message
    elif run.suspend:
        phase, reason, message = SUSPENDED, "Suspended", "spec.suspend is true: pods deleted"
    else:
        phase, reason, message, actions = _progress(run, previous_phase, observed)
        if _startup_expired(body, run, phase, now):
            phase, reason = FAILED, "StartupDeadlineExceeded"
            message = f"not started within {run.startup_deadline_seconds} s: {message}"
            actions = []
    finished = phase in FINISHED_PHASES

    driver_started = job is not None and not job["spec"].get("suspend")
    job_ended = bool(_job_condition(job, "Complete") or _job_condition(job, "Failed"))
    if driver_started and (run.suspend or (finished and not job_ended)):
        actions.append(Action.SUSPEND_JOB)
    if cluster is not None and (finished or run.suspend):
        actions.append(Action.DELETE_CLUSTER)
    if not finished and not run.suspend:
        if cluster is not None and cluster["spec"]["worker"].get("replicas") != run.workers:
            actions.append(Action.SCALE_CLUSTER)
        if _job_drift(run, job):
            actions.append(Action.UPDATE_JOB)

    stamp = _now_text(now)
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
    if previous_phase in FINISHED_PHASES:
        new["attempts"] = status.get("attempts", new["attempts"])
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
    pods = observed.pods
    dask_works = pods.scheduler_ready and pods.workers_ready >= run.workers_to_start
    admitted = (
        not finished and not run.suspend
        and (cluster is not None or driver_started or Action.CREATE_CLUSTER in actions)
    )  # fmt: skip
    truth: dict[str, bool] = {
        CONDITION_ADMITTED: admitted,
        CONDITION_READY: not finished and not run.suspend and (dask_works or phase == RUNNING),
        CONDITION_RUNNING: phase == RUNNING,
        CONDITION_SUSPENDED: phase == SUSPENDED,
        CONDITION_COMPLETE: phase == SUCCEEDED,
        CONDITION_FAILED: phase == FAILED,
        **kstatus_truth(phase),
    }
    new["conditions"] = [
        _condition(previous, kind, true, reason, message, generation, stamp)
        for kind, true in truth.items()
    ]

    events: list[Event] = []
    previous_reason = _previous_reason(status)
    if previous_phase != phase or previous_reason not in (None, reason):
        kind = "Warning" if phase == FAILED or reason in WARNING_REASONS else "Normal"
        label = phase if previous_phase != phase else reason
        events.append(Event(kind, label, f"{previous_phase or 'New'} -> {phase}: {message}"))
    events += [
        Event("Normal", action.name.title().replace("_", ""), action.value) for action in actions
    ]
    return Outcome(new, tuple(actions), tuple(events))


def kstatus_truth(phase: str) -> dict[str, bool]:
    """The kstatus conditions of a run in `phase`.

    kstatus (and Flux, kpt) read Reconciling=True as InProgress, Stalled=True as Failed,
    Ready=False as InProgress and Ready=True as Current. A run reconciles until it finishes;
    a suspended one has reached what its spec asks for, so it reads Current, not InProgress.
    """
    return {
        CONDITION_RECONCILING: phase in (PENDING, PROVISIONING, RUNNING),
        CONDITION_STALLED: phase == FAILED,
        CONDITION_KSTATUS_READY: phase in (SUCCEEDED, SUSPENDED),
    }


def invalid_spec_outcome(body: Mapping[str, Any], message: str, now: datetime.datetime) -> Outcome:
    """A run whose spec cannot be read: Failed and Stalled at once, nothing created."""
    status: Mapping[str, Any] = body.get("status") or {}
    previous = list(status.get("conditions", []))
    generation = int(body["metadata"].get("generation", 1))
    kinds = (CONDITION_ADMITTED, CONDITION_READY, CONDITION_RUNNING, CONDITION_SUSPENDED,
             CONDITION_COMPLETE)  # fmt: skip
    truth = {**dict.fromkeys(kinds, False), CONDITION_FAILED: True, **kstatus_truth(FAILED)}
    conditions = [
        _condition(previous, kind, true, "InvalidSpec", message, generation, _now_text(now))
        for kind, true in truth.items()
    ]
    new = {"phase": FAILED, "message": message, "observedGeneration": generation,
           "conditions": conditions}  # fmt: skip
    return Outcome(new, (), (Event("Warning", "InvalidSpec", message),))


# Waiting reasons a user should look at: posted as Warning Events.
WARNING_REASONS = frozenset({"Unschedulable", "NameTaken"})


def _ready(pod: Mapping[str, Any]) -> bool:
    """A pod that runs and is Ready."""
    conditions = pod.get("status", {}).get("conditions", [])
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return bool(pod.get("status", {}).get("phase") == "Running" and ready)


def _unschedulable(pod: Mapping[str, Any]) -> str | None:
    """The scheduler's message for a pod it cannot place (e.g. `... Insufficient cpu.`)."""
    for condition in pod.get("status", {}).get("conditions", []):
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("message") or condition.get("reason") or "unschedulable")
    return None


def _termination_line(pod: Mapping[str, Any]) -> str | None:
    """The last non-empty line of the driver container's termination message."""
    for container in pod.get("status", {}).get("containerStatuses", []):
        message = (container.get("state", {}).get("terminated") or {}).get("message") or ""
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return None


def read_pods(
    pods: list[Manifest], cluster: Mapping[str, Any] | None, job: Mapping[str, Any] | None
) -> Pods:
    """Sum up the run's pods: those of its DaskCluster (made after it) and of its driver Job."""
    alive = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    dask: list[Manifest] = []
    if cluster is not None:
        born = cluster["metadata"]["creationTimestamp"]
        name = cluster["metadata"]["name"]
        dask = [
            p for p in alive
            if p["metadata"].get("labels", {}).get(DASK_LABEL_CLUSTER) == name
            # An earlier cluster of the same name may still have pods on their way out.
            and p["metadata"]["creationTimestamp"] >= born
        ]  # fmt: skip

    def component(pod: Mapping[str, Any]) -> str:
        return str(pod["metadata"].get("labels", {}).get(DASK_LABEL_COMPONENT, ""))

    schedulers = [p for p in dask if component(p) == "scheduler"]
    workers = [p for p in dask if component(p) == "worker"]
    unplaced = [
        f"Dask {component(p)} pod {p['metadata']['name']}: {reason}"
        for p in schedulers + workers
        if (reason := _unschedulable(p))
    ]
    drivers: list[Manifest] = []
    if job is not None:
        uid = job["metadata"]["uid"]
        drivers = sorted(
            (
                p
                for p in pods
                if p["metadata"].get("labels", {}).get(JOB_LABEL_CONTROLLER_UID) == uid
            ),
            key=lambda p: p["metadata"]["creationTimestamp"],
        )
    failures = [line for p in drivers if (line := _termination_line(p))]
    driver_unplaced = [r for p in drivers if (r := _unschedulable(p))]
    return Pods(
        scheduler_ready=any(_ready(p) for p in schedulers),
        workers_ready=sum(_ready(p) for p in workers),
        dask_unschedulable=unplaced[0] if unplaced else None,
        driver_unschedulable=driver_unplaced[-1] if driver_unplaced else None,
        driver_failure=failures[-1] if failures else None,
    )


def _start_key(run: Mapping[str, Any]) -> tuple[str, str, str]:
    """Queue order: creation time, then namespace and name."""
    meta = run["metadata"]
    return (meta["creationTimestamp"], meta["namespace"], meta["name"])


def start_blocker(body: Mapping[str, Any], runs: list[Manifest]) -> str | None:
    """The run `body` must wait for before it starts, or None when it may start now.

    One run starts at a time: a run is let create its Dask cluster only when no other run
    is starting (admitted, but its driver not yet running) and no older run is waiting.
    Runs that hold part of the capacity they need can then never wait on each other, so
    a busy cluster delays runs and never wedges them.
    """
    mine = _start_key(body)
    for other in sorted(runs, key=_start_key):
        meta = other["metadata"]
        status: Mapping[str, Any] = other.get("status") or {}
        spec: Mapping[str, Any] = other.get("spec") or {}
        if _start_key(other) == mine or meta.get("deletionTimestamp") or spec.get("suspend"):
            continue
        if status.get("phase") in (*FINISHED_PHASES, RUNNING, SUSPENDED):
            continue
        if is_admitted(status) or _start_key(other) < mine:
            return f"{meta['namespace']}/{meta['name']}"
    return None


async def ensure_driver_identity(api: kube.Kube, run: RunSpec) -> None:
    """Create the namespace's driver ServiceAccount and RoleBinding, unless the run has its own."""
    if run.service_account_name:
        return
    account = build_service_account(DRIVER_SERVICE_ACCOUNT, run.namespace)
    await api.ensure(kube.SERVICE_ACCOUNTS, account)
    await api.ensure(kube.ROLE_BINDINGS, build_driver_role_binding(run.namespace))


async def read_children(
    api: kube.Kube, body: Mapping[str, Any], run: RunSpec, others: OtherRuns
) -> Observed:
    """Read what the pass needs: the children, their pods while the run starts, the queue."""
    found_job, found_cluster = await asyncio.gather(
        api.read(kube.JOBS, run.namespace, job_name(run)),
        api.read(kube.DASK_CLUSTERS, run.namespace, cluster_name(run)),
    )
    job = Child("Job", job_name(run), found_job, run.uid)
    cluster = Child("DaskCluster", cluster_name(run), found_cluster, run.uid)
    status: Mapping[str, Any] = body.get("status") or {}
    if status.get("phase") in FINISHED_PHASES or run.suspend:
        return Observed(job, cluster)
    ours = job.ours
    job_ready = ours is not None and ours.get("status", {}).get("ready", 0) >= 1
    pods = Pods()
    if not job_ready or _job_condition(ours, "Failed") is not None:
        selector = f"{LABEL_RUN}={run.name}"
        listed = await api.list_objects(kube.PODS, run.namespace, selector)
        pods = read_pods(listed, cluster.ours, ours)
    waiting_for = None
    driver_started = ours is not None and not ours["spec"].get("suspend")
    if found_cluster is None and not driver_started:
        waiting_for = start_blocker(body, await others())
    return Observed(job, cluster, pods, waiting_for)


async def reconcile(
    api: kube.Kube,
    body: Mapping[str, Any],
    settings: OperatorSettings,
    now: datetime.datetime,
    others: OtherRuns,
) -> Outcome:
    """Read the run's children, act on what differs from the spec, return status and Events."""
    run = RunSpec.from_body(body)
    observed = await read_children(api, body, run, others)
    outcome = observe(body, run, observed, now)
    for action in outcome.actions:
        await _perform(api, action, run, observed, settings)
    return outcome


async def _perform(
    api: kube.Kube, action: Action, run: RunSpec, observed: Observed, settings: OperatorSettings
) -> None:
    """Carry out one action; each is idempotent, and a deletion names the UID it means."""
    if action is Action.CREATE_JOB:
        await ensure_driver_identity(api, run)
        await api.ensure(kube.JOBS, build_driver_job(run, settings))
    elif action in (Action.SUSPEND_JOB, Action.RESUME_JOB):
        patch = {"spec": {"suspend": action is Action.SUSPEND_JOB}}
        await api.merge_patch(kube.JOBS, run.namespace, job_name(run), patch)
    elif action is Action.UPDATE_JOB:
        limits = {"activeDeadlineSeconds": run.active_deadline_seconds,
                  "backoffLimit": run.backoff_limit}  # fmt: skip
        await api.merge_patch(kube.JOBS, run.namespace, job_name(run), {"spec": limits})
    elif action is Action.CREATE_CLUSTER:
        await api.ensure(kube.DASK_CLUSTERS, build_dask_cluster(run, settings))
    elif action is Action.SCALE_CLUSTER:
        scale = {"spec": {"worker": {"replicas": run.workers}}}
        await api.merge_patch(kube.DASK_CLUSTERS, run.namespace, cluster_name(run), scale)
    elif action in (Action.DELETE_CLUSTER, Action.DELETE_STALE_CLUSTER):
        await api.delete(
            kube.DASK_CLUSTERS, run.namespace, cluster_name(run), _uid(observed.cluster)
        )
    elif action is Action.DELETE_STALE_JOB:
        await api.delete(kube.JOBS, run.namespace, job_name(run), _uid(observed.job))
    else:
        await api.delete(kube.TRAINING_RUNS, run.namespace, run.name, run.uid)


def _uid(child: Child) -> str | None:
    """The UID of the object found under the child's name."""
    return child.found["metadata"]["uid"] if child.found else None


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
    read the run yet, so it will see whatever this trigger was about. Passes of runs not
    yet admitted also take `starting`, so two runs are never let start at once.
    """

    locks: dict[str, asyncio.Lock] = dataclasses.field(default_factory=dict)
    waiting: set[str] = dataclasses.field(default_factory=set)
    starting: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

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

    async def watched_runs() -> list[Manifest]:
        """Every run this operator watches: the queue in which runs start."""
        found: list[Manifest] = []
        for scope in settings.namespaces or (None,):
            found += await api.list_objects(kube.TRAINING_RUNS, scope)
        return found

    async with queue.locks.setdefault(key, asyncio.Lock()):
        queue.waiting.discard(key)
        body = await api.read(kube.TRAINING_RUNS, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            queue.forget(key)
            return None
        current = body.get("status") or {}
        admitting = not is_admitted(current) and current.get("phase") not in FINISHED_PHASES
        async with queue.starting if admitting else contextlib.nullcontext():
            now = datetime.datetime.now(datetime.UTC)
            try:
                outcome = await reconcile(api, body, settings, now, watched_runs)
            except InvalidSpecError as e:
                outcome = invalid_spec_outcome(body, str(e), now)
            # Only what changed, so an idle run costs two GETs per resync and no write.
            changed = {k: v for k, v in outcome.status.items() if current.get(k) != v}
            if changed and Action.DELETE_RUN not in outcome.actions:
                patch = {"status": changed}
                await api.merge_patch(kube.TRAINING_RUNS, namespace, name, patch, "status")
        await asyncio.gather(
            *(api.create(kube.EVENTS, namespace, build_event(body, e, now)) for e in outcome.events)
        )
        return outcome
