"""The driver Job's pod failure policy, applied by the real Job controller.

A driver pod the cluster took away (DisruptionTarget: eviction, preemption, node drain)
costs no retry; a driver that exits 3 (the pipeline recorded a bad input, which a retry
would meet again) fails the run at once, whatever backoffLimit allows. The test plays
kubelet as in test_operator_lifecycle.py; the driver's exit statuses are the real
driver's (tests/unit/test_driver_signals.py runs it on the real pipeline).
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import OperatorProcess
from .controlplane import ControlPlane
from .kubelet import eventually, job_pods, set_phase
from .test_operator_crd import training_run
from .test_operator_lifecycle import WAIT_S, condition, wait_phase, wait_workload

pytestmark = pytest.mark.k8s


def test_a_disrupted_driver_costs_no_retry_and_a_bad_input_fails_at_once(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """backoffLimit 1: an evicted pod is replaced without using it; exit 3 then fails the
    run after that one real attempt, not after a second."""
    plane = pulse_install
    plane.apply(training_run(namespace, backoffLimit=1))
    evicted = wait_workload(plane, namespace)
    set_phase(plane, evicted, "Running")
    wait_phase(plane, namespace, "Running")
    set_phase(plane, evicted, "Failed", exit_code=137, disrupted=True)

    def replacement() -> dict[str, Any] | None:
        """The Job's second pod, once it exists."""
        pods = job_pods(plane, namespace, "run-driver")
        return pods[-1] if len(pods) == 2 else None

    second = eventually(replacement, WAIT_S, "the evicted pod's replacement")
    job = plane.kubectl_json("get", "job", "run-driver", f"--namespace={namespace}")
    assert job["status"].get("failed", 0) == 0, "an evicted pod counted as a failure"

    set_phase(plane, second, "Running")
    set_phase(plane, second, "Failed", message="data.csv: no such file", exit_code=3)
    failed = wait_phase(plane, namespace, "Failed")
    assert condition(failed, "Failed")["reason"] == "PodFailurePolicy"
    assert failed["message"].startswith("data.csv: no such file (")
    assert len(job_pods(plane, namespace, "run-driver")) == 2, "a bad input was retried"
    assert condition(failed, "Stalled")["status"] == "True"
