"""The test plays kubelet: it moves pods through their phases by patching pod status.

No node runs pods in the test control plane, so whatever a kubelet would report (a
container started and became ready, exited 0, exited 1) is written here instead; the
real controllers (Job, ReplicaSet, dask-kubernetes, ours) react to it as in a cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .controlplane import ControlPlane

T = TypeVar("T")
NOW = "2026-01-01T00:00:00Z"


def eventually(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def get(plane: ControlPlane, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    result = plane.kubectl(
        "get", kind, name, f"--namespace={namespace}", "--output=json", check=False
    )
    if result.returncode != 0:
        return None
    decoded: dict[str, Any] = json.loads(result.stdout)
    return decoded


def items(plane: ControlPlane, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    """Objects of `kind` matching the label `selector`."""
    listed = plane.kubectl_json("get", kind, f"--namespace={namespace}", f"--selector={selector}")
    found: list[dict[str, Any]] = listed["items"]
    return found


def dask_cluster(plane: ControlPlane, namespace: str, run: str = "run") -> str:
    """The name of the run's DaskCluster, `<run>-dask-<first 8 characters of the run's UID>`
    (a run applied again under its name gets a cluster of another name)."""
    body = get(plane, "trainingrun", run, namespace)
    assert body is not None, f"no TrainingRun {namespace}/{run}"
    return f"{run}-dask-{body['metadata']['uid'][:8]}"


def job_pods(plane: ControlPlane, namespace: str, job: str) -> list[dict[str, Any]]:
    """The pods of a Job, oldest first."""
    pods = items(plane, "pods", namespace, f"batch.kubernetes.io/job-name={job}")
    return sorted(pods, key=lambda pod: pod["metadata"]["creationTimestamp"])


def _container_statuses(pod: dict[str, Any], state: dict[str, Any], ready: bool) -> list[Any]:
    """One status per container of `pod`, all in `state`."""
    return [
        {
            "name": container["name"], "image": container["image"], "imageID": "",
            "ready": ready, "restartCount": 0, "started": ready, "state": state,
        }
        for container in pod["spec"]["containers"]
    ]  # fmt: skip


def set_phase(
    plane: ControlPlane,
    pod: dict[str, Any],
    phase: str,
    message: str = "",
    exit_code: int = 1,
    disrupted: bool = False,
) -> None:
    """Report `pod` as Running (and Ready), Succeeded (exit 0) or Failed (exit `exit_code`).

    `message` is the container's termination message, as a kubelet reads it from the
    container's terminationMessagePath. `disrupted` adds the DisruptionTarget condition
    that the eviction API, preemption or a node drain puts on a pod it takes away.
    """
    if phase == "Running":
        state: dict[str, Any] = {"running": {"startedAt": NOW}}
    else:
        code = 0 if phase == "Succeeded" else exit_code
        reason = "Completed" if code == 0 else "Error"
        state = {
            "terminated": {"exitCode": code, "reason": reason, "startedAt": NOW, "finishedAt": NOW}
        }
        if message:
            state["terminated"]["message"] = message
    ready = phase == "Running"
    flag = "True" if ready else "False"
    conditions = [
        {"type": kind, "status": flag, "lastTransitionTime": NOW}
        for kind in ("Initialized", "ContainersReady", "Ready")
    ]
    if disrupted:
        eviction = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
        conditions.append({**eviction, "lastTransitionTime": NOW})
    status = {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": NOW},
            *conditions,
        ],
        "containerStatuses": _container_statuses(pod, state, ready),
        "startTime": NOW,
    }
    _patch_status(plane, pod, status)


def set_unschedulable(plane: ControlPlane, pod: dict[str, Any], message: str) -> None:
    """Report `pod` as kube-scheduler does when no node has room for it."""
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": message, "lastTransitionTime": NOW}  # fmt: skip
    _patch_status(plane, pod, {"phase": "Pending", "conditions": [condition]})


def _patch_status(plane: ControlPlane, pod: dict[str, Any], status: dict[str, Any]) -> None:
    """Merge-patch the pod's status subresource."""
    meta = pod["metadata"]
    plane.kubectl(
        "patch", "pod", meta["name"], f"--namespace={meta['namespace']}", "--subresource=status",
        "--type=merge", f"--patch={json.dumps({'status': status})}",
    )  # fmt: skip
