"""The Kueue route: a run labelled ``kueue.x-k8s.io/queue-name`` is admitted whole by Kueue.

The operator plays the part Kueue's job framework plays for built-in Jobs: it keeps one
``Workload`` per run (pod sets ``driver`` 1, ``scheduler`` 1, ``workers`` N, each with the
pod template the run would create), creates nothing else until Kueue admits it, places
the pods where the admitted flavors say, stops the run (Dask cluster deleted, driver Job
suspended) when Kueue evicts or preempts it and then hands the quota back, and marks the
Workload Finished when the run ends. Why this route and not pod groups: docs/kueue.md.

Everything here is pure: builders of manifests and patches, and readers of a Workload's
status. The reconcile pass (reconcile.py) reads the objects and performs the actions.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from trainingrun_operator.constants import (
    FAILED,
    KUEUE_API_VERSION,
    KUEUE_GROUP,
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
)
from trainingrun_operator.objects import Manifest
from trainingrun_operator.settings import OperatorSettings
from trainingrun_operator.spec import RunSpec
from trainingrun_operator.workload import (
    build_dask_cluster,
    build_driver_job,
    child_metadata,
    labels,
)

POD_SET_DRIVER = "driver"
POD_SET_SCHEDULER = "scheduler"
POD_SET_WORKERS = "workers"
# Eviction reasons after which Kueue puts the Workload back in its queue by itself
# (what Kueue's job framework does: Requeued=True only for these).
REQUEUED_REASONS = frozenset({"Preempted", "NodeFailures"})


def queue_name(body: Mapping[str, Any]) -> str | None:
    """The LocalQueue the run asks for (its `kueue.x-k8s.io/queue-name` label), if any."""
    value = (body.get("metadata", {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)
    return str(value) if value else None


def priority_class_name(body: Mapping[str, Any]) -> str | None:
    """The WorkloadPriorityClass the run asks for (`kueue.x-k8s.io/priority-class`), if any."""
    value = (body.get("metadata", {}).get("labels") or {}).get(KUEUE_PRIORITY_LABEL)
    return str(value) if value else None


def workload_name(run: RunSpec) -> str:
    """Name of the run's Workload (Kueue's own integrations use `<kind>-<name>`)."""
    return f"trainingrun-{run.name}"


def build_workload(
    run: RunSpec,
    settings: OperatorSettings,
    queue: str,
    priority_class: str | None = None,
    priority: int | None = None,
) -> Manifest:
    """The Workload of the run: one pod set per role, with the pods the run would create.

    The templates are exactly those of the DaskCluster and the driver Job, so the quota
    Kueue reserves is what the pods request. `priority` is the WorkloadPriorityClass's value
    (Kueue's webhook fills it in for its own integrations; the operator does it here).
    """
    cluster = build_dask_cluster(run, settings)["spec"]
    driver = build_driver_job(run, settings)["spec"]["template"]
    pod_sets = [
        {"name": POD_SET_DRIVER, "count": 1, "template": driver},
        {"name": POD_SET_SCHEDULER, "count": 1,
         "template": {"metadata": {"labels": labels(run, "dask")},
                      "spec": cluster["scheduler"]["spec"]}},
        {"name": POD_SET_WORKERS, "count": run.workers,
         "template": {"metadata": {"labels": labels(run, "dask")},
                      "spec": cluster["worker"]["spec"]}},
    ]  # fmt: skip
    spec: dict[str, Any] = {"queueName": queue, "podSets": pod_sets, "active": not run.suspend}
    if priority_class is not None:
        spec["priorityClassRef"] = {
            "group": KUEUE_GROUP, "kind": "WorkloadPriorityClass", "name": priority_class,
        }  # fmt: skip
        spec["priority"] = priority
    return {
        "apiVersion": KUEUE_API_VERSION,
        "kind": "Workload",
        "metadata": child_metadata(run, workload_name(run), "workload"),
        "spec": spec,
    }


def _condition(workload: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The Workload's condition of type `kind`, whatever its status."""
    for condition in (workload.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            found: Mapping[str, Any] = condition
            return found
    return None


def _is_true(workload: Mapping[str, Any], kind: str) -> bool:
    """True when the Workload's condition `kind` is True."""
    condition = _condition(workload, kind)
    return condition is not None and condition.get("status") == "True"


@dataclasses.dataclass(frozen=True)
class Admission:
    """What the run's Workload says, as far as the run may run or must wait."""

    # Kueue admitted the whole run (quota reserved, admission checks passed), not evicted.
    admitted: bool
    # Kueue evicted or preempted the run: its pods must go before the quota is handed back.
    evicted: bool
    # Quota is still reserved for the run (status.admission is set).
    reserved: bool
    finished: bool
    # Kueue's reason and message: why the run waits, or why it was evicted.
    reason: str
    message: str


def read_admission(workload: Mapping[str, Any] | None, queue: str) -> Admission:
    """Sum up the Workload's status (None: not created yet)."""
    if workload is None:
        return Admission(False, False, False, False, "CreatingWorkload",
                         f"creating the Kueue Workload in LocalQueue {queue}")  # fmt: skip
    status: Mapping[str, Any] = workload.get("status") or {}
    reserved = status.get("admission") is not None
    finished = _is_true(workload, "Finished")
    if _is_true(workload, "Evicted"):
        evicted = _condition(workload, "Evicted") or {}
        reason = str(evicted.get("reason") or "Evicted")
        message = f"evicted by Kueue: {evicted.get('message') or reason}"
        return Admission(False, True, reserved, finished, reason, message)
    if _is_true(workload, "Admitted") and reserved:
        message = f"admitted by Kueue in ClusterQueue {status['admission'].get('clusterQueue')}"
        return Admission(True, False, True, finished, "Admitted", message)
    # Waiting: the most telling of Kueue's conditions (QuotaReserved False carries the
    # scheduler's "couldn't assign flavors ..." message; Admitted False says which checks).
    for kind in ("QuotaReserved", "Admitted"):
        waiting = _condition(workload, kind)
        if waiting is not None and waiting.get("status") == "False":
            reason = str(waiting.get("reason") or "Pending")
            message = f"queued in LocalQueue {queue}: {waiting.get('message') or reason}"
            return Admission(False, False, reserved, finished, reason, message)
    message = f"queued in LocalQueue {queue}: waiting for Kueue"
    return Admission(False, False, reserved, finished, "Pending", message)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the admitted flavors (and admission checks) put the pods of one pod set."""

    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class QueueState:
    """The run's place in Kueue, as read in one pass."""

    queue: str
    workload: Manifest | None
    priority_class: str | None = None
    # The priority class's value, read only until the Workload exists; None: not found.
    priority: int | None = None

    @property
    def admission(self) -> Admission:
        """What the Workload says; a missing priority class keeps the run from being queued."""
        if self.workload is None and self.priority_class and self.priority is None:
            return Admission(False, False, False, False, "PriorityClassNotFound",
                             f"WorkloadPriorityClass {self.priority_class} (label "
                             f"{KUEUE_PRIORITY_LABEL}) does not exist: create it or fix the "
                             "label")  # fmt: skip
        return read_admission(self.workload, self.queue)

    @property
    def may_create(self) -> bool:
        """True when the Workload is missing and can be made now."""
        return self.workload is None and not (self.priority_class and self.priority is None)


def flavor_names(workload: Mapping[str, Any]) -> set[str]:
    """The ResourceFlavors the admission assigned, over every pod set and resource."""
    admission: Mapping[str, Any] = (workload.get("status") or {}).get("admission") or {}
    return {
        str(flavor)
        for assignment in admission.get("podSetAssignments") or []
        for flavor in (assignment.get("flavors") or {}).values()
    }


def placements(
    workload: Mapping[str, Any], flavors: Mapping[str, Mapping[str, Any]]
) -> dict[str, Placement]:
    """Pod set name -> its placement: the assigned flavors' nodeLabels and tolerations, then
    what admission checks added (status.admissionChecks[].podSetUpdates), as Kueue's job
    framework applies them to the pods of its own integrations.
    """
    status: Mapping[str, Any] = workload.get("status") or {}
    selectors: dict[str, dict[str, str]] = {}
    tolerations: dict[str, list[Mapping[str, Any]]] = {}
    for assignment in (status.get("admission") or {}).get("podSetAssignments") or []:
        name = str(assignment["name"])
        selector = selectors.setdefault(name, {})
        added = tolerations.setdefault(name, [])
        for flavor_name in sorted(set((assignment.get("flavors") or {}).values())):
            flavor: Mapping[str, Any] = flavors.get(flavor_name, {}).get("spec") or {}
            selector.update(flavor.get("nodeLabels") or {})
            added += [t for t in flavor.get("tolerations") or [] if t not in added]
    for check in status.get("admissionChecks") or []:
        for update in check.get("podSetUpdates") or []:
            name = str(update["name"])
            selectors.setdefault(name, {}).update(update.get("nodeSelector") or {})
            added = tolerations.setdefault(name, [])
            added += [t for t in update.get("tolerations") or [] if t not in added]
    return {
        name: Placement(selectors.get(name, {}), tuple(tolerations.get(name, [])))
        for name in selectors.keys() | tolerations.keys()
    }


def _place(pod_spec: dict[str, Any], placement: Placement | None) -> None:
    """Add the placement's node selector and tolerations to a pod spec (in place)."""
    if placement is None:
        return
    if placement.node_selector:
        pod_spec["nodeSelector"] = {**pod_spec.get("nodeSelector", {}), **placement.node_selector}
    existing = pod_spec.get("tolerations", [])
    added = [dict(t) for t in placement.tolerations if t not in existing]
    if added:
        pod_spec["tolerations"] = [*existing, *added]


def place_cluster(cluster: Manifest, placed: Mapping[str, Placement]) -> Manifest:
    """The DaskCluster with its scheduler and workers placed as admitted."""
    _place(cluster["spec"]["scheduler"]["spec"], placed.get(POD_SET_SCHEDULER))
    _place(cluster["spec"]["worker"]["spec"], placed.get(POD_SET_WORKERS))
    return cluster


def place_job(job: Manifest, placed: Mapping[str, Placement]) -> Manifest:
    """The driver Job with its pod placed as admitted."""
    _place(job["spec"]["template"]["spec"], placed.get(POD_SET_DRIVER))
    return job


def _set_condition(
    conditions: list[Manifest], kind: str, true: bool, reason: str, message: str,
    generation: int, now: str,
) -> list[Manifest]:  # fmt: skip
    """`conditions` with `kind` set; lastTransitionTime moves only when its status does."""
    status = "True" if true else "False"
    old = next((c for c in conditions if c.get("type") == kind), None)
    moved = old is None or old.get("status") != status
    since = now if moved or old is None else old["lastTransitionTime"]
    new = {"type": kind, "status": status, "reason": reason, "message": message[:32768],
           "observedGeneration": generation, "lastTransitionTime": since}  # fmt: skip
    return [*(c for c in conditions if c.get("type") != kind), new]


def _now_text(now: datetime.datetime) -> str:
    """RFC 3339 in UTC, second precision."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def release_patch(workload: Mapping[str, Any], now: datetime.datetime) -> Manifest:
    """Status merge patch that hands an evicted run's quota back once its pods are gone.

    What Kueue's job framework does after stopping an evicted job: QuotaReserved False
    (reason Pending), admission cleared, Admitted False, and Requeued True when Kueue
    requeues by itself (preemption, node failures). The resourceVersion makes it fail
    with a conflict rather than overwrite a status Kueue changed meanwhile.
    """
    evicted = _condition(workload, "Evicted") or {}
    reason = str(evicted.get("reason") or "Evicted")
    message = str(evicted.get("message") or "evicted")
    generation = int(workload["metadata"].get("generation", 1))
    stamp = _now_text(now)
    conditions = list((workload.get("status") or {}).get("conditions") or [])
    conditions = _set_condition(conditions, "Requeued", reason in REQUEUED_REASONS, reason,
                                message, generation, stamp)  # fmt: skip
    conditions = _set_condition(conditions, "QuotaReserved", False, "Pending", message,
                                generation, stamp)  # fmt: skip
    conditions = _set_condition(conditions, "Admitted", False, "NoReservation",
                                "The workload has no reservation", generation, stamp)  # fmt: skip
    return {
        "metadata": {"resourceVersion": workload["metadata"]["resourceVersion"]},
        "status": {"admission": None, "conditions": conditions},
    }


def finish_patch(workload: Mapping[str, Any], phase: str, message: str,
                 now: datetime.datetime) -> Manifest:  # fmt: skip
    """Status merge patch marking the Workload Finished: Kueue releases its quota at once."""
    generation = int(workload["metadata"].get("generation", 1))
    reason = "Failed" if phase == FAILED else "Succeeded"
    conditions = list((workload.get("status") or {}).get("conditions") or [])
    conditions = _set_condition(conditions, "Finished", True, reason, message or reason,
                                generation, _now_text(now))  # fmt: skip
    return {
        "metadata": {"resourceVersion": workload["metadata"]["resourceVersion"]},
        "status": {"conditions": conditions},
    }
