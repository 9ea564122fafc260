"""End to end on one machine: the pods the operators created, run as local processes.

The scheduler, worker and driver pod specs made by the operator and the dask-kubernetes
controller are executed with their exact commands, arguments and environment (Kubernetes
``$(VAR)`` expansion and downward-API values resolved as a kubelet would), with the
in-cluster scheduler Service name pointed at 127.0.0.1 and Secret volumes (the run's Dask
TLS files) read from the API server and mounted as a kubelet would. The real pipeline runs
on a real Dask cluster, over mutual TLS, writes its results, and the driver's status
patches reach the TrainingRun in the real API server under the driver's own RBAC.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trainingrun_operator.workload import DASK_INIT, INIT

from .conftest import OperatorProcess
from .controlplane import ControlPlane, free_port
from .kubelet import dask_cluster, eventually, items, job_pods, set_phase
from .test_operator_crd import training_run
from .test_operator_lifecycle import WAIT_S, status, wait_phase

pytestmark = pytest.mark.k8s

RUN_TIMEOUT_S = 240.0


SecretReader = Callable[[str], dict[str, str]]


def container_env(
    pod: dict[str, Any], container: dict[str, Any], secret: SecretReader | None = None
) -> dict[str, str]:
    """The container's environment as a kubelet resolves it (envFrom Secrets, values, the
    downward API, secretKeyRef); `secret(name)` reads a Secret's decoded data."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if secret is None or "secretRef" not in source:
            raise AssertionError(f"the test does not resolve {source}")
        env.update(secret(source["secretRef"]["name"]))
    for item in container.get("env", []):
        reference = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        elif reference.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = pod["metadata"]["namespace"]
        elif secret is not None and "secretKeyRef" in reference:
            key = reference["secretKeyRef"]
            data = secret(key["name"])
            if key["key"] in data:
                env[item["name"]] = data[key["key"]]
            elif not key.get("optional"):
                raise AssertionError(f"a kubelet would not start the pod: {item} is missing")
        else:
            raise AssertionError(f"the test does not resolve {item}")
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion in commands, args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


class LocalPods:
    """Runs pod containers as local processes; stops them by PID."""

    def __init__(
        self, log_dir: Path, run: str, port: int, plane: ControlPlane, namespace: str
    ) -> None:
        """Rewrite the scheduler address of `run` (its Service, named after the run and its
        UID) to 127.0.0.1:`port` in every command and env value; Secret volumes are read
        from `plane` as a kubelet does and written under `log_dir`."""
        self.log_dir = log_dir
        host = rf"{re.escape(run)}-dask-[0-9a-f]{{8}}-scheduler\.{re.escape(namespace)}"
        self.service = re.compile(host + r"\.svc\.cluster\.local:8786")
        self.port = port
        self.plane = plane
        self.namespace = namespace
        self.mounts: dict[str, str] = {}
        self.processes: list[subprocess.Popen[bytes]] = []

    def _local(self, text: str) -> str:
        """The in-cluster scheduler address pointed at 127.0.0.1, mount paths at local copies."""
        text = self.service.sub(f"127.0.0.1:{self.port}", text)
        for mount_path, folder in self.mounts.items():
            text = text.replace(mount_path, folder)
        return text

    def _secret(self, name: str) -> dict[str, str]:
        """The Secret `name`'s data, decoded, as a kubelet hands it to a container."""
        found = self.plane.kubectl_json("get", "secret", name, f"--namespace={self.namespace}")
        return {key: base64.b64decode(value).decode() for key, value in found["data"].items()}

    def _mount_secrets(self, pod: dict[str, Any], container: dict[str, Any]) -> None:
        """Write the pod's Secret volumes to local folders, as the kubelet would mount them."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            secret = volumes[mount["name"]].get("secret")
            if secret is None:
                continue
            found = self.plane.kubectl_json(
                "get", "secret", secret["secretName"], f"--namespace={self.namespace}"
            )
            folder = self.log_dir / "volumes" / pod["metadata"]["name"] / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for key, value in found["data"].items():
                (folder / key).write_bytes(base64.b64decode(value))
            self.mounts[mount["mountPath"]] = str(folder)

    def run(
        self, pod: dict[str, Any], extra_env: dict[str, str], args_map: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start the pod's only container with its exact command, args and environment."""
        (container,) = pod["spec"]["containers"]
        self._mount_secrets(pod, container)
        resolved = container_env(pod, container, self._secret)
        env = {key: self._local(value) for key, value in resolved.items()}
        argv = [expand(part, env) for part in [*container["command"], *container.get("args", [])]]
        argv = [args_map.get(part, self._local(part)) for part in argv]
        # The image's init (tini, and the Dask pods' `timeout`) need not be on this host, and
        # a stopped `timeout` would leave its group behind: what it runs is the container's work.
        for init in (DASK_INIT, INIT):
            if tuple(argv[: len(init)]) == init:
                argv = argv[len(init) :]
                break
        venv_bin = str(Path(sys.executable).parent)
        process_env = {
            "PATH": f"{venv_bin}:{os.environ['PATH']}",
            "HOME": str(self.log_dir),
            # The code under test, when the tests run it from a source tree.
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
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
def local_pods(tmp_path: Path, namespace: str, pulse_install: ControlPlane) -> Iterator[LocalPods]:
    """A LocalPods for the run "run" of the test namespace."""
    pods = LocalPods(tmp_path, "run", free_port(), pulse_install, namespace)
    yield pods
    pods.stop()


def one_pod(plane: ControlPlane, namespace: str, selector: str) -> dict[str, Any]:
    """Wait for the first pod matching `selector`."""
    return eventually(lambda: items(plane, "pods", namespace, selector), WAIT_S, selector)[0]


def start_local_dask(plane: ControlPlane, namespace: str, local_pods: LocalPods) -> None:
    """Run the DaskCluster's scheduler and worker pods here and report them Running."""
    cluster = f"dask.org/cluster-name={dask_cluster(plane, namespace)}"
    scheduler = one_pod(plane, namespace, f"{cluster},dask.org/component=scheduler")
    worker = one_pod(plane, namespace, f"{cluster},dask.org/component=worker")
    dashboard = {"--dashboard-address=:8787": f"--dashboard-address=127.0.0.1:{free_port()}"}
    port = {"--port=8786": f"--port={local_pods.port}"}
    local_pods.run(scheduler, {}, {**dashboard, **port})
    set_phase(plane, scheduler, "Running")
    local_pods.run(worker, {}, {})
    set_phase(plane, worker, "Running")


def driver_pod(plane: ControlPlane, namespace: str) -> dict[str, Any]:
    """The driver's pod, which exists once the Dask cluster runs."""
    return eventually(lambda: job_pods(plane, namespace, "run-driver"), WAIT_S, "driver pod")[0]


def synthetic_run(namespace: str, output: Path, **spec: Any) -> dict[str, Any]:
    """A small synthetic run on one worker, its results in `output`."""
    return training_run(
        namespace, data={"uri": "builtin:synthetic?n_variables=3&years=6&seed=3"},
        output={"uri": str(output)}, batchSizeDays=365, dask={"workers": 1}, **spec,
    )  # fmt: skip


def test_the_created_pods_run_the_real_pipeline_and_report_to_the_run(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str,
    local_pods: LocalPods, tmp_path: Path,
) -> None:  # fmt: skip
    """A synthetic run goes to Succeeded with the results and progress the pipeline wrote."""
    plane = pulse_install
    output = tmp_path / "output"
    plane.apply(synthetic_run(namespace, output))
    start_local_dask(plane, namespace, local_pods)
    driver = driver_pod(plane, namespace)
    driver_kubeconfig = plane.kubeconfig_for_service_account(namespace, "run-driver")
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


class CuttableProxy:
    """A TCP relay to the API server that the test can cut and restore, as a restart would.

    Cut: the listening socket and every relayed connection close, so the driver's calls
    fail with connection errors (refused, reset) exactly as while an API server restarts.
    """

    def __init__(self, target_port: int) -> None:
        """Relay 127.0.0.1:<port> to 127.0.0.1:`target_port`; not listening until restore()."""
        self.target_port = target_port
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()

    def restore(self) -> None:
        """Listen (again) and relay every new connection."""
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and close every relayed connection."""
        with self.lock:
            doomed, self.connections = self.connections, []
        if self.listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not, and
            # the socket would go on accepting until that call returned.
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        for connection in doomed:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept(self, listener: socket.socket) -> None:
        """Relay connections until the listener is closed."""
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.connections += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        """Copy bytes one way until either side closes."""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def test_a_run_that_finishes_while_the_api_server_is_unreachable_reports_success(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str,
    local_pods: LocalPods, tmp_path: Path,
) -> None:  # fmt: skip
    """Reporting is best effort: the driver outlives the outage and reports once it is over.

    The driver reaches the API server through a relay that is cut after its first
    progress report and restored only after the pipeline wrote its results: its patches
    fail with connection errors meanwhile, and it must neither die nor exit non-zero.
    """
    plane = pulse_install
    output = tmp_path / "output"
    plane.apply(synthetic_run(namespace, output, backoffLimit=0))
    start_local_dask(plane, namespace, local_pods)
    driver = driver_pod(plane, namespace)
    kubeconfig = plane.kubeconfig_for_service_account(namespace, "run-driver")
    config = json.loads(kubeconfig.read_text())
    proxy = CuttableProxy(int(config["clusters"][0]["cluster"]["server"].rsplit(":", 1)[1]))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    relayed = tmp_path / "relayed.kubeconfig"
    relayed.write_text(json.dumps(config))
    proxy.restore()
    process = local_pods.run(driver, {"KUBECONFIG": str(relayed)}, {})
    set_phase(plane, driver, "Running")
    eventually(lambda: status(plane, namespace).get("progress"), RUN_TIMEOUT_S, "first progress")
    proxy.cut()
    eventually(lambda: (output / "results.json").is_file(), RUN_TIMEOUT_S, "the results")
    log = tmp_path / f"{driver['metadata']['name']}.log"
    eventually(lambda: "will retry" in log.read_text(), 30, "a failed status patch")
    assert process.poll() is None, "the driver must wait for the API server, not exit"
    proxy.restore()
    try:
        assert process.wait(120) == 0, log.read_text()
    finally:
        proxy.cut()
    set_phase(plane, driver, "Succeeded")
    done = wait_phase(plane, namespace, "Succeeded")
    document = json.loads((output / "results.json").read_text())
    assert done["results"]["uri"] == str(output / "results.json")
    assert done["results"]["meanSkillVsPersistence"] == pytest.approx(
        document["metrics"]["headline"]["mean_skill_vs_persistence"]
    )
    total = done["progress"]["batchesTotal"]
    assert done["progress"]["summary"] == f"evaluation {total}/{total}"


def test_a_failed_run_says_why_in_the_pipelines_own_words(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str,
    local_pods: LocalPods, tmp_path: Path,
) -> None:  # fmt: skip
    """Unreadable data: status.message is the pipeline's one-line error, not the Job's, and
    the run fails after one attempt although backoffLimit allows more (a retry would meet
    the same missing file): the driver exits 3, which the Job's podFailurePolicy fails on."""
    plane = pulse_install
    missing = tmp_path / "no-such-data.csv"
    run = training_run(namespace, data={"uri": str(missing)},
                       output={"uri": str(tmp_path / "output")}, dask={"workers": 1},
                       backoffLimit=2)  # fmt: skip
    plane.apply(run)
    start_local_dask(plane, namespace, local_pods)
    driver = driver_pod(plane, namespace)
    kubeconfig = plane.kubeconfig_for_service_account(namespace, "run-driver")
    termination_log = tmp_path / "termination-log"
    extra_env = {"KUBECONFIG": str(kubeconfig),
                 "PULSE_TERMINATION_MESSAGE_PATH": str(termination_log)}  # fmt: skip
    process = local_pods.run(driver, extra_env, {})
    log = tmp_path / f"{driver['metadata']['name']}.log"
    assert process.wait(RUN_TIMEOUT_S) == 3, log.read_text()
    message = termination_log.read_text()
    assert str(missing) in message and "\n" not in message.strip()
    assert message.strip() in log.read_text(), "the line the pipeline printed, unchanged"
    set_phase(plane, driver, "Failed", message=message, exit_code=3)  # as the kubelet reports it

    failed = wait_phase(plane, namespace, "Failed")
    assert failed["message"].startswith(message.strip())
    assert "FailJob rule" in failed["message"]
    assert len(job_pods(plane, namespace, "run-driver")) == 1, "a missing file was retried"
