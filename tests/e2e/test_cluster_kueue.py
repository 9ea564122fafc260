"""Whole TrainingRuns admitted by the real Kueue on the real single-node cluster (docs/kueue.md).

Kueue v0.17.0 (built by hack/kueue.sh from the Go module proxy): its CRDs are applied to the
cluster of hack/local-cluster.sh and its manager runs as a process on this machine with the
cluster's admin kubeconfig, without webhooks (the route needs none: tests/kueue.py says why).
The chart is installed with kueue.enabled=true. Runs are real pods that write to S3 (moto on
the node's bridge); each run's numbers are compared with the same flags run locally in one
process. Each test deletes its namespace (runs, Workloads, LocalQueue) and its cluster-wide
queue objects; the module then stops the manager and deletes Kueue's CRDs and namespace, so
the shared cluster is left as it was. Admission latency and the operator's API requests are
printed for the README and docs/kueue.md.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import kueue
from tests.e2e.cluster import KubeCluster, eventually
from tests.e2e.conftest import (
    BUCKET,
    RELEASE_NAMESPACE,
    RUN_CPU,
    RUN_MEMORY,
    Say,
    chart_release,
    unavailable,
)
from tests.e2e.test_cluster import (
    EXAMPLE,
    LONG_RUN_RESOURCES,
    OPERATORS,
    RUN_TIMEOUT_S,
    assert_same_results,
    local_reference,
    long_run,
    namespace_with_credentials,
    phase,
    results_from_s3,
    wait_for_phase,
)
from tests.integration.s3.servers import MotoServer
from tests.kueue import KueueManager
from trainingrun_operator.constants import LABEL_RUN

pytestmark = pytest.mark.timeout(900)

QUEUE = "team"
# The ClusterQueue, ResourceFlavor and WorkloadPriorityClasses (<name>-low, <name>-high).
QUEUE_OBJECTS = "pulse-e2e-kueue"
# Every Dask pod requests this much (the driver the chart's runDefaults, RUN_CPU/RUN_MEMORY),
# so the quota below is exactly one run of one worker: driver + scheduler + worker.
DASK_REQUESTS = LONG_RUN_RESOURCES["requests"]
# Added to the pods by the admitted flavor; no node has the taint, so it only shows up.
TOLERATION = {"key": "pulse.dev/batch", "operator": "Exists", "effect": "NoSchedule"}
METRICS_PORT = 9090  # the chart's operator.metricsPort
RESTORED = re.compile(r"Stage (\w+): (\d+) of (\d+) tasks restored")


def one_run_quota() -> dict[str, str]:
    """cpu and memory of one run of one worker (driver + scheduler + worker)."""
    assert RUN_CPU.endswith("m") and DASK_REQUESTS["cpu"].endswith("m")
    assert RUN_MEMORY.endswith("Gi") and DASK_REQUESTS["memory"].endswith("Gi")
    cpu = int(RUN_CPU[:-1]) + 2 * int(DASK_REQUESTS["cpu"][:-1])
    memory = int(RUN_MEMORY[:-2]) + 2 * int(DASK_REQUESTS["memory"][:-2])
    return {"cpu": f"{cpu}m", "memory": f"{memory}Gi"}


@pytest.fixture(scope="module")
def kueue_manager(local_cluster: KubeCluster,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[KueueManager]:  # fmt: skip
    """Kueue's CRDs on the cluster and its manager running; both gone afterwards."""
    assets = kueue.find_assets()
    if assets is None:
        unavailable("no Kueue: run hack/kueue.sh (builds it once)", "PULSE_REQUIRE_CLUSTER")
    kueue.install_crds(local_cluster, assets)
    try:
        manager = KueueManager(assets, local_cluster.kubeconfig,
                               tmp_path_factory.mktemp("kueue")).start()  # fmt: skip
        try:
            yield manager
        finally:
            manager.stop()
    finally:
        kueue.remove_crds(local_cluster, assets)


@pytest.fixture(scope="module")
def kueue_release(local_cluster: KubeCluster, kueue_manager: KueueManager, image: str,
                  say: Say) -> Iterator[KubeCluster]:  # fmt: skip
    """The chart with kueue.enabled=true (after Kueue's CRDs: the operator watches Workloads)."""
    with chart_release(local_cluster, image, say, "--set=kueue.enabled=true") as release:
        yield release


@pytest.fixture
def queue_namespace(kueue_release: KubeCluster, kueue_manager: KueueManager,
                    node_s3: MotoServer) -> Iterator[str]:  # fmt: skip
    """A namespace with the S3 credentials and the LocalQueue `team` of a ClusterQueue with
    quota for exactly one run, whose flavor pins pods to the node by its hostname label and
    adds TOLERATION. Afterwards the namespace goes first (Kueue, still running, releases its
    Workloads), then the cluster-wide objects.
    """
    cluster = kueue_release
    (node,) = cluster.get("nodes")["items"]
    hostname = node["metadata"]["labels"]["kubernetes.io/hostname"]
    namespace = "pulse-e2e-kueue"
    objects = kueue.queue_objects(QUEUE_OBJECTS, namespace, QUEUE, one_run_quota(),
                                  {"kubernetes.io/hostname": hostname}, [TOLERATION])  # fmt: skip
    try:
        with namespace_with_credentials(cluster, node_s3, namespace):
            kueue.create_queue(cluster, objects)
            yield namespace
    finally:
        kueue.delete_queue(cluster, objects, wait=True)


def queued(manifest: dict[str, Any], priority: str | None = None) -> dict[str, Any]:
    """`manifest` in LocalQueue `team` (and WorkloadPriorityClass `priority`)."""
    labels = manifest["metadata"].setdefault("labels", {})
    labels["kueue.x-k8s.io/queue-name"] = QUEUE
    if priority:
        labels["kueue.x-k8s.io/priority-class"] = f"{QUEUE_OBJECTS}-{priority}"
    return manifest


def small_run(name: str, seed: int) -> dict[str, Any]:
    """The shipped example (one worker) with its own name, data seed and output."""
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = manifest["spec"]
    manifest["metadata"]["name"] = name
    spec["data"]["uri"] = re.sub(r"seed=\d+", f"seed={seed}", spec["data"]["uri"])
    spec["output"]["uri"] = f"s3://{BUCKET}/{name}"
    spec["dask"]["resources"] = {"requests": dict(DASK_REQUESTS)}
    return manifest


def apply_all(cluster: KubeCluster, namespace: str, manifests: list[dict[str, Any]]) -> None:
    """Apply the objects in one request-list (one kubectl call: "at once")."""
    listed = {"apiVersion": "v1", "kind": "List", "items": manifests}
    cluster.kubectl("apply", f"--namespace={namespace}", "--filename=-", stdin=json.dumps(listed))


def operator_requests(cluster: KubeCluster) -> collections.Counter[str]:
    """API requests of the operator's reconcile loop so far ("VERB resource" -> count) and its
    reconcile passes ("passes"), summed over its pods (read through the API server's proxy)."""
    total: collections.Counter[str] = collections.Counter()
    for pod in cluster.pods(RELEASE_NAMESPACE, OPERATORS):
        path = (f"/api/v1/namespaces/{RELEASE_NAMESPACE}/pods/{pod['metadata']['name']}:"
                f"{METRICS_PORT}/proxy/metrics")  # fmt: skip
        for family in text_string_to_metric_families(cluster.kubectl("get", "--raw", path).stdout):
            for sample in family.samples:
                if sample.name == "pulse_operator_api_requests_total":
                    total[f"{sample.labels['verb']} {sample.labels['resource']}"] += int(
                        sample.value)  # fmt: skip
                elif sample.name == "pulse_operator_reconcile_total":
                    total["passes"] += int(sample.value)
    return total


def route_cost(before: collections.Counter[str], after: collections.Counter[str]) -> str:
    """The requests made between two readings: Kueue objects one by one, then the totals."""
    made = after - before
    kueue_kinds = ("workloads", "resourceflavors", "workloadpriorityclasses")
    own = {key: n for key, n in sorted(made.items()) if key.split()[-1].startswith(kueue_kinds)}
    others = sum(n for key, n in made.items() if key != "passes" and key not in own)
    # Every pass that reads a run's children GETs its Job: the count of such passes.
    return (f"{json.dumps(own)}; other requests {others}, of which GET jobs "
            f"{made['GET jobs']}; reconcile passes (both replicas) {made['passes']}")


def pods_by_run(cluster: KubeCluster, namespace: str) -> dict[str, list[dict[str, Any]]]:
    """The namespace's pods (terminating ones too), by run."""
    found: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for pod in cluster.pods(namespace):
        found[pod["metadata"]["labels"].get(LABEL_RUN, "")].append(pod)
    return found


def get_tr(cluster: KubeCluster, namespace: str) -> dict[str, list[str]]:
    """`kubectl get tr -o wide`, row by run name."""
    table = cluster.kubectl("get", "trainingruns", f"--namespace={namespace}", "--output=wide")
    header, *rows = table.stdout.splitlines()
    assert header.split()[:2] == ["NAME", "PHASE"] and "QUEUE" in header.split(), header
    return {row.split()[0]: row.split() for row in rows}


def placed(pod: dict[str, Any], hostname: str) -> bool:
    """The pod carries the admitted flavor's node selector and toleration."""
    spec = pod["spec"]
    return (spec.get("nodeSelector", {}).get("kubernetes.io/hostname") == hostname
            and TOLERATION in spec.get("tolerations", []))  # fmt: skip


def test_three_runs_under_quota_for_one_run_run_one_after_another(
    kueue_release: KubeCluster, queue_namespace: str, node_s3: MotoServer, say: Say,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Three runs applied at once under quota for one: one runs while two are Queued (phase,
    Kueue's message, `kubectl get tr`) with no pods; each starts only after the previous one
    ended; never two admitted at once; every pod placed by the flavor; all three Succeed with
    the numbers of local runs. Prints admission latency and the operator's API requests.
    """
    cluster, namespace = kueue_release, queue_namespace
    names = ["kueue-a1", "kueue-a2", "kueue-a3"]
    hostname = cluster.get("nodes")["items"][0]["metadata"]["labels"]["kubernetes.io/hostname"]
    before = operator_requests(cluster)
    apply_all(cluster, namespace, [queued(small_run(name, seed))
                                   for seed, name in enumerate(names, start=7)])  # fmt: skip
    order: list[str] = []
    admitted_at: dict[str, float] = {}
    seen_pods: dict[str, dict[str, Any]] = {}
    table_while_queued: dict[str, list[str]] = {}

    def all_done() -> bool | None:
        """One look at pods, Workloads and runs (in this order: pods exist only after their
        Workload was admitted, so a later read of it must show that) and the checks that must
        hold at every moment."""
        pods = pods_by_run(cluster, namespace)
        stored = {w["metadata"]["name"]: w for w in cluster.get(
            "workloads.kueue.x-k8s.io", f"--namespace={namespace}")["items"]}  # fmt: skip
        workloads = {name: stored.get(kueue.workload_name(name), {}) for name in names}
        runs = {r["metadata"]["name"]: r.get("status", {})
                for r in cluster.get("trainingruns", f"--namespace={namespace}")["items"]}
        admitted = [name for name in names if kueue.has_condition(workloads[name], "Admitted")]
        holding = [name for name in admitted
                   if not kueue.has_condition(workloads[name], "Finished")]  # fmt: skip
        assert len(holding) <= 1, f"Kueue admitted {holding} at once: the quota is for one run"
        for name in sorted(set(admitted) - set(order),
                           key=lambda n: kueue.since(workloads[n], "Admitted")):  # fmt: skip
            order.append(name)
            admitted_at[name] = kueue.since(workloads[name], "Admitted")
        for name in names:
            assert name in admitted or not pods.get(name), f"{name} has pods before admission"
            status = runs.get(name, {})
            if status.get("phase") == "Failed":
                raise AssertionError(f"{name} failed: {status}\n{cluster.diagnostics(namespace)}")
            if status.get("phase") == "Queued":
                assert f"LocalQueue {QUEUE}" in status["message"], status
        for pod in (p for run_pods in pods.values() for p in run_pods):
            seen_pods.setdefault(pod["metadata"]["name"], pod)
        phases = sorted(status.get("phase", "") for status in runs.values())
        if not table_while_queued and phases.count("Queued") == 2 and "Running" in phases:
            table_while_queued.update(get_tr(cluster, namespace))
        return True if phases == ["Succeeded"] * len(names) else None

    eventually(all_done, 3 * RUN_TIMEOUT_S, "three queued runs Succeeded",
               lambda: cluster.diagnostics(namespace))  # fmt: skip
    after = operator_requests(cluster)
    assert sorted(order) == sorted(names), order
    assert sorted(row[1] for row in table_while_queued.values()) == ["Queued", "Queued",
                                                                     "Running"], table_while_queued
    assert all(QUEUE in row for row in table_while_queued.values()), table_while_queued
    # Each run starts only after the previous one ended: its admission and every pod of it
    # come at or after the previous run's completion (API timestamps, 1 s resolution).
    runs = {r["metadata"]["name"]: r
            for r in cluster.get("trainingruns", f"--namespace={namespace}")["items"]}
    for previous, current in itertools.pairwise(order):
        ended = kueue.seconds(runs[previous]["status"]["completionTime"])
        assert admitted_at[current] >= ended, (previous, current, admitted_at, ended)
        started = [kueue.seconds(p["metadata"]["creationTimestamp"]) for p in seen_pods.values()
                   if p["metadata"]["labels"].get(LABEL_RUN) == current]  # fmt: skip
        assert started and min(started) >= ended, (previous, current, started, ended)
    assert {p["metadata"]["labels"].get(LABEL_RUN) for p in seen_pods.values()} == set(names)
    unplaced = [name for name, pod in seen_pods.items() if not placed(pod, hostname)]
    assert not unplaced, f"pods without the flavor's node selector and toleration: {unplaced}"
    for name in names:
        assert_same_results(results_from_s3(node_s3, name),
                            local_reference(runs[name], tmp_path / name))  # fmt: skip
    figures = kueue.latency(cluster, namespace, order)
    say(f"kueue, 3 runs under quota for one, in admission order {order}; seconds (API "
        f"timestamps): {json.dumps(figures)}")  # fmt: skip
    say(f"kueue, operator API requests for the 3 runs: {route_cost(before, after)}")


def test_a_higher_priority_run_preempts_a_running_one_which_resumes_from_checkpoints(
    kueue_release: KubeCluster, queue_namespace: str, node_s3: MotoServer, say: Say,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A low-priority run computes (a map stage part done); a high-priority run is applied;
    Kueue preempts the low one: Queued with reason Preempted, its pods gone, its Job
    suspended, its DaskCluster deleted. The high run Succeeds; the low one is re-admitted,
    restores its checkpointed tasks, and Succeeds on one attempt with the numbers of an
    uninterrupted local run (as does the high one).
    """
    cluster, namespace = kueue_release, queue_namespace
    low, high = "kueue-low", "kueue-high"
    before = operator_requests(cluster)
    apply_all(cluster, namespace, [queued(long_run(low, workers=1), "low")])

    def computing() -> dict[str, Any] | None:
        """The low run Running with a map stage part done."""
        status = phase(cluster, low, namespace)
        if status.get("phase") in ("Succeeded", "Failed"):
            raise AssertionError(f"{low} ended ({status['phase']}) before it was preempted")
        progress = status.get("progress", {})
        under_way = 0 < progress.get("batchesCompleted", 0) < progress.get("batchesTotal", 0)
        return progress if status.get("phase") == "Running" and under_way else None

    progress = eventually(computing, RUN_TIMEOUT_S, f"{low} computing",
                          lambda: cluster.diagnostics(namespace), interval=0.5)  # fmt: skip
    apply_all(cluster, namespace, [queued(small_run(high, seed=21), "high")])
    applied = time.time()

    def preempted() -> tuple[dict[str, Any], dict[str, list[str]]] | None:
        """The low run's status once it shows Queued after preemption, and `kubectl get tr`."""
        status = phase(cluster, low, namespace)
        if status.get("phase") != "Queued":
            return None
        return status, get_tr(cluster, namespace)

    status, table = eventually(preempted, 120, f"{low} Queued after preemption",
                               lambda: cluster.diagnostics(namespace), interval=0.5)  # fmt: skip
    assert {c["reason"] for c in status["conditions"]} == {"Preempted"}, status
    assert status["message"].startswith("evicted by Kueue: Preempted"), status
    assert table[low][1] == "Queued", table
    evicted = cluster.get("workload.kueue.x-k8s.io", kueue.workload_name(low),
                          f"--namespace={namespace}")  # fmt: skip
    eviction = kueue.since(evicted, "Evicted")
    eventually(lambda: not pods_by_run(cluster, namespace).get(low) or None, 120,
               f"every pod of {low} gone", lambda: cluster.diagnostics(namespace),
               interval=0.5)  # fmt: skip
    pods_gone = time.time()
    job = cluster.get("job", f"{low}-driver", f"--namespace={namespace}")
    assert job["spec"]["suspend"] is True
    assert not cluster.get("daskclusters", f"--namespace={namespace}",
                           f"--selector={LABEL_RUN}={low}")["items"]  # fmt: skip

    done_high = wait_for_phase(cluster, high, "Succeeded", namespace=namespace)
    done_low = wait_for_phase(cluster, low, "Succeeded", namespace=namespace)
    after = operator_requests(cluster)
    assert done_low["attempts"] == 1, done_low  # a preemption is not a failed attempt
    log = cluster.kubectl("logs", f"job/{low}-driver", f"--namespace={namespace}").stdout
    restored = RESTORED.findall(log)
    assert any(int(n) > 0 for _, n, _ in restored), f"nothing restored from checkpoints:\n{log}"
    runs = {r["metadata"]["name"]: r
            for r in cluster.get("trainingruns", f"--namespace={namespace}")["items"]}
    for name in (high, low):
        assert_same_results(results_from_s3(node_s3, name),
                            local_reference(runs[name], tmp_path / name))  # fmt: skip

    workloads = {name: cluster.get("workload.kueue.x-k8s.io", kueue.workload_name(name),
                                   f"--namespace={namespace}") for name in (high, low)}  # fmt: skip
    high_created = kueue.seconds(runs[high]["metadata"]["creationTimestamp"])
    high_admitted = kueue.since(workloads[high], "Admitted")
    high_ended = kueue.seconds(done_high["completionTime"])
    low_readmitted = kueue.since(workloads[low], "Admitted")
    say(f"kueue preemption at {progress['summary']}: high applied -> low evicted "
        f"{eviction - high_created:.0f} s -> low's pods gone {pods_gone - applied:.1f} s "
        f"after the apply (test clock) -> high admitted {high_admitted - high_created:.0f} s; "
        f"high done -> low re-admitted {low_readmitted - high_ended:.0f} s; restored on "
        f"resume: {restored}")  # fmt: skip
    say(f"kueue, operator API requests for the preemption test: {route_cost(before, after)}")
