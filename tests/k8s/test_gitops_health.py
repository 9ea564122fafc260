"""GitOps tools read TrainingRun health right: the real kstatus library and Argo CD's Lua check.

kstatus is sigs.k8s.io/cli-utils' own `status.Compute` (what Flux's kustomize-controller and
kpt call), compiled by hack/kstatus.sh from the Go module proxy; the Argo CD check is the
Lua script the docs ship (docs/gitops/trainingrun-health.lua), run by a real Lua
interpreter (lupa) the way Argo CD runs it: `obj` a global, the returned table the health.
Both read the same objects, fetched from the API server while the real operator drives the
runs (the test plays kubelet, as in test_operator_lifecycle.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO_ROOT, OperatorProcess, unavailable
from .controlplane import ControlPlane
from .kubelet import get, set_phase
from .test_operator_crd import training_run
from .test_operator_lifecycle import wait_phase, wait_workload

pytestmark = pytest.mark.k8s

ARGO_HEALTH_LUA = REPO_ROOT / "docs" / "gitops" / "trainingrun-health.lua"


@pytest.fixture(scope="session")
def kstatus() -> Path:
    """The kstatus binary; built by hack/kstatus.sh on first use (a few minutes, then cached)."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "kstatus.sh")],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    if result.returncode != 0:
        unavailable(f"hack/kstatus.sh cannot build kstatus: {result.stderr.strip()[-500:]}")
    return Path(result.stdout.strip())


def kstatus_of(binary: Path, obj: dict[str, Any]) -> str:
    """What kstatus computes for `obj`: InProgress, Current, Failed, ..."""
    result = subprocess.run(
        [str(binary)], input=json.dumps(obj), capture_output=True, text=True, check=True
    )
    computed = json.loads(result.stdout)
    print(f"kstatus of {obj['metadata']['name']}: {computed}")  # shown when the test fails
    status: str = computed["status"]
    return status


def argo_health_of(obj: dict[str, Any]) -> str:
    """What the shipped Argo CD Lua health check returns for `obj`."""
    lupa = pytest.importorskip("lupa")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    health = lua.execute(ARGO_HEALTH_LUA.read_text())
    assert health["message"] is not None
    status: str = health["status"]
    return status


def health(plane: ControlPlane, kstatus: Path, namespace: str, name: str) -> tuple[str, str]:
    """(kstatus, Argo CD) health of the run as stored now."""
    run = get(plane, "trainingrun", name, namespace)
    assert run is not None
    return kstatus_of(kstatus, run), argo_health_of(run)


def test_gitops_tools_read_running_succeeded_failed_and_suspended_runs(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str, kstatus: Path
) -> None:
    """InProgress/Progressing while a run starts and runs, Current/Healthy once it succeeded,
    Failed/Degraded once it failed, Current/Suspended while suspended."""
    plane = pulse_install
    plane.apply(training_run(namespace, name="good"))
    pod = wait_workload(plane, namespace, "good")
    wait_phase(plane, namespace, "Provisioning", "good")
    assert health(plane, kstatus, namespace, "good") == ("InProgress", "Progressing")
    set_phase(plane, pod, "Running")
    wait_phase(plane, namespace, "Running", "good")
    assert health(plane, kstatus, namespace, "good") == ("InProgress", "Progressing")
    set_phase(plane, pod, "Succeeded")
    wait_phase(plane, namespace, "Succeeded", "good")
    assert health(plane, kstatus, namespace, "good") == ("Current", "Healthy")
    # The Job-like condition scripts wait on is still there.
    plane.kubectl("wait", "--for=condition=Complete", "trainingrun/good",
                  f"--namespace={namespace}", "--timeout=10s")  # fmt: skip

    plane.apply(training_run(namespace, name="bad", backoffLimit=0))
    set_phase(plane, wait_workload(plane, namespace, "bad"), "Failed")
    wait_phase(plane, namespace, "Failed", "bad")
    assert health(plane, kstatus, namespace, "bad") == ("Failed", "Degraded")
    plane.kubectl("wait", "--for=condition=Failed", "trainingrun/bad",
                  f"--namespace={namespace}", "--timeout=10s")  # fmt: skip

    plane.apply(training_run(namespace, name="held", suspend=True))
    wait_phase(plane, namespace, "Suspended", "held")
    assert health(plane, kstatus, namespace, "held") == ("Current", "Suspended")

    # A spec the operator has not observed yet reads as in progress, whatever the phase.
    stale = get(plane, "trainingrun", "good", namespace)
    assert stale is not None
    stale["metadata"]["generation"] = stale["status"]["observedGeneration"] + 1
    assert (kstatus_of(kstatus, stale), argo_health_of(stale)) == ("InProgress", "Progressing")
