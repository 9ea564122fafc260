"""Whole TrainingRuns admitted by the real Kueue controller (docs/kueue.md).

Kueue v0.17.0's manager (built by hack/kueue.sh from the Go module proxy) runs as a host
process against the test's kube-apiserver, with its CRDs applied and no webhooks
registered (the Workload route needs none; its webhook server still serves a certificate
signed by the control plane's CA so the manager starts). The operator runs with
``--kueue``, the real dask-kubernetes controller makes the pods, and the test plays
kubelet (tests/k8s/kubelet.py). The preemption test runs the real pipeline in local
processes from the exact pod specs (test_operator_local_e2e.LocalPods).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO_ROOT, OperatorProcess, operator_process, unavailable
from .controlplane import ControlPlane, free_port
from .kubelet import eventually, get, items, job_pods, set_phase
from .test_operator_crd import training_run
from .test_operator_lifecycle import status, wait_phase
from .test_operator_local_e2e import RUN_TIMEOUT_S, LocalPods, synthetic_run

pytestmark = pytest.mark.k8s

KUEUE = "kueue.x-k8s.io/v1beta2"
KUEUE_SCRIPT = REPO_ROOT / "hack" / "kueue.sh"
QUEUE_WAIT_S = 90.0
# Every pod of a run here requests the operator's defaults: 1 CPU and 2Gi (conftest).
POD_CPU, POD_MEMORY_GI = 1, 2


@pytest.fixture(scope="session")
def kueue_assets() -> Path:
    """Kueue's manager binary and CRDs, as hack/kueue.sh caches them (it never builds here)."""
    result = subprocess.run(
        ["bash", str(KUEUE_SCRIPT), "find"], capture_output=True, text=True, check=False,
        timeout=60,
    )  # fmt: skip
    if result.returncode != 0:
        unavailable("no Kueue controller: run hack/kueue.sh (builds it once, a few minutes)")
    return Path(result.stdout.strip())


def _ready(url: str) -> bool:
    """True when `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def kueue_controller(
    pulse_install: ControlPlane, kueue_assets: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """Kueue's CRDs applied, the operator's Kueue RBAC bound, Kueue's manager running."""
    from trainingrun_operator.constants import DEFAULT_NAMESPACE
    from trainingrun_operator.rbac import build_kueue_rbac

    plane = pulse_install
    crds = sorted((kueue_assets / "crds").glob("*.yaml"))
    # Server-side: the Workload CRD is too large for client-side apply's annotation.
    plane.kubectl("apply", "--server-side", *(f"--filename={crd}" for crd in crds))
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                  *(f"crd/{crd.name.split('_')[1].removesuffix('.yaml')}.kueue.x-k8s.io"
                    for crd in crds))  # fmt: skip
    for manifest in build_kueue_rbac(DEFAULT_NAMESPACE):
        plane.apply(manifest)
    plane.kubectl("create", "namespace", "kueue-system", check=False)
    work = tmp_path_factory.mktemp("kueue")
    certs = work / "certs"
    certs.mkdir()
    cert, key = plane.serving_certificate("kueue-webhook")
    shutil.copy(cert, certs / "tls.crt")
    shutil.copy(key, certs / "tls.key")
    health = free_port()
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
        "webhook": {"port": free_port(), "host": "127.0.0.1", "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["batch/job"]},
    }  # fmt: skip
    config_file = work / "config.yaml"
    config_file.write_text(json.dumps(config))
    args = [str(kueue_assets / "kueue"), f"--config={config_file}",
            "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=2"]  # fmt: skip
    process = OperatorProcess("kueue", args, plane.admin_kubeconfig, work).start()
    try:
        eventually(lambda: _ready(f"http://127.0.0.1:{health}/readyz"), 90, "Kueue ready")
    except AssertionError:
        process.stop()
        raise AssertionError(f"Kueue did not become ready:\n{process.log_tail()}") from None
    yield process
    process.stop()


@pytest.fixture
def kueue_operator(
    pulse_install: ControlPlane,
    kueue_controller: OperatorProcess,
    dask_controller: OperatorProcess,
    namespace: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """The TrainingRun operator with the Kueue route on, watching the test's namespace."""
    process = operator_process(pulse_install, namespace, tmp_path, "--kueue")
    yield process.start()
    process.stop()


TAINT = {"key": "pulse.dev/batch", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture
def queue(pulse_install: ControlPlane, kueue_controller: OperatorProcess,
          namespace: str) -> Iterator[str]:  # fmt: skip
    """A ResourceFlavor (node label + toleration), a ClusterQueue with quota for exactly one
    run of 1 scheduler + 1 worker + 1 driver (preemption of lower priorities within it), the
    LocalQueue `team` in the test namespace, and WorkloadPriorityClasses low and high.
    """
    plane = pulse_install
    name = f"{namespace}"
    pods = 3
    objects = [
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": name},
         "spec": {"nodeLabels": {"pulse.dev/pool": "batch"}, "tolerations": [TAINT]}},
        {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": name},
         "spec": {
             "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
             "preemption": {"withinClusterQueue": "LowerPriority"},
             "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [
                 {"name": name, "resources": [
                     {"name": "cpu", "nominalQuota": pods * POD_CPU},
                     {"name": "memory", "nominalQuota": f"{pods * POD_MEMORY_GI}Gi"}]}]}],
         }},
        {"apiVersion": KUEUE, "kind": "LocalQueue",
         "metadata": {"name": "team", "namespace": namespace}, "spec": {"clusterQueue": name}},
        {"apiVersion": KUEUE, "kind": "WorkloadPriorityClass",
         "metadata": {"name": f"{name}-low"}, "value": 10},
        {"apiVersion": KUEUE, "kind": "WorkloadPriorityClass",
         "metadata": {"name": f"{name}-high"}, "value": 1000},
    ]  # fmt: skip
    for manifest in objects:
        plane.apply(manifest)
    yield "team"
    for manifest in reversed(objects):
        kind = manifest["kind"].lower()
        meta = manifest["metadata"]
        scope = [f"--namespace={meta['namespace']}"] if "namespace" in meta else []
        plane.kubectl("delete", kind, meta["name"], *scope, "--wait=false",
                      "--ignore-not-found")  # fmt: skip


def queued_run(namespace: str, name: str, queue_name: str, priority: str | None = None,
               **spec: Any) -> dict[str, Any]:  # fmt: skip
    """A one-worker run in LocalQueue `queue_name` (and WorkloadPriorityClass `priority`)."""
    manifest = training_run(namespace, name, dask={"workers": 1}, **spec)
    labels = {"kueue.x-k8s.io/queue-name": queue_name}
    if priority:
        labels["kueue.x-k8s.io/priority-class"] = priority
    manifest["metadata"]["labels"] = labels
    return manifest


def workload(plane: ControlPlane, namespace: str, run: str) -> dict[str, Any]:
    """The run's Workload (empty until it exists)."""
    return get(plane, "workloads.kueue.x-k8s.io", f"trainingrun-{run}", namespace) or {}


def is_admitted(found: dict[str, Any]) -> bool:
    """The Workload's Admitted condition is True."""
    return any(c["type"] == "Admitted" and c["status"] == "True"
               for c in found.get("status", {}).get("conditions", []))  # fmt: skip


def run_pods_to_success(plane: ControlPlane, namespace: str, run: str) -> None:
    """Play kubelet for `run`: Dask pods Running, then the driver Running and Succeeded."""
    cluster = f"dask.org/cluster-name={run}-dask"
    for component in ("scheduler", "worker"):
        selector = f"{cluster},dask.org/component={component}"
        pod = eventually(lambda s=selector: items(plane, "pods", namespace, s), QUEUE_WAIT_S,
                         f"{run}'s Dask {component}")[0]  # fmt: skip
        set_phase(plane, pod, "Running")
    driver = eventually(lambda: job_pods(plane, namespace, f"{run}-driver"), QUEUE_WAIT_S,
                        f"{run}'s driver pod")[0]  # fmt: skip
    set_phase(plane, driver, "Running")
    wait_phase(plane, namespace, "Running", run)
    set_phase(plane, driver, "Succeeded")
    wait_phase(plane, namespace, "Succeeded", run)


def test_three_runs_under_quota_for_one_run_one_after_another(
    pulse_install: ControlPlane, kueue_operator: OperatorProcess, queue: str, namespace: str
) -> None:
    """Three runs applied at once: one is admitted whole, two are Queued with Kueue's reason
    and have no pods; each starts only after the previous one finished; all three Succeed.
    The admitted flavor's node label and toleration are on every pod of the run.
    """
    plane = pulse_install
    names = ["first", "second", "third"]
    applied = time.monotonic()
    for name in names:
        plane.apply(queued_run(namespace, name, queue))
    admitted_order: list[str] = []
    timings: dict[str, float] = {}
    for position in range(len(names)):
        waiting = [n for n in names if n not in admitted_order]

        def one_admitted(waiting: list[str] = waiting) -> str | None:
            """The one waiting run Kueue admitted, once it did."""
            found = [n for n in waiting if is_admitted(workload(plane, namespace, n))]
            assert len(found) <= 1, f"Kueue admitted {found} at once: quota is for one run"
            return found[0] if found else None

        current = eventually(one_admitted, QUEUE_WAIT_S, f"run number {position + 1} admitted")
        admitted_order.append(current)
        timings[f"admitted {current}"] = time.monotonic() - applied
        for other in names:
            if other in admitted_order:
                continue
            queued = eventually(
                lambda o=other: (s := status(plane, namespace, o)).get("phase") == "Queued" and s,
                QUEUE_WAIT_S, f"{other} Queued")  # fmt: skip
            assert "queued in LocalQueue team" in queued["message"]
            reasons = {c["type"]: c["reason"] for c in queued["conditions"]}
            assert reasons["Admitted"] == "Pending", queued["conditions"]
            assert items(plane, "pods", namespace, f"pulse.dev/trainingrun={other}") == []
            assert get(plane, "daskcluster", f"{other}-dask", namespace) is None
        cluster = eventually(lambda c=current: get(plane, "daskcluster", f"{c}-dask", namespace),
                             QUEUE_WAIT_S, f"{current}'s DaskCluster")  # fmt: skip
        for role in ("scheduler", "worker"):
            pod_spec = cluster["spec"][role]["spec"]
            assert pod_spec["nodeSelector"]["pulse.dev/pool"] == "batch"
            assert TAINT in pod_spec["tolerations"]
        run_pods_to_success(plane, namespace, current)
        timings[f"succeeded {current}"] = time.monotonic() - applied
        job = get(plane, "job", f"{current}-driver", namespace) or {}
        assert job["spec"]["template"]["spec"]["nodeSelector"]["pulse.dev/pool"] == "batch"
        finished = workload(plane, namespace, current)
        assert any(c["type"] == "Finished" and c["status"] == "True"
                   for c in finished["status"]["conditions"])  # fmt: skip
    print(f"timings (s from apply): {json.dumps(timings)}")
    assert sorted(admitted_order) == sorted(names)
    table = plane.kubectl("get", "trainingruns", f"--namespace={namespace}", "-o", "wide").stdout
    assert "QUEUE" in table.splitlines()[0]
    assert all(line.split()[1] == "Succeeded" for line in table.splitlines()[1:]), table


def local_incarnation(
    plane: ControlPlane, namespace: str, run: str, log_dir: Path
) -> tuple[LocalPods, Any]:
    """Run the run's current scheduler, worker and driver pods as local processes (the real
    pipeline), report them Running; return the processes and the worker's process.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    pods = LocalPods(log_dir, f"{run}-dask-scheduler.{namespace}.svc.cluster.local", free_port())
    cluster = f"dask.org/cluster-name={run}-dask"

    def pod_of(component: str) -> dict[str, Any]:
        selector = f"{cluster},dask.org/component={component}"
        return eventually(lambda: items(plane, "pods", namespace, selector), QUEUE_WAIT_S,
                          f"{run}'s {component} pod")[0]  # fmt: skip

    scheduler, worker = pod_of("scheduler"), pod_of("worker")
    dashboard = {"--dashboard-address=:8787": f"--dashboard-address=127.0.0.1:{free_port()}"}
    pods.run(scheduler, {}, {**dashboard, "--port=8786": f"--port={pods.port}"})
    set_phase(plane, scheduler, "Running")
    worker_process = pods.run(worker, {}, {})
    set_phase(plane, worker, "Running")
    driver = eventually(lambda: job_pods(plane, namespace, f"{run}-driver"), QUEUE_WAIT_S,
                        f"{run}'s driver pod")[-1]  # fmt: skip
    kubeconfig = plane.kubeconfig_for_service_account(namespace, "pulse-trainingrun-driver")
    pods.run(driver, {"KUBECONFIG": str(kubeconfig)}, {})
    set_phase(plane, driver, "Running")
    return pods, worker_process


def rounded(value: Any) -> Any:
    """`value` with every float to 9 significant digits (Dask sums in another order)."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(item) for item in value]
    return value


def headline_and_coefficients(results: Path) -> tuple[dict[str, Any], Any]:
    """What must not change when a run is preempted and resumed."""
    document = json.loads(results.read_text())
    return document["metrics"]["headline"], document["model"]["coefficients"]


def test_a_higher_priority_run_preempts_and_the_preempted_run_resumes_from_checkpoints(
    pulse_install: ControlPlane, kueue_operator: OperatorProcess, queue: str, namespace: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A low-priority run trains (real pipeline); a high-priority run arrives; Kueue preempts
    the low one, whose pods go and which shows Queued (Preempted); the high one runs and
    Succeeds; the low one is re-admitted, restores its checkpointed tasks, and Succeeds with
    the numbers of an uninterrupted local run of the same spec.
    """
    plane = pulse_install
    low_output = tmp_path / "low-output"
    low = synthetic_run(namespace, low_output)
    low["metadata"]["name"] = "low"
    low["spec"]["data"]["uri"] = "builtin:synthetic?n_variables=3&years=24&seed=3"
    low["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": queue,
                                 "kueue.x-k8s.io/priority-class": f"{namespace}-low"}  # fmt: skip
    plane.apply(low)
    first, worker = local_incarnation(plane, namespace, "low", tmp_path / "first")
    try:
        # Freeze the worker once some tasks are checkpointed, as a long run would be mid-way.
        eventually(lambda: any((low_output / "checkpoints").rglob("*.npz")), RUN_TIMEOUT_S,
                   "the low run's first checkpoint")  # fmt: skip
        worker.send_signal(19)  # SIGSTOP
        checkpointed = len(list((low_output / "checkpoints").rglob("*.npz")))
        wait_phase(plane, namespace, "Running", "low")
        plane.apply(queued_run(namespace, "high", queue, f"{namespace}-high"))
        preempted = eventually(
            lambda: (s := status(plane, namespace, "low")).get("phase") == "Queued" and s,
            QUEUE_WAIT_S, "the low run Queued after preemption")  # fmt: skip
        assert {c["reason"] for c in preempted["conditions"]} == {"Preempted"}, preempted
        assert preempted["message"].startswith("evicted by Kueue: Preempted")
        eventually(lambda: not job_pods(plane, namespace, "low-driver")
                   and get(plane, "daskcluster", "low-dask", namespace) is None,
                   QUEUE_WAIT_S, "the low run's pods and Dask cluster gone")  # fmt: skip
        job = get(plane, "job", "low-driver", namespace) or {}
        assert job["spec"]["suspend"] is True
    finally:
        worker.send_signal(18)  # SIGCONT, so that stop() can end it
        first.stop()
    run_pods_to_success(plane, namespace, "high")
    second, _ = local_incarnation(plane, namespace, "low", tmp_path / "second")
    try:
        done = eventually(
            lambda: (s := status(plane, namespace, "low")).get("phase") in ("Succeeded", "Failed")
            and s, RUN_TIMEOUT_S, "the low run to finish after re-admission")  # fmt: skip
    finally:
        second.stop()
    assert done["phase"] == "Succeeded", done
    resumed_log = "\n".join(p.read_text() for p in (tmp_path / "second").glob("low-driver*.log"))
    assert "restored from checkpoint" in resumed_log, resumed_log[-3000:]
    assert checkpointed > 0

    # The same spec, uninterrupted, serially in this process's venv: the reference numbers.
    from trainingrun_operator.spec import RunSpec, cli_arguments

    stored = get(plane, "trainingrun", "low", namespace) or {}
    reference_output = tmp_path / "reference"
    dropped = ("--dask-scheduler-address", "--checkpoint-dir", "--output-dir")
    args = [a for a in cli_arguments(RunSpec.from_body(stored), "") if not a.startswith(dropped)]
    subprocess.run([sys.executable, "-m", "recursive_training.run_training", *args,
                    f"--output-dir={reference_output}"], check=True, capture_output=True,
                   timeout=RUN_TIMEOUT_S)  # fmt: skip
    got = headline_and_coefficients(low_output / "results.json")
    want = headline_and_coefficients(reference_output / "results.json")
    assert rounded(got) == rounded(want)
