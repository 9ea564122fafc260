"""Whole TrainingRuns admitted by the real Kueue controller (docs/kueue.md).

Kueue v0.17.0's manager (built by hack/kueue.sh from the Go module proxy) runs as a host
process against the test's kube-apiserver, with its CRDs applied and no webhooks
registered (tests/kueue.py says why, and how the manager gets the metrics certificate it
insists on without writing to this machine's /etc). The operator runs with
``--kueue``, the real dask-kubernetes controller makes the pods, and the test plays
kubelet (tests/k8s/kubelet.py). The preemption test runs the real pipeline in local
processes from the exact pod specs (test_operator_local_e2e.LocalPods).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests import kueue
from tests.kueue import KueueManager

from .conftest import OperatorProcess, operator_process, unavailable
from .controlplane import ControlPlane, free_port
from .kubelet import dask_cluster, eventually, get, items, job_pods, set_phase
from .test_operator_crd import training_run
from .test_operator_lifecycle import status, wait_phase
from .test_operator_local_e2e import RUN_TIMEOUT_S, LocalPods, synthetic_run
from .test_operator_metrics import scrape

pytestmark = pytest.mark.k8s

QUEUE_WAIT_S = 90.0
# Every pod of a run here requests the operator's defaults: 1 CPU and 2Gi (conftest).
POD_CPU, POD_MEMORY_GI = 1, 2


@pytest.fixture(scope="session")
def kueue_controller(
    pulse_install: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KueueManager]:
    """Kueue's CRDs applied, the operator's Kueue RBAC bound, Kueue's manager running."""
    from trainingrun_operator.constants import DEFAULT_NAMESPACE
    from trainingrun_operator.rbac import build_kueue_rbac

    assets = kueue.find_assets()
    if assets is None:
        unavailable("no Kueue controller: run hack/kueue.sh (builds it once, a few minutes)")
    kueue.install_crds(pulse_install, assets)
    for manifest in build_kueue_rbac(DEFAULT_NAMESPACE):
        pulse_install.apply(manifest)
    work = tmp_path_factory.mktemp("kueue")
    manager = KueueManager(assets, pulse_install.admin_kubeconfig, work).start()
    yield manager
    manager.stop()


@pytest.fixture
def kueue_operator(
    pulse_install: ControlPlane,
    kueue_controller: KueueManager,
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
def queue(pulse_install: ControlPlane, kueue_controller: KueueManager,
          namespace: str) -> Iterator[str]:  # fmt: skip
    """A ResourceFlavor (node label + toleration), a ClusterQueue with quota for exactly one
    run of 1 scheduler + 1 worker + 1 driver (preemption of lower priorities within it), the
    LocalQueue `team` in the test namespace, and WorkloadPriorityClasses low and high.
    """
    pods = 3
    quota = {"cpu": str(pods * POD_CPU), "memory": f"{pods * POD_MEMORY_GI}Gi"}
    objects = kueue.queue_objects(namespace, namespace, "team", quota,
                                  {"pulse.dev/pool": "batch"}, [TAINT])  # fmt: skip
    kueue.create_queue(pulse_install, objects)
    yield "team"
    kueue.delete_queue(pulse_install, objects, wait=False)


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
    return get(plane, "workloads.kueue.x-k8s.io", kueue.workload_name(run), namespace) or {}


def run_pods_to_success(plane: ControlPlane, namespace: str, run: str) -> None:
    """Play kubelet for `run`: Dask pods Running, then the driver Running and Succeeded."""
    cluster = f"dask.org/cluster-name={dask_cluster(plane, namespace, run)}"
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
    The admitted flavor's node label and toleration are on every pod of the run. Prints the
    admission latency and the API requests the operator made (the route's cost).
    """
    plane = pulse_install
    names = ["first", "second", "third"]
    eventually(lambda: kueue.answers(kueue_operator.liveness_url), QUEUE_WAIT_S, "the operator up")
    for name in names:
        plane.apply(queued_run(namespace, name, queue))
    admitted_order: list[str] = []
    for position in range(len(names)):
        waiting = [n for n in names if n not in admitted_order]

        def one_admitted(waiting: list[str] = waiting) -> str | None:
            """The one waiting run Kueue admitted, once it did."""
            found = [n for n in waiting
                     if kueue.has_condition(workload(plane, namespace, n), "Admitted")]
            assert len(found) <= 1, f"Kueue admitted {found} at once: quota is for one run"
            return found[0] if found else None

        current = eventually(one_admitted, QUEUE_WAIT_S, f"run number {position + 1} admitted")
        admitted_order.append(current)
        for other in names:
            if other in admitted_order:
                continue
            queued = eventually(
                lambda o=other: (s := status(plane, namespace, o)).get("phase") == "Queued" and s,
                QUEUE_WAIT_S, f"{other} Queued")  # fmt: skip
            assert "queued in LocalQueue team" in queued["message"]
            assert items(plane, "pods", namespace, f"pulse.dev/trainingrun={other}") == []
            other_cluster = dask_cluster(plane, namespace, other)
            assert get(plane, "daskcluster", other_cluster, namespace) is None
        name = dask_cluster(plane, namespace, current)
        cluster = eventually(lambda n=name: get(plane, "daskcluster", n, namespace),
                             QUEUE_WAIT_S, f"{current}'s DaskCluster")  # fmt: skip
        for role in ("scheduler", "worker"):
            pod_spec = cluster["spec"][role]["spec"]
            assert pod_spec["nodeSelector"]["pulse.dev/pool"] == "batch"
            assert TAINT in pod_spec["tolerations"]
        run_pods_to_success(plane, namespace, current)
        job = get(plane, "job", f"{current}-driver", namespace) or {}
        assert job["spec"]["template"]["spec"]["nodeSelector"]["pulse.dev/pool"] == "batch"
        assert kueue.has_condition(workload(plane, namespace, current), "Finished")
    assert sorted(admitted_order) == sorted(names)
    table = plane.kubectl("get", "trainingruns", f"--namespace={namespace}", "-o", "wide").stdout
    assert table.splitlines()[0].split()[:6] == ["NAME", "PHASE", "PROGRESS", "SKILL", "AGE",
                                                 "QUEUE"]  # fmt: skip
    for line in table.splitlines()[1:]:
        assert line.split()[1] == "Succeeded" and "team" in line.split(), table
    requests = {
        f"{dict(labels)['verb']} {dict(labels)['resource']}": count
        for (metric, labels), count in scrape(kueue_operator).items()
        if metric == "pulse_operator_api_requests_total"
    }
    figures = kueue.latency(plane, namespace, admitted_order)
    print(f"latency (s, from the objects' timestamps): {json.dumps(figures)}")
    print(f"operator API requests for 3 runs, whole test: {json.dumps(requests, sort_keys=True)}")
    workload_writes = sum(n for key, n in requests.items() if key.split()[0] != "GET"
                          and key.split()[1] == "workloads")  # fmt: skip
    # One create per run and one status patch (Finished) per run: the route writes no more.
    assert workload_writes == 2 * len(names), requests


def local_incarnation(
    plane: ControlPlane, namespace: str, run: str, log_dir: Path
) -> tuple[LocalPods, subprocess.Popen[bytes], subprocess.Popen[bytes], dict[str, Any]]:
    """Run the run's current scheduler, worker and driver pods as local processes (the real
    pipeline) and report them Running; return them, the worker's and the driver's process and
    the driver's pod.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    pods = LocalPods(log_dir, run, free_port(), plane, namespace)
    cluster = f"dask.org/cluster-name={dask_cluster(plane, namespace, run)}"

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
    kubeconfig = plane.kubeconfig_for_service_account(namespace, f"{run}-driver")
    driver_process = pods.run(driver, {"KUBECONFIG": str(kubeconfig)}, {})
    set_phase(plane, driver, "Running")
    return pods, worker_process, driver_process, driver


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


@pytest.mark.timeout(600)
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
    first, _, frozen, _ = local_incarnation(plane, namespace, "low", tmp_path / "first")
    try:
        # Freeze the pipeline (the driver's child process, which saves each task's result as it
        # arrives) as soon as one is checkpointed: the run is caught mid-way. Tasks take
        # milliseconds here, so the poll is tight and makes no API call.
        pipeline: list[psutil.Process] = []
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not any((low_output / "checkpoints").rglob("*.npz")):
            assert time.monotonic() < deadline, "no checkpoint from the low run"
            time.sleep(0.002)
        pipeline = psutil.Process(frozen.pid).children(recursive=True)
        for process in pipeline:
            process.send_signal(signal.SIGSTOP)
        assert pipeline, "the driver runs the pipeline as its child process"
        wait_phase(plane, namespace, "Running", "low")
        plane.apply(queued_run(namespace, "high", queue, f"{namespace}-high"))
        preempted = eventually(
            lambda: (s := status(plane, namespace, "low")).get("phase") == "Queued" and s,
            QUEUE_WAIT_S, "the low run Queued after preemption")  # fmt: skip
        assert {c["reason"] for c in preempted["conditions"]} == {"Preempted"}, preempted
        assert preempted["message"].startswith("evicted by Kueue: Preempted")
        eventually(lambda: not job_pods(plane, namespace, "low-driver")
                   and get(plane, "daskcluster", dask_cluster(plane, namespace, "low"),
                           namespace) is None,
                   QUEUE_WAIT_S, "the low run's pods and Dask cluster gone")  # fmt: skip
        job = get(plane, "job", "low-driver", namespace) or {}
        assert job["spec"]["suspend"] is True
    finally:
        for process in pipeline:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)  # so that stop() can end it
        first.stop()
    run_pods_to_success(plane, namespace, "high")
    second, _, driver_process, driver = local_incarnation(plane, namespace, "low",
                                                         tmp_path / "second")  # fmt: skip
    try:
        exit_code = driver_process.wait(RUN_TIMEOUT_S)
    finally:
        second.stop()
    set_phase(plane, driver, "Succeeded" if exit_code == 0 else "Failed")
    done = wait_phase(plane, namespace, "Succeeded", "low")
    assert done["attempts"] == 1, done  # a preemption is not a failed attempt
    resumed_log = "\n".join(p.read_text() for p in (tmp_path / "second").glob("low-driver*.log"))
    restored = re.findall(r"Stage (\w+): (\d+) of (\d+) tasks restored", resumed_log)
    assert restored, resumed_log[-3000:]
    # Caught mid-way: a stage came back from the checkpoints only in part, the rest ran.
    assert any(0 < int(done) < int(total) for _, done, total in restored), restored

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
