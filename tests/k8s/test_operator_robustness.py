"""What a busy, shared or changing cluster does to runs: queueing, capacity, re-created names,
edits, and a second kopf operator (the Dask controller) beside ours.

The real operator and the real dask-kubernetes controller run under their RBAC; the test
plays kubelet and kube-scheduler (pod phases, and "Insufficient cpu" for a pod no node fits).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from .conftest import OperatorProcess
from .controlplane import ControlPlane
from .kubelet import (
    dask_cluster,
    eventually,
    get,
    items,
    job_pods,
    set_phase,
    set_unschedulable,
)
from .test_operator_crd import training_run
from .test_operator_lifecycle import (
    WAIT_S,
    dask_pods,
    phases,
    run_events,
    start_dask,
    status,
    wait_phase,
    wait_workload,
)

pytestmark = pytest.mark.k8s

INSUFFICIENT_CPU = "0/1 nodes are available: 1 Insufficient cpu."
KOPF_DEFAULT_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def test_a_busy_cluster_makes_runs_wait_not_fail(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """No room for the Dask pods: Pending with the scheduler's reason, no driver, no retry
    spent; a second run waits for the first to start; both then run."""
    plane = pulse_install
    plane.apply(training_run(namespace, "first"))
    scheduler = eventually(
        lambda: dask_pods(plane, namespace, "scheduler", "first"), WAIT_S, "scheduler pod"
    )[0]
    plane.apply(training_run(namespace, "second"))
    set_unschedulable(plane, scheduler, INSUFFICIENT_CPU)

    def says_why() -> dict[str, Any] | None:
        current = status(plane, namespace, "first")
        return current if INSUFFICIENT_CPU in current.get("message", "") else None

    waiting = eventually(says_why, WAIT_S, "the scheduler's reason in status.message")
    assert waiting["phase"] == "Pending"
    warnings = [e for e in run_events(plane, namespace, "first") if e["type"] == "Warning"]
    assert any(INSUFFICIENT_CPU in e["message"] for e in warnings)
    second = eventually(
        lambda: f"{namespace}/first" in status(plane, namespace, "second").get("message", ""),
        WAIT_S,
        "the second run to wait for the first",
    )
    assert second
    time.sleep(3)  # several resync passes (1 s): nothing may start meanwhile
    assert get(plane, "job", "first-driver", namespace) is None, "no driver while Dask waits"
    second_cluster = dask_cluster(plane, namespace, "second")
    assert get(plane, "daskcluster", second_cluster, namespace) is None, "one starts at a time"

    driver = wait_workload(plane, namespace, "first")  # capacity freed: its pods run
    set_phase(plane, driver, "Running")
    assert wait_phase(plane, namespace, "Running", "first")["attempts"] == 1
    second_driver = wait_workload(plane, namespace, "second")
    set_phase(plane, second_driver, "Running")
    wait_phase(plane, namespace, "Running", "second")
    for name in ("first", "second"):
        set_phase(plane, job_pods(plane, namespace, f"{name}-driver")[-1], "Succeeded")
        done = wait_phase(plane, namespace, "Succeeded", name)
        assert done["attempts"] == 1, "waiting cost no retry"


def test_a_recreated_run_never_adopts_the_old_runs_children(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """Delete a Succeeded run and apply the same name at once: the new run starts afresh."""
    plane = pulse_install
    old = plane.apply(training_run(namespace))
    set_phase(plane, wait_workload(plane, namespace), "Succeeded")
    wait_phase(plane, namespace, "Succeeded")
    # Hold the old Job while the garbage collector deletes it, so the new run must meet it.
    plane.kubectl("patch", "job", "run-driver", f"--namespace={namespace}", "--type=merge",
                  '--patch={"metadata": {"finalizers": ["pulse.dev/test-hold"]}}')  # fmt: skip
    plane.kubectl("delete", "trainingrun", "run", f"--namespace={namespace}")
    new = plane.apply(training_run(namespace))
    assert new["metadata"]["uid"] != old["metadata"]["uid"]

    def waits_for_old_job() -> dict[str, Any] | None:
        current = status(plane, namespace)
        return current if "earlier run" in current.get("message", "") else None

    waiting = eventually(waits_for_old_job, WAIT_S, "the new run to wait for the old Job")
    assert waiting["phase"] == "Pending"
    assert "startTime" not in waiting and "completionTime" not in waiting
    plane.kubectl("patch", "job", "run-driver", f"--namespace={namespace}", "--type=merge",
                  '--patch={"metadata": {"finalizers": null}}')  # fmt: skip

    start_dask(plane, namespace)

    def new_job() -> dict[str, Any] | None:
        job = get(plane, "job", "run-driver", namespace)
        owners = (job or {"metadata": {}})["metadata"].get("ownerReferences", [])
        return job if owners and owners[0]["uid"] == new["metadata"]["uid"] else None

    job = eventually(new_job, WAIT_S, "the new run's own Job")
    selector = f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"
    pod = eventually(lambda: items(plane, "pods", namespace, selector), WAIT_S, "its pod")[0]
    set_phase(plane, pod, "Running")
    running = wait_phase(plane, namespace, "Running")
    assert running["startTime"] >= new["metadata"]["creationTimestamp"]
    reasons = [e["reason"] for e in run_events(plane, namespace, uid=new["metadata"]["uid"])]
    assert "Succeeded" not in reasons


def test_edits_reach_the_running_run(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """dask.workers scales the workers; activeDeadlineSeconds and backoffLimit reach the Job."""
    plane = pulse_install
    plane.apply(training_run(namespace, dask={"workers": 1}))
    set_phase(plane, wait_workload(plane, namespace), "Running")
    wait_phase(plane, namespace, "Running")

    plane.apply(training_run(namespace, dask={"workers": 3}, activeDeadlineSeconds=3600,
                             backoffLimit=5))  # fmt: skip
    eventually(lambda: len(dask_pods(plane, namespace, "worker")) == 3, WAIT_S, "three worker pods")

    def job_updated() -> bool:
        job = get(plane, "job", "run-driver", namespace) or {"spec": {}}
        return (job["spec"].get("activeDeadlineSeconds"), job["spec"].get("backoffLimit")) == (
            3600,
            5,
        )

    eventually(job_updated, WAIT_S, "the Job's deadline and retry limit")
    assert status(plane, namespace)["observedGeneration"] == 2


def test_the_operator_leaves_the_dask_controllers_finalizer_alone(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """Two kopf operators: ours uses its own finalizer name and never touches the other's."""
    plane = pulse_install
    plane.apply(training_run(namespace))
    start_dask(plane, namespace)

    def finalized_cluster() -> dict[str, Any] | None:
        found = get(plane, "daskcluster", dask_cluster(plane, namespace), namespace)
        held = found is not None and KOPF_DEFAULT_FINALIZER in found["metadata"].get(
            "finalizers", []
        )
        return found if held else None

    cluster = eventually(
        finalized_cluster, WAIT_S, "the Dask controller's finalizer on the DaskCluster"
    )
    time.sleep(3)  # several passes of our operator (resync 1 s) over the run and its cluster
    again = get(plane, "daskcluster", cluster["metadata"]["name"], namespace)
    assert again is not None, "the DaskCluster went away"
    assert KOPF_DEFAULT_FINALIZER in again["metadata"].get("finalizers", []), again["metadata"]
    assert again["metadata"]["uid"] == cluster["metadata"]["uid"], "the DaskCluster was replaced"
    log = pulse_operator.log_path.read_text()
    # kopf's own words when it acts on a finalizer, and any patch of metadata.finalizers.
    acting = ("Adding the finalizer", "Removing the finalizer", "'finalizers'")
    mentions = [line for line in log.splitlines() if any(word in line for word in acting)]
    assert not mentions, f"our operator must not add or remove finalizers: {mentions[:3]}"
    run = get(plane, "trainingrun", "run", namespace)
    assert run is not None and not run["metadata"].get("finalizers"), run
    assert phases(plane, namespace)[:1] == ["Pending"], phases(plane, namespace)


def test_uninstall_deletes_the_runs_and_waits_for_their_dask_clusters(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """What the chart's pre-delete hook runs, under the operator's own RBAC: nothing is left."""
    from trainingrun_operator.constants import DEFAULT_NAMESPACE, OPERATOR_NAME

    plane = pulse_install
    plane.apply(training_run(namespace))
    set_phase(plane, wait_workload(plane, namespace), "Running")
    wait_phase(plane, namespace, "Running")
    cluster = dask_cluster(plane, namespace)
    kubeconfig = plane.kubeconfig_for_service_account(DEFAULT_NAMESPACE, OPERATOR_NAME)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PULSE_OPERATOR_NAMESPACES": namespace}
    result = subprocess.run(
        [sys.executable, "-m", "trainingrun_operator.uninstall", "--timeout-seconds=60"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert get(plane, "trainingrun", "run", namespace) is None
    assert get(plane, "daskcluster", cluster, namespace) is None
