"""What a reconcile pass reads about a run's children: whose they are, and what their pods show.

A child found under the run's Job or DaskCluster name is the run's only when the run (its
UID) is the child's controller; an earlier run of the same name or a stranger may hold
the name. Pods are summed up only as far as starting the run and explaining a failure
need: are the scheduler and enough workers ready, why is a pod not placed, what did the
last failed driver say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from trainingrun_operator.constants import (
    API_VERSION,
    DASK_LABEL_CLUSTER,
    DASK_LABEL_COMPONENT,
    JOB_LABEL_CONTROLLER_UID,
    KIND,
)
from trainingrun_operator.objects import Manifest


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
    """Sum up the run's pods: those of its DaskCluster and of its driver Job.

    The cluster's name carries the run's UID, so no earlier run's Dask pod has its label.
    """
    alive = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    dask: list[Manifest] = []
    if cluster is not None:
        name = cluster["metadata"]["name"]
        dask = [p for p in alive if p["metadata"].get("labels", {}).get(DASK_LABEL_CLUSTER) == name]

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
