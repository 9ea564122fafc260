"""End to end on one machine: the pods the operators created, run as local processes.

The scheduler, worker and driver pod specs made by the operator and the dask-kubernetes
controller are executed with their exact commands, arguments and environment (Kubernetes
``$(VAR)`` expansion and downward-API values resolved as a kubelet would), with the
in-cluster scheduler Service name pointed at 127.0.0.1. The real pipeline runs on a real
Dask cluster, writes its results, and the driver's status patches reach the TrainingRun
in the real API server under the driver ServiceAccount's RBAC.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import OperatorProcess
from .controlplane import ControlPlane, free_port
from .kubelet import eventually, items, job_pods, set_phase
from .test_operator_crd import training_run
from .test_operator_lifecycle import WAIT_S, wait_phase

pytestmark = pytest.mark.k8s

RUN_TIMEOUT_S = 240.0


def container_env(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as a kubelet resolves it (values and downward API)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = pod["metadata"]["namespace"]
        else:
            raise AssertionError(f"the test does not resolve {item}")
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion in commands, args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


class LocalPods:
    """Runs pod containers as local processes; stops them by PID."""

    def __init__(self, log_dir: Path, service_host: str, port: int) -> None:
        """Rewrite `service_host:8786` to 127.0.0.1:`port` in every command and env value."""
        self.log_dir = log_dir
        self.service = re.compile(re.escape(service_host) + r":8786")
        self.port = port
        self.processes: list[subprocess.Popen[bytes]] = []

    def _local(self, text: str) -> str:
        """The in-cluster scheduler address pointed at 127.0.0.1."""
        return self.service.sub(f"127.0.0.1:{self.port}", text)

    def run(
        self, pod: dict[str, Any], extra_env: dict[str, str], args_map: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start the pod's only container with its exact command, args and environment."""
        (container,) = pod["spec"]["containers"]
        env = {key: self._local(value) for key, value in container_env(pod, container).items()}
        argv = [expand(part, env) for part in [*container["command"], *container.get("args", [])]]
        argv = [args_map.get(part, self._local(part)) for part in argv]
        # The image's init (tini) is not on this host; what it runs is the container's work.
        if argv[:2] == ["tini", "--"]:
            argv = argv[2:]
        venv_bin = str(Path(sys.executable).parent)
        process_env = {
            "PATH": f"{venv_bin}:{os.environ['PATH']}",
            "HOME": str(self.log_dir),
            **env,
            **extra_env,
        }
        log = (self.log_dir / f"{pod['metadata']['name']}.log").open("wb")
        process = subprocess.Popen(
            argv, env=process_env, stdout=log, stderr=subprocess.STDOUT, cwd=self.log_dir
        )
        log.close()
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Terminate every started process by its PID, newest first."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def local_pods(tmp_path: Path, namespace: str) -> Iterator[LocalPods]:
    """A LocalPods for the run "run" of the test namespace."""
    pods = LocalPods(tmp_path, f"run-dask-scheduler.{namespace}.svc.cluster.local", free_port())
    yield pods
    pods.stop()


def one_pod(plane: ControlPlane, namespace: str, selector: str) -> dict[str, Any]:
    """Wait for the first pod matching `selector`."""
    return eventually(lambda: items(plane, "pods", namespace, selector), WAIT_S, selector)[0]


def test_the_created_pods_run_the_real_pipeline_and_report_to_the_run(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str,
    local_pods: LocalPods, tmp_path: Path,
) -> None:  # fmt: skip
    """A synthetic run goes to Succeeded with the results and progress the pipeline wrote."""
    plane = pulse_install
    output = tmp_path / "output"
    plane.apply(training_run(
        namespace, data={"uri": "builtin:synthetic?n_variables=3&years=6&seed=3"},
        output={"uri": str(output)}, batchSizeDays=365, dask={"workers": 1},
    ))  # fmt: skip
    cluster = "dask.org/cluster-name=run-dask"
    scheduler = one_pod(plane, namespace, f"{cluster},dask.org/component=scheduler")
    worker = one_pod(plane, namespace, f"{cluster},dask.org/component=worker")
    driver = eventually(lambda: job_pods(plane, namespace, "run-driver"), WAIT_S, "driver pod")[0]
    driver_kubeconfig = plane.kubeconfig_for_service_account(namespace, "pulse-trainingrun-driver")

    dashboard = {"--dashboard-address=:8787": f"--dashboard-address=127.0.0.1:{free_port()}"}
    port = {"--port=8786": f"--port={local_pods.port}"}
    local_pods.run(scheduler, {}, {**dashboard, **port})
    set_phase(plane, scheduler, "Running")
    local_pods.run(worker, {}, {})
    set_phase(plane, worker, "Running")
    process = local_pods.run(driver, {"KUBECONFIG": str(driver_kubeconfig)}, {})
    set_phase(plane, driver, "Running")
    wait_phase(plane, namespace, "Running")

    assert process.wait(RUN_TIMEOUT_S) == 0, (
        tmp_path / f"{driver['metadata']['name']}.log"
    ).read_text()
    set_phase(plane, driver, "Succeeded")
    done = wait_phase(plane, namespace, "Succeeded")

    document = json.loads((output / "results.json").read_text())
    headline = document["metrics"]["headline"]
    assert done["results"]["uri"] == str(output / "results.json")
    assert done["results"]["meanSkillVsPersistence"] == pytest.approx(
        headline["mean_skill_vs_persistence"]
    )
    assert done["results"]["meanDirectionalAccuracy"] == pytest.approx(
        headline["mean_directional_accuracy"]
    )
    assert (done["results"]["rulesValidated"], done["results"]["rulesTotal"]) == (
        headline["rules_validated"], headline["rules_total"],
    )  # fmt: skip
    # The last stage evaluates every batch that had enough training data before it.
    progress = done["progress"]
    assert progress["stage"] == "evaluation"
    assert (
        0 < progress["batchesCompleted"] == progress["batchesTotal"] <= document["data"]["batches"]
    )
    assert (
        progress["summary"] == f"evaluation {progress['batchesTotal']}/{progress['batchesTotal']}"
    )
    assert any((output / "checkpoints").rglob("*.npz")), "the driver passed --checkpoint-dir"
