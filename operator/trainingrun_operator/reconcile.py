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

from trainingrun_operator import kube, kueue
from trainingrun_operator.children import Child, Pods, read_pods
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
    FAILED,
    FINISHED_PHASES,
    KIND,
    LABEL_RUN,
    MANAGER,
    PENDING,
    PROVISIONING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
)
from trainingrun_operator.exceptions import InvalidSpecError, PolicyViolationError
from trainingrun_operator.objects import Manifest
from trainingrun_operator.policy import violations
from trainingrun_operator.settings import OperatorSettings
from trainingrun_operator.spec import RunSpec
from trainingrun_operator.start_queue import is_admitted, start_blocker
from trainingrun_operator.workload import (
    build_dask_cluster,
    build_driver_identity,
    build_driver_job,
    build_network_policy,
    build_tls_secret,
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
    DELETE_RUN = "delete the run (TTL after finish expired)"
    CREATE_WORKLOAD = "create the Kueue Workload"
    ACTIVATE_WORKLOAD = "set the Kueue Workload's spec.active to the opposite of spec.suspend"
    RELEASE_WORKLOAD = "hand the evicted run's quota back to Kueue (its pods are gone)"
    FINISH_WORKLOAD = "mark the Kueue Workload Finished (its quota is released)"


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
class Observed:
    """The run's children as read in one pass."""

    job: Child
    cluster: Child
    pods: Pods = dataclasses.field(default_factory=Pods)
    # The run this one waits for before it may create its Dask cluster (one starts at a time).
    waiting_for: str | None = None
    # The run's place in Kueue; None when the run is not under Kueue.
    queue: kueue.QueueState | None = None


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
    if observed.job.stale:
        # The Job's name is the run's alone; the Dask cluster's carries the run's UID
        # (workload.cluster_name), so an earlier run's never stands in the way.
        return (
            PENDING,
            "DeletingEarlierRun",
            f"waiting for {observed.job.name} of an earlier run of this name to be deleted",
            [] if observed.job.deleting else [Action.DELETE_STALE_JOB],
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
    if observed.queue is not None and not (admission := observed.queue.admission).admitted:
        # Nothing of the run may run: _queue_actions stops what still does.
        return QUEUED, admission.reason, admission.message, []
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
        # Under Kueue the workers are what was admitted: never more than the quota reserved.
        if (cluster is not None and observed.queue is None
                and cluster["spec"]["worker"].get("replicas") != run.workers):  # fmt: skip
            actions.append(Action.SCALE_CLUSTER)
        if _job_drift(run, job):
            actions.append(Action.UPDATE_JOB)
    actions = list(dict.fromkeys([*actions, *_queue_actions(run, observed, finished)]))

    stamp = _now_text(now)
    new: Manifest = {
        "phase": phase,
        "message": message,
        "observedGeneration": generation,
        "attempts": int(job_status.get("failed", 0)) + int(job_status.get("active", 0))
        + int(job_status.get("succeeded", 0)),
        # The cluster is deleted once the run ends or is suspended: None (a merge patch's null)
        # removes its name and dashboard address instead of leaving a dead link in status.
        "daskCluster": None if finished or run.suspend else {
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
        and (observed.queue is None or observed.queue.admission.admitted)
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


def _queue_actions(run: RunSpec, observed: Observed, finished: bool) -> list[Action]:
    """What keeps a run under Kueue in step with its Workload (nothing for other runs).

    Kueue's job framework does the same for built-in Jobs: create the Workload, stop the
    run when it is not (or no longer) admitted, hand the quota back once its pods are
    gone after an eviction, deactivate it while suspended, mark it Finished at the end.
    """
    state = observed.queue
    if state is None:
        return []
    if state.workload is None:
        return [Action.CREATE_WORKLOAD] if state.may_create and not finished else []
    admission = state.admission
    if finished:
        return [] if admission.finished else [Action.FINISH_WORKLOAD]
    actions: list[Action] = []
    if state.workload["spec"].get("active", True) is run.suspend:
        actions.append(Action.ACTIVATE_WORKLOAD)
    if admission.admitted:
        return actions
    job, cluster = observed.job.ours, observed.cluster.ours
    driver_started = job is not None and not job["spec"].get("suspend")
    if driver_started:
        actions.append(Action.SUSPEND_JOB)
    if cluster is not None:
        actions.append(Action.DELETE_CLUSTER)
    driver_pods = int((job or {}).get("status", {}).get("active", 0))
    if admission.evicted and admission.reserved and not (driver_started or cluster or driver_pods):
        actions.append(Action.RELEASE_WORKLOAD)
    return actions


def kstatus_truth(phase: str) -> dict[str, bool]:
    """The kstatus conditions of a run in `phase`.

    kstatus (and Flux, kpt) read Reconciling=True as InProgress, Stalled=True as Failed,
    Ready=False as InProgress and Ready=True as Current. A run reconciles until it finishes;
    a suspended one has reached what its spec asks for, so it reads Current, not InProgress.
    """
    return {
        CONDITION_RECONCILING: phase in (PENDING, QUEUED, PROVISIONING, RUNNING),
        CONDITION_STALLED: phase == FAILED,
        CONDITION_KSTATUS_READY: phase in (SUCCEEDED, SUSPENDED),
    }


def invalid_spec_outcome(
    body: Mapping[str, Any], message: str, now: datetime.datetime, reason: str = "InvalidSpec"
) -> Outcome:
    """A run whose spec cannot be read or is forbidden: Failed and Stalled at once, nothing
    created."""
    status: Mapping[str, Any] = body.get("status") or {}
    previous = list(status.get("conditions", []))
    generation = int(body["metadata"].get("generation", 1))
    kinds = (CONDITION_ADMITTED, CONDITION_READY, CONDITION_RUNNING, CONDITION_SUSPENDED,
             CONDITION_COMPLETE)  # fmt: skip
    truth = {**dict.fromkeys(kinds, False), CONDITION_FAILED: True, **kstatus_truth(FAILED)}
    conditions = [
        _condition(previous, kind, true, reason, message, generation, _now_text(now))
        for kind, true in truth.items()
    ]
    new = {"phase": FAILED, "message": message, "observedGeneration": generation,
           "conditions": conditions}  # fmt: skip
    return Outcome(new, (), (Event("Warning", reason, message),))


# Actions that create what runs the run's code; the run policy is checked before each.
CREATING = frozenset({Action.CREATE_CLUSTER, Action.CREATE_JOB})

# Waiting reasons a user should look at: posted as Warning Events.
WARNING_REASONS = frozenset({"Unschedulable", "NameTaken"})


async def ensure_driver_identity(api: kube.Kube, run: RunSpec) -> None:
    """Create the run's driver ServiceAccount (unless the spec names one), Role and RoleBinding."""
    for manifest in build_driver_identity(run):
        await api.ensure(kube.IDENTITY_RESOURCES[manifest["kind"]], manifest)


async def read_queue_state(
    api: kube.Kube, body: Mapping[str, Any], run: RunSpec, queue: str
) -> kueue.QueueState:
    """Read the run's Workload, and its priority class until the Workload exists."""
    workload = await api.read(kube.WORKLOADS, run.namespace, kueue.workload_name(run))
    priority_class = kueue.priority_class_name(body)
    priority = None
    if workload is None and priority_class:
        found = await api.read(kube.WORKLOAD_PRIORITY_CLASSES, None, priority_class)
        priority = None if found is None else int(found.get("value", 0))
    return kueue.QueueState(queue, workload, priority_class, priority)


async def read_placement(
    api: kube.Kube, queue: kueue.QueueState | None
) -> dict[str, kueue.Placement]:
    """Where the admitted flavors put each pod set (read only when pods are to be created)."""
    if queue is None or queue.workload is None:
        return {}
    names = sorted(kueue.flavor_names(queue.workload))
    read = await asyncio.gather(*(api.read(kube.RESOURCE_FLAVORS, None, n) for n in names))
    flavors = {name: flavor for name, flavor in zip(names, read, strict=True) if flavor}
    return kueue.placements(queue.workload, flavors)


async def read_children(
    api: kube.Kube,
    body: Mapping[str, Any],
    run: RunSpec,
    others: OtherRuns,
    settings: OperatorSettings,
) -> Observed:
    """Read what the pass needs: the children, their pods while the run starts, the queue."""
    found_job, found_cluster = await asyncio.gather(
        api.read(kube.JOBS, run.namespace, job_name(run)),
        api.read(kube.DASK_CLUSTERS, run.namespace, cluster_name(run)),
    )
    job = Child("Job", job_name(run), found_job, run.uid)
    cluster = Child("DaskCluster", cluster_name(run), found_cluster, run.uid)
    status: Mapping[str, Any] = body.get("status") or {}
    queue_name = kueue.queue_name(body) if settings.kueue else None
    queue = None
    if queue_name is not None:
        queue = await read_queue_state(api, body, run, queue_name)
    waiting = queue is not None and not queue.admission.admitted
    if status.get("phase") in FINISHED_PHASES or run.suspend or waiting:
        # Nothing to start: neither its pods nor the start queue are worth a LIST.
        return Observed(job, cluster, queue=queue)
    ours = job.ours
    job_ready = ours is not None and ours.get("status", {}).get("ready", 0) >= 1
    pods = Pods()
    if not job_ready or _job_condition(ours, "Failed") is not None:
        selector = f"{LABEL_RUN}={run.name}"
        listed = await api.list_objects(kube.PODS, run.namespace, selector)
        pods = read_pods(listed, cluster.ours, ours)
    waiting_for = None
    driver_started = ours is not None and not ours["spec"].get("suspend")
    if found_cluster is None and not driver_started and queue is None:
        # Runs under Kueue are neither in this queue nor wait in it: Kueue admits them.
        runs = await others()
        if settings.kueue:
            runs = [other for other in runs if kueue.queue_name(other) is None]
        waiting_for = start_blocker(body, runs)
    return Observed(job, cluster, pods, waiting_for, queue)


async def reconcile(
    api: kube.Kube,
    body: Mapping[str, Any],
    settings: OperatorSettings,
    now: datetime.datetime,
    others: OtherRuns,
) -> Outcome:
    """Read the run's children, act on what differs from the spec, return status and Events."""
    run = RunSpec.from_body(body)
    observed = await read_children(api, body, run, others, settings)
    outcome = observe(body, run, observed, now)
    if CREATING & set(outcome.actions) and (problems := violations(run, settings.policy)):
        raise PolicyViolationError(problems)
    for action in outcome.actions:
        await _perform(api, action, run, observed, settings, outcome, now)
    return outcome


async def _perform(
    api: kube.Kube,
    action: Action,
    run: RunSpec,
    observed: Observed,
    settings: OperatorSettings,
    outcome: Outcome,
    now: datetime.datetime,
) -> None:
    """Carry out one action; each is idempotent, and a deletion names the UID it means."""
    if action in _QUEUE_ACTIONS:
        await _perform_queue_action(api, action, run, observed, outcome, settings, now)
    elif action is Action.CREATE_JOB:
        await ensure_driver_identity(api, run)
        placement = await read_placement(api, observed.queue)
        await api.ensure(kube.JOBS, kueue.place_job(build_driver_job(run, settings), placement))
    elif action in (Action.SUSPEND_JOB, Action.RESUME_JOB):
        patch = {"spec": {"suspend": action is Action.SUSPEND_JOB}}
        await api.merge_patch(kube.JOBS, run.namespace, job_name(run), patch)
    elif action is Action.UPDATE_JOB:
        limits = {"activeDeadlineSeconds": run.active_deadline_seconds,
                  "backoffLimit": run.backoff_limit}  # fmt: skip
        await api.merge_patch(kube.JOBS, run.namespace, job_name(run), {"spec": limits})
    elif action is Action.CREATE_CLUSTER:
        if settings.dask_tls:
            # Create only (an existing one, of this run, is kept): the operator never reads
            # Secrets, and the pods of a run must all see the same CA.
            secret = build_tls_secret(run, datetime.datetime.now(datetime.UTC))
            await api.create(kube.SECRETS, run.namespace, secret)
        if settings.network_policy:
            policy = build_network_policy(run, settings)
            await api.create(kube.NETWORK_POLICIES, run.namespace, policy)
        placement = await read_placement(api, observed.queue)
        cluster = kueue.place_cluster(build_dask_cluster(run, settings), placement)
        await api.ensure(kube.DASK_CLUSTERS, cluster)
    elif action is Action.SCALE_CLUSTER:
        scale = {"spec": {"worker": {"replicas": run.workers}}}
        await api.merge_patch(kube.DASK_CLUSTERS, run.namespace, cluster_name(run), scale)
    elif action is Action.DELETE_CLUSTER:
        await api.delete(
            kube.DASK_CLUSTERS, run.namespace, cluster_name(run), _uid(observed.cluster)
        )
    elif action is Action.DELETE_STALE_JOB:
        await api.delete(kube.JOBS, run.namespace, job_name(run), _uid(observed.job))
    else:
        await api.delete(kube.TRAINING_RUNS, run.namespace, run.name, run.uid)


_QUEUE_ACTIONS = frozenset({Action.CREATE_WORKLOAD, Action.ACTIVATE_WORKLOAD,
                            Action.RELEASE_WORKLOAD, Action.FINISH_WORKLOAD})  # fmt: skip


async def _perform_queue_action(
    api: kube.Kube,
    action: Action,
    run: RunSpec,
    observed: Observed,
    outcome: Outcome,
    settings: OperatorSettings,
    now: datetime.datetime,
) -> None:
    """Carry out an action on the run's Kueue Workload."""
    state = observed.queue
    assert state is not None, action  # _queue_actions yields them only for runs under Kueue
    name = kueue.workload_name(run)
    if action is Action.CREATE_WORKLOAD:
        workload = kueue.build_workload(run, settings, state.queue, state.priority_class,
                                        state.priority)  # fmt: skip
        await api.ensure(kube.WORKLOADS, workload)
        return
    assert state.workload is not None, action
    if action is Action.ACTIVATE_WORKLOAD:
        patch = {"spec": {"active": not run.suspend}}
        await api.merge_patch(kube.WORKLOADS, run.namespace, name, patch)
    elif action is Action.RELEASE_WORKLOAD:
        patch = kueue.release_patch(state.workload, now)
        await api.merge_patch(kube.WORKLOADS, run.namespace, name, patch, "status")
    else:
        phase, message = outcome.status["phase"], outcome.status["message"]
        patch = kueue.finish_patch(state.workload, phase, message, now)
        await api.merge_patch(kube.WORKLOADS, run.namespace, name, patch, "status")


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
            except PolicyViolationError as e:
                outcome = invalid_spec_outcome(body, str(e), now, "PolicyViolation")
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
