"""The product on a real single-node Kubernetes: chart, operator, Dask pods, S3, faults.

`helm install` puts the chart's operator and dask-kubernetes controller on the node of
hack/local-cluster.sh; the example TrainingRun is applied as shipped; the operator starts
a DaskCluster (real scheduler and worker pods found through a Service and CoreDNS) and a
driver Job; results land in an S3 server (moto) that listens on the node's bridge address.
Each run's results are compared with the same flags run locally in one process, so the
cluster must reproduce the laptop's numbers, also after losing a worker pod and the
active one of the two operator pods mid-run. Start, run and pod start times are printed for
the README.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from recursive_training.data.panel import PanelSpec, write_panel
from tests.e2e.cluster import KubeCluster, eventually, pod_start_seconds, timestamp
from tests.e2e.conftest import BUCKET, RELEASE_NAMESPACE, ROOT, Say, install_release
from tests.integration.s3.servers import ACCESS_KEY, REGION, SECRET_KEY, MotoServer
from trainingrun_operator.constants import LABEL_RUN, LEASE_NAME
from trainingrun_operator.spec import RunSpec, cli_arguments

# Each test waits for a whole run on a 2-CPU node; its own waits report what hung first.
pytestmark = pytest.mark.timeout(900)

EXAMPLE = ROOT / "manifests" / "examples" / "trainingrun-synthetic.yaml"
PANEL_EXAMPLE = ROOT / "manifests" / "examples" / "trainingrun-panel-ar.yaml"
# A universe of series read from S3: 2,000 series (and the market) x 4 years, long Parquet.
PANEL = PanelSpec(n_series=2000, years=4, seed=13)
RUN_NAMESPACE = "pulse-e2e"
CREDENTIALS_SECRET = "pulse-s3"
# On 2 cores the whole cluster shares the CPUs with the runs: bounded, but generous.
RUN_TIMEOUT_S = 600.0
# A run whose map stages last long enough (~15 s each, measured) for pods to be deleted
# while they compute: the pipeline itself is fast, so many small batches on thin pods.
LONG_RUN_DATA = "builtin:synthetic?n_variables=8&years=40&seed=11"
LONG_RUN_BATCH_DAYS = 30
LONG_RUN_RESOURCES = {"requests": {"cpu": "150m", "memory": "1Gi"},
                      "limits": {"cpu": "150m", "memory": "1Gi"}}  # fmt: skip


@contextlib.contextmanager
def namespace_with_credentials(cluster: KubeCluster, s3: MotoServer,
                               namespace: str = RUN_NAMESPACE) -> Iterator[str]:  # fmt: skip
    """A namespace for runs, holding the S3 credentials Secret the example run names."""
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl(
        "create", "secret", "generic", CREDENTIALS_SECRET, f"--namespace={namespace}",
        f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS_KEY}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET_KEY}",
        f"--from-literal=AWS_DEFAULT_REGION={REGION}",
        f"--from-literal=AWS_ENDPOINT_URL={s3.endpoint}",
    )  # fmt: skip
    try:
        yield namespace
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait", timeout=300)


@pytest.fixture(scope="module")
def run_namespace(pulse_release: KubeCluster, node_s3: MotoServer) -> Iterator[str]:
    """The runs' namespace while the chart is installed."""
    with namespace_with_credentials(pulse_release, node_s3) as namespace:
        yield namespace


def apply(cluster: KubeCluster, manifest: dict[str, Any],
          namespace: str = RUN_NAMESPACE) -> dict[str, Any]:  # fmt: skip
    """Apply one object into `namespace`; return it as stored (defaults applied)."""
    result = cluster.kubectl("apply", f"--namespace={namespace}", "--filename=-",
                             "--output=json", stdin=json.dumps(manifest))  # fmt: skip
    stored: dict[str, Any] = json.loads(result.stdout)
    return stored


def long_run(name: str, workers: int) -> dict[str, Any]:
    """The shipped example, made long (LONG_RUN_*), with its own name and output."""
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = manifest["spec"]
    manifest["metadata"]["name"] = name
    spec["data"]["uri"] = LONG_RUN_DATA
    spec["batchSizeDays"] = LONG_RUN_BATCH_DAYS
    spec["output"]["uri"] = f"s3://{BUCKET}/{name}"
    spec["dask"].update(workers=workers, resources=LONG_RUN_RESOURCES)
    return manifest


def dask_cluster(stored_run: dict[str, Any]) -> str:
    """The run's DaskCluster: `<run>-dask-<first 8 characters of its UID>`."""
    meta = stored_run["metadata"]
    return f"{meta['name']}-dask-{meta['uid'][:8]}"


def phase(cluster: KubeCluster, name: str, namespace: str = RUN_NAMESPACE) -> dict[str, Any]:
    """The run's status (empty before the operator's first write)."""
    status: dict[str, Any] = cluster.get("trainingrun", name, f"--namespace={namespace}"
                                         ).get("status", {})  # fmt: skip
    return status


def wait_for_phase(cluster: KubeCluster, name: str, wanted: str,
                   pod_starts: dict[str, float] | None = None,
                   namespace: str = RUN_NAMESPACE) -> dict[str, Any]:  # fmt: skip
    """Wait for the run's phase; a Failed run fails at once, with the cluster's story.

    `pod_starts` collects, for each pod of the namespace seen meanwhile, the seconds from
    its creation to its container starting (Dask pods are gone once the run ends).
    """

    def probe() -> dict[str, Any] | None:
        if pod_starts is not None:
            for pod in cluster.pods(namespace):
                seconds = pod_start_seconds(pod)
                if seconds is not None:
                    pod_starts.setdefault(pod["metadata"]["name"], seconds)
        status = phase(cluster, name, namespace)
        if status.get("phase") == "Failed" and wanted != "Failed":
            raise AssertionError(f"{name} failed: {status}\n{cluster.diagnostics(namespace)}")
        return status if status.get("phase") == wanted else None

    return eventually(probe, RUN_TIMEOUT_S, f"{name} {wanted}",
                      lambda: cluster.diagnostics(namespace))  # fmt: skip


def results_from_s3(s3: MotoServer, run: str) -> dict[str, Any]:
    """The results document the run wrote to the S3 server."""
    body = s3.client().get_object(Bucket=BUCKET, Key=f"{run}/results.json")["Body"].read()
    document: dict[str, Any] = json.loads(body)
    return document


def local_reference(stored_run: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The results of the run's own pipeline flags, computed here in one process."""
    flags = [flag for flag in cli_arguments(RunSpec.from_body(stored_run), "")
             if not flag.startswith(("--dask-scheduler-address", "--output-dir",
                                     "--checkpoint-dir"))]  # fmt: skip
    command = [sys.executable, "-m", "recursive_training.run_training", *flags,
               f"--output-dir={folder}"]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DASK_"))}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads((folder / "results.json").read_text())
    return document


def numbers(tree: Any, path: str = "") -> dict[str, float]:
    """Every number in a JSON tree, keyed by its path."""
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {path: float(tree)}
    if isinstance(tree, dict):
        children = list(tree.items())
    elif isinstance(tree, list):
        children = list(enumerate(tree))
    else:
        return {}
    return {k: v for key, value in children for k, v in numbers(value, f"{path}/{key}").items()}


def assert_same_results(cluster_document: dict[str, Any], reference: dict[str, Any]) -> None:
    """Same data, same metrics (to rounding of a different summation order)."""
    assert cluster_document["data"] == reference["data"]
    got, want = numbers(cluster_document["metrics"]), numbers(reference["metrics"])
    assert got.keys() == want.keys()
    different = {key: (got[key], want[key]) for key in want
                 if not math.isclose(got[key], want[key], rel_tol=1e-9, abs_tol=1e-12)}  # fmt: skip
    assert not different, different


def run_example_and_check(cluster: KubeCluster, s3: MotoServer, say: Say, folder: Path) -> None:
    """Apply the shipped example as is; Succeeded, results in S3 equal to a local run."""
    manifest = yaml.safe_load(EXAMPLE.read_text())
    name = manifest["metadata"]["name"]
    started = time.monotonic()
    stored = apply(cluster, manifest)
    starts: dict[str, float] = {}
    status = wait_for_phase(cluster, name, "Succeeded", starts)
    on_cluster = time.monotonic() - started
    say("pod start (created -> container started): "
        + ", ".join(f"{pod} {seconds:.1f} s" for pod, seconds in starts.items()))  # fmt: skip
    assert {"scheduler", "worker", "driver"} <= {
        role for role in ("scheduler", "worker", "driver") for pod in starts if role in pod
    }, f"not every kind of pod was seen running: {starts}"

    document = results_from_s3(s3, name)
    headline = document["metrics"]["headline"]
    assert status["results"]["uri"] == f"s3://{BUCKET}/{name}/results.json"
    assert status["results"]["meanSkillVsPersistence"] == pytest.approx(
        headline["mean_skill_vs_persistence"]
    )
    started = time.monotonic()
    reference = local_reference(stored, folder)
    local = time.monotonic() - started
    say(f"example run: kubectl apply -> Succeeded in {on_cluster:.1f} s; the same flags in one "
        f"local process {local:.1f} s (cluster/local {on_cluster / local:.1f}x)")  # fmt: skip
    assert_same_results(document, reference)
    # Checkpoints went to the same bucket, next to the results.
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{name}/checkpoints/")
    assert listed["KeyCount"] > 0


def test_example_run_succeeds_on_real_pods_and_writes_to_s3(
    run_namespace: str, pulse_release: KubeCluster, node_s3: MotoServer, say: Say,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The shipped example, applied as is, reaches Succeeded and matches a local run."""
    run_example_and_check(pulse_release, node_s3, say, tmp_path)


def test_an_ar_run_on_a_long_parquet_panel_in_s3_succeeds_and_matches_a_local_run(
    run_namespace: str, pulse_release: KubeCluster, node_s3: MotoServer, say: Say,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The shipped panel example (spec.model ar with the market as exog) on 2,000 series
    of long Parquet in S3: Succeeded, and the metrics of a local run on the same file."""
    panel = write_panel(PANEL, tmp_path / "panel.parquet")
    bucket, key = "pulse-data", "panel/panel.parquet"
    node_s3.client().create_bucket(Bucket=bucket)
    node_s3.client().upload_file(str(panel), bucket, key)
    manifest: dict[str, Any] = yaml.safe_load(PANEL_EXAMPLE.read_text())
    name = manifest["metadata"]["name"]
    spec = manifest["spec"]
    assert spec["data"]["uri"] == f"s3://{bucket}/panel/" and spec["model"]["structure"] == "ar"
    assert spec["output"]["uri"] == f"s3://{BUCKET}/{name}"
    spec["dask"].update(workers=2, resources={"requests": {"cpu": "300m", "memory": "1Gi"}})
    started = time.monotonic()
    stored = apply(pulse_release, manifest)
    wait_for_phase(pulse_release, name, "Succeeded")
    on_cluster = time.monotonic() - started
    document = results_from_s3(node_s3, name)
    assert document["data"]["series"] == PANEL.n_series
    flags = [flag for flag in cli_arguments(RunSpec.from_body(stored), "")
             if not flag.startswith(("--dask-scheduler-address", "--output-dir",
                                     "--checkpoint-dir", "--input-data"))]  # fmt: skip
    folder = tmp_path / "local"
    command = [sys.executable, "-m", "recursive_training.run_training", *flags,
               f"--input-data={panel}", f"--output-dir={folder}"]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DASK_"))}
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=environment, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    local = time.monotonic() - started
    say(f"ar on {PANEL.n_series} series from S3: kubectl apply -> Succeeded in "
        f"{on_cluster:.1f} s; the same flags in one local process {local:.1f} s")  # fmt: skip
    reference = json.loads((folder / "results.json").read_text())
    same_data = {k: v for k, v in reference["data"].items() if k != "source"}
    assert {k: v for k, v in document["data"].items() if k != "source"} == same_data
    got, want = numbers(document["metrics"]), numbers(reference["metrics"])
    assert got.keys() == want.keys() and len(want) > 10
    different = {k: (got[k], want[k]) for k in want
                 if not math.isclose(got[k], want[k], rel_tol=1e-9, abs_tol=1e-12)}  # fmt: skip
    assert not different, different


def test_run_survives_losing_a_worker_pod_and_the_operator_pod(
    run_namespace: str, pulse_release: KubeCluster, node_s3: MotoServer,
    say: Say, tmp_path: Path,
) -> None:  # fmt: skip
    """A worker pod and the active one of the two operator pods deleted in a map stage: the
    standby takes the Lease, the run Succeeds all the same with one driver Job, same numbers."""
    cluster = pulse_release
    name = "synthetic-faults"
    stored = apply(cluster, long_run(name, workers=2))
    workers = f"dask.org/cluster-name={dask_cluster(stored)},dask.org/component=worker"

    def computing() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """Both workers up and a map stage half done (some batches finished, more to do)."""
        status = phase(cluster, name)
        if status.get("phase") in ("Succeeded", "Failed"):
            raise AssertionError(f"{name} ended ({status['phase']}) before both workers were "
                                 "seen computing: make LONG_RUN_DATA bigger")  # fmt: skip
        progress = status.get("progress", {})
        running = [p for p in cluster.pods(run_namespace, workers)
                   if p.get("status", {}).get("phase") == "Running"]  # fmt: skip
        under_way = 0 < progress.get("batchesCompleted", 0) < progress.get("batchesTotal", 0)
        return (progress, running) if under_way and len(running) == 2 else None

    progress, running = eventually(computing, RUN_TIMEOUT_S, "a map stage under way on 2 workers",
                                   lambda: cluster.diagnostics(run_namespace),
                                   interval=0.2)  # fmt: skip
    victim = running[0]["metadata"]["name"]
    cluster.kubectl("delete", "pod", victim, f"--namespace={run_namespace}", "--wait=false")
    # The chart runs two operator replicas; the one holding the Lease (its pod name) is active.
    operators = [p["metadata"]["name"] for p in cluster.pods(RELEASE_NAMESPACE, OPERATORS)]
    active = lease_holder(cluster)
    assert len(operators) == 2 and active in operators, (operators, active)
    cluster.kubectl("delete", "pod", active, f"--namespace={RELEASE_NAMESPACE}", "--wait=false")
    deleted = time.monotonic()
    say(f"deleted worker {victim} and the active operator {active} at {progress['summary']}")
    (standby,) = set(operators) - {active}
    eventually(lambda: lease_holder(cluster) == standby, 60, f"{standby} to take the Lease",
               lambda: cluster.diagnostics(RELEASE_NAMESPACE))  # fmt: skip
    say(f"standby {standby} took over {time.monotonic() - deleted:.1f} s after the delete")

    seen: dict[str, float] = {}
    wait_for_phase(cluster, name, "Succeeded", seen)
    started_workers = {pod for pod in seen if "-worker-" in pod}
    assert started_workers - {p["metadata"]["name"] for p in running}, (
        f"no replacement worker started after {victim} was deleted: {sorted(seen)}"
    )
    assert len(cluster.get("jobs", f"--namespace={run_namespace}",
                           f"--selector={LABEL_RUN}={name}")["items"]) == 1  # fmt: skip
    assert_same_results(results_from_s3(node_s3, name), local_reference(stored, tmp_path))


OPERATORS = "app.kubernetes.io/component=operator"


def lease_holder(cluster: KubeCluster) -> str:
    """The pod name holding the operator's leader-election Lease ('' while none does)."""
    lease = cluster.get("lease", LEASE_NAME, f"--namespace={RELEASE_NAMESPACE}")
    holder: str = (lease.get("spec") or {}).get("holderIdentity") or ""
    return holder


def test_deleting_a_running_run_removes_every_pod(
    run_namespace: str, pulse_release: KubeCluster, say: Say, tmp_path: Path,
) -> None:  # fmt: skip
    """Delete the TrainingRun while its pods run: all go, each well inside its grace period.

    How soon a pod is told to stop depends on the garbage collector and the Dask
    controller's finalizer (seconds to tens of seconds); what the pod does then is ours. A
    pod's deletionTimestamp is the end of its grace period, so a pod that stops on SIGTERM
    vanishes long before it, and one that ignores SIGTERM is killed right at it.
    """
    cluster = pulse_release
    name = "synthetic-deleted"
    apply(cluster, long_run(name, workers=1))

    def running() -> list[dict[str, Any]] | None:
        pods = [p for p in cluster.pods(run_namespace, f"{LABEL_RUN}={name}")
                if p.get("status", {}).get("phase") == "Running"]  # fmt: skip
        return pods if len(pods) == 3 else None  # driver, scheduler, one worker

    pods = eventually(running, RUN_TIMEOUT_S, "driver, scheduler and worker Running",
                      lambda: cluster.diagnostics(run_namespace))  # fmt: skip
    with cluster.following_logs(run_namespace, [p["metadata"]["name"] for p in pods],
                                tmp_path) as logs:  # fmt: skip
        started = time.monotonic()
        cluster.kubectl("delete", "trainingrun", name, f"--namespace={run_namespace}",
                        timeout=300)  # fmt: skip
        margins = wait_until_gone(cluster, run_namespace, name)
    say(f"deleted run: every pod gone {time.monotonic() - started:.1f} s after delete; "
        "seconds of grace period left when each vanished: "
        + ", ".join(f"{pod} {margin:.0f}" for pod, margin in margins.items()))  # fmt: skip
    # A pod killed at the end of its grace period leaves ~0 s; one that stopped on
    # SIGTERM leaves most of the 30 s. 10 s covers polling and clock granularity.
    late = {pod: margin for pod, margin in margins.items() if margin < 10}
    assert not late, (
        f"pods sat out their termination grace period: {late}; what they logged meanwhile:\n"
        + "\n".join(f"--- {pod} ---\n{ends_of(logs[pod].read_text()) if pod in logs else ''}"
                    for pod in late))  # fmt: skip


def ends_of(log: str, chars: int = 2500) -> str:
    """The start and the end of `log` (a traceback's last lines hide what began it)."""
    if len(log) <= 2 * chars:
        return log
    return f"{log[:chars]}\n[... {len(log) - 2 * chars} characters ...]\n{log[-chars:]}"


def wait_until_gone(cluster: KubeCluster, namespace: str, run: str) -> dict[str, float]:
    """Wait until every pod of the deleted `run` is gone; by pod, the seconds of its grace
    period that were left when it vanished (its deletionTimestamp is the period's end)."""
    deadlines: dict[str, datetime.datetime] = {}
    margins: dict[str, float] = {}

    def gone() -> bool | None:
        pods = cluster.pods(namespace, f"{LABEL_RUN}={run}")
        left = {p["metadata"]["name"]: p for p in pods}
        now = datetime.datetime.now(datetime.UTC)
        for pod_name, pod in left.items():
            if pod["metadata"].get("deletionTimestamp"):
                deadlines[pod_name] = timestamp(pod["metadata"]["deletionTimestamp"])
        for pod_name in deadlines.keys() - left.keys() - margins.keys():
            margins[pod_name] = (deadlines[pod_name] - now).total_seconds()
        return True if not left else None

    eventually(gone, 300, "every pod of the deleted run gone",
               lambda: cluster.diagnostics(namespace), interval=0.5)  # fmt: skip
    return margins


# Run in a pod: what a client without the run's certificate gets from the run's scheduler.
# A plain TCP connect first (a NetworkPolicy drops it: no answer within the timeout); when it
# connects, a Dask client over tcp:// and a TLS handshake without a client certificate. One
# line each: "<check>: <outcome> [exception]".
PROBE_SCRIPT = """
import socket, ssl, sys
from distributed import Client
host, port = sys.argv[1].rsplit(':', 1)
try:
    socket.create_connection((host, int(port)), timeout=10).close()
    print('connect: open')
except TimeoutError:
    sys.exit(print('connect: timeout'))
except OSError as e:
    sys.exit(print('connect: refused', type(e).__name__))
try:
    with Client(f'tcp://{host}:{port}', timeout=15, set_as_default=False):
        print('dask: connected')
except Exception as e:
    print('dask: refused', type(e).__name__)
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
try:
    with socket.create_connection((host, int(port)), timeout=15) as raw, \\
            context.wrap_socket(raw) as conn:
        print('tls: connected' if conn.recv(1) else 'tls: refused closed')
except (ssl.SSLError, ConnectionResetError) as e:
    print('tls: refused', type(e).__name__)
except TimeoutError:
    print('tls: connected (kept open)')
"""
ENFORCER_HINT = ("is NetworkPolicy enforced on this cluster? "
                 "(hack/local-cluster.sh network-policies on)")  # fmt: skip


def probe_pod(name: str, namespace: str, image: str, address: str,
              labels: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """A pod that runs PROBE_SCRIPT against `address` once."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "probe", "image": image, "imagePullPolicy": "Never",
            "command": ["python", "-c", PROBE_SCRIPT, address],
            "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}},
        }]},
    }  # fmt: skip


def probe(cluster: KubeCluster, pods: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Run the probe pods at once; each one's outcomes by check, in the order given."""
    for pod in pods:
        cluster.kubectl("apply", "--filename=-", stdin=json.dumps(pod))
    return [probe_outcomes(cluster, pod["metadata"]["name"], pod["metadata"]["namespace"])
            for pod in pods]  # fmt: skip


def probe_outcomes(cluster: KubeCluster, name: str, namespace: str) -> dict[str, str]:
    """Wait for a probe pod to finish; its outcomes by check."""

    def finished() -> bool | None:
        status = cluster.get("pod", name, f"--namespace={namespace}")["status"]
        return status.get("phase") in ("Succeeded", "Failed") or None

    eventually(finished, 180, f"the probe pod {namespace}/{name} to finish",
               lambda: cluster.diagnostics(namespace))  # fmt: skip
    log = cluster.kubectl("logs", name, f"--namespace={namespace}").stdout
    return dict(line.split(": ", 1) for line in log.strip().splitlines())


@pytest.fixture(params=[True, False], ids=["tls", "plain-tcp"])
def dask_tls(request: pytest.FixtureRequest, pulse_release: KubeCluster,
             image: str) -> Iterator[bool]:  # fmt: skip
    """Mutual TLS inside runs on (as the chart ships) or off (operator.daskTLS=false, as on a
    cluster whose mesh encrypts pod traffic), for the runs created meanwhile."""
    if request.param:
        yield True
        return
    install_release(pulse_release, image, "--set=operator.daskTLS=false")
    try:
        yield False
    finally:
        install_release(pulse_release, image)


def test_only_a_runs_own_pods_reach_its_dask_scheduler(
    run_namespace: str, pulse_release: KubeCluster, node_s3: MotoServer, image: str,
    dask_tls: bool, say: Say, tmp_path: Path,
) -> None:  # fmt: skip
    """While a run computes, a pod of another namespace cannot even connect to its scheduler:
    the run's NetworkPolicy drops it (kube-network-policies enforces it on this cluster). A
    pod of the run's namespace wearing the run's label gets through the network; with mutual
    TLS on it is still refused (plain Dask client and TLS without the run's certificate),
    with TLS off it connects (the policy was the only wall). The run itself Succeeds, with
    the numbers of a local run."""
    cluster = pulse_release
    name = "synthetic-guarded" if dask_tls else "synthetic-guarded-plain"
    stored = apply(cluster, long_run(name, workers=1))

    def computing() -> bool | None:
        status = phase(cluster, name)
        if status.get("phase") in ("Succeeded", "Failed"):
            raise AssertionError(f"{name} ended ({status['phase']}) before it was probed")
        return status.get("progress", {}).get("batchesCompleted", 0) > 0 or None

    eventually(computing, RUN_TIMEOUT_S, f"{name} computing",
               lambda: cluster.diagnostics(run_namespace))  # fmt: skip
    # The driver talks to its scheduler as the operator was told: tls:// or plain tcp://.
    scheme = "tls://" if dask_tls else "tcp://"
    job = cluster.get("job", f"{name}-driver", f"--namespace={run_namespace}")
    driver_args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert any(arg.startswith(f"--dask-scheduler-address={scheme}") for arg in driver_args), (
        driver_args
    )
    address = f"{dask_cluster(stored)}-scheduler.{run_namespace}.svc.cluster.local:8786"
    stranger_namespace = "pulse-e2e-stranger"
    cluster.kubectl("create", "namespace", stranger_namespace)
    try:
        stranger, insider = probe(cluster, [
            probe_pod("stranger", stranger_namespace, image, address, {}),
            probe_pod(f"{name}-insider", run_namespace, image, address, {LABEL_RUN: name}),
        ])  # fmt: skip
    finally:
        cluster.kubectl("delete", "namespace", stranger_namespace, "--wait", timeout=300)
        cluster.kubectl("delete", "pod", f"{name}-insider", f"--namespace={run_namespace}")
    say(f"{scheme} scheduler: a pod of another namespace {stranger}; "
        f"a pod with the run's label in its namespace {insider}")  # fmt: skip
    assert phase(cluster, name)["phase"] == "Running", "the run ended before the probes did"
    assert stranger == {"connect": "timeout"}, f"{stranger}: {ENFORCER_HINT}"
    assert insider["connect"] == "open", insider
    if dask_tls:
        refused = insider["dask"].startswith("refused") and insider["tls"].startswith("refused")
        assert refused, insider
    else:
        assert insider["dask"] == "connected", insider
    wait_for_phase(cluster, name, "Succeeded")
    assert_same_results(results_from_s3(node_s3, name), local_reference(stored, tmp_path))
