"""Two operator replicas, one Lease: the standby does nothing, and takes over when the leader dies.

Each replica is a real ``pulse-operator`` process under the operator ServiceAccount's RBAC
(manifests/base, including the Role on the Lease), against the real API server, Job
controller, garbage collector and Dask controller. Every Job and DaskCluster the namespace
ever holds is recorded by ``kubectl get --watch`` from before the first run exists, so a
child created and deleted again between two looks is still counted.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainingrun_operator.constants import DEFAULT_NAMESPACE, LABEL_RUN, LEASE_NAME, OPERATOR_NAME

from .conftest import OperatorProcess, _python
from .controlplane import ControlPlane, KubectlError, free_port
from .kubelet import dask_cluster, eventually, get, items, set_phase
from .test_operator_crd import training_run
from .test_operator_lifecycle import WAIT_S, wait_phase, wait_workload
from .test_operator_metrics import scrape, value

pytestmark = pytest.mark.k8s

# The chart's defaults (controller-runtime's): a standby takes over 15 s after the last renewal.
LEASE_DURATION_S = 15.0
RETRY_PERIOD_S = 2.0
# Longest wait for the next of the 20 runs to finish (each waits for the one before it).
STALL_S = 120.0


class Replicas:
    """Starts operator replicas that elect a leader on the operator's Lease."""

    def __init__(
        self, plane: ControlPlane, namespace: str, log_dir: Path, timing: tuple[float, ...]
    ) -> None:
        """Replicas watching `namespace`; `timing` = lease duration, renew deadline, retry."""
        self.plane, self.namespace, self.log_dir = plane, namespace, log_dir
        self.timing = timing
        self.kubeconfig = plane.kubeconfig_for_service_account(DEFAULT_NAMESPACE, OPERATOR_NAME)
        self.started: list[OperatorProcess] = []

    def start(self, identity: str) -> OperatorProcess:
        """One more replica, named `identity` in the Lease."""
        liveness = f"http://127.0.0.1:{free_port()}/healthz"
        metrics_port = free_port()
        duration, deadline, retry = self.timing
        args = [
            _python(), "-m", "trainingrun_operator.main", f"--namespace={self.namespace}",
            "--resync-seconds=1", "--log-level=DEBUG", f"--liveness-endpoint={liveness}",
            f"--metrics-port={metrics_port}", "--leader-election",
            f"--lease-namespace={DEFAULT_NAMESPACE}", f"--identity={identity}",
            f"--lease-duration-seconds={duration}", f"--renew-deadline-seconds={deadline}",
            f"--retry-period-seconds={retry}",
        ]  # fmt: skip
        process = OperatorProcess(identity, args, self.kubeconfig, self.log_dir, liveness,
                                  f"http://127.0.0.1:{metrics_port}/metrics")  # fmt: skip
        self.started.append(process.start())
        return process

    def holder(self) -> str:
        """The Lease's holder identity ('' when free or absent)."""
        lease = get(self.plane, "lease", LEASE_NAME, DEFAULT_NAMESPACE) or {}
        holder: str = (lease.get("spec") or {}).get("holderIdentity") or ""
        return holder

    def wait_holder(self, identity: str, timeout: float = WAIT_S) -> float:
        """Wait until `identity` holds the Lease; the monotonic time it was seen to."""
        eventually(lambda: self.holder() == identity, timeout, f"{identity} to hold the Lease")
        return time.monotonic()


def leader_gauge(replica: OperatorProcess) -> float | None:
    """pulse_operator_leader of `replica` (None while its metrics server is not up)."""
    try:
        return value(scrape(replica), "pulse_operator_leader")
    except (urllib.error.URLError, ConnectionError):
        return None


def passes(replica: OperatorProcess) -> float:
    """Reconcile passes `replica` has made, whatever their outcome."""
    samples = scrape(replica)
    return sum(
        value(samples, "pulse_operator_reconcile_total", outcome=outcome) or 0.0
        for outcome in ("success", "error")
    )


@pytest.fixture
def replicas(
    pulse_install: ControlPlane, dask_controller: OperatorProcess, namespace: str, tmp_path: Path
) -> Iterator[Replicas]:
    """Replicas with the chart's Lease timing; all stopped and the Lease deleted afterwards."""
    plane = pulse_install
    plane.kubectl("delete", "lease", LEASE_NAME, f"--namespace={DEFAULT_NAMESPACE}",
                  "--ignore-not-found")  # fmt: skip
    group = Replicas(plane, namespace, tmp_path, (LEASE_DURATION_S, 10.0, RETRY_PERIOD_S))
    yield group
    for process in group.started:
        process.stop(kill=True)
    plane.kubectl("delete", "lease", LEASE_NAME, f"--namespace={DEFAULT_NAMESPACE}",
                  "--ignore-not-found")  # fmt: skip


class ChildLedger:
    """Every (kind, name, uid) of the namespace's Jobs and DaskClusters, from watch streams."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        """Start one `kubectl get --watch` per kind."""
        self.seen: set[tuple[str, str, str]] = set()
        self.lock = threading.Lock()
        self.watchers: list[subprocess.Popen[str]] = []
        self.readers: list[threading.Thread] = []
        for kind in ("jobs.batch", "daskclusters.kubernetes.dask.org"):
            command = [
                str(plane.assets_dir / "kubectl"), f"--kubeconfig={plane.admin_kubeconfig}",
                f"--cache-dir={plane.work_dir / 'kubectl-cache'}", "get", kind,
                f"--namespace={namespace}", "--watch", "--no-headers",
                "--output=custom-columns=NAME:.metadata.name,UID:.metadata.uid",
            ]  # fmt: skip
            watcher = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            reader = threading.Thread(target=self._read, args=(kind, watcher), daemon=True)
            reader.start()
            self.watchers.append(watcher)
            self.readers.append(reader)

    def _read(self, kind: str, watcher: subprocess.Popen[str]) -> None:
        """Record each object the stream shows."""
        assert watcher.stdout is not None
        for line in watcher.stdout:
            name, uid = line.split()
            with self.lock:
                self.seen.add((kind.split(".")[0], name, uid))

    def children(self, kind: str) -> dict[str, set[str]]:
        """Name -> UIDs ever seen of `kind` ('jobs' or 'daskclusters')."""
        found: dict[str, set[str]] = {}
        with self.lock:
            for seen_kind, name, uid in self.seen:
                if seen_kind == kind:
                    found.setdefault(name, set()).add(uid)
        return found

    def stop(self) -> None:
        """End the watch streams (each by its own process)."""
        for watcher in self.watchers:
            watcher.terminate()
            watcher.wait(10)
        for reader in self.readers:
            reader.join(10)
        for watcher in self.watchers:
            assert watcher.stdout is not None
            watcher.stdout.close()


@contextlib.contextmanager
def ledger(plane: ControlPlane, namespace: str) -> Iterator[ChildLedger]:
    """A ChildLedger for the block."""
    recorded = ChildLedger(plane, namespace)
    try:
        yield recorded
    finally:
        recorded.stop()


def test_the_standby_waits_and_takes_over_when_the_leader_is_killed(
    replicas: Replicas, namespace: str
) -> None:
    """SIGKILL of the leader mid-run: the standby holds the Lease within lease duration +
    retry period, finishes the run, and the run had exactly one Job and one DaskCluster."""
    plane = replicas.plane
    first = replicas.start("replica-a")
    replicas.wait_holder("replica-a")
    second = replicas.start("replica-b")
    eventually(lambda: leader_gauge(second) == 0, WAIT_S, "replica-b to stand by")
    with ledger(plane, namespace) as children:
        plane.apply(training_run(namespace))
        driver = wait_workload(plane, namespace)
        set_phase(plane, driver, "Running")
        wait_phase(plane, namespace, "Running")
        # While the leader lives, the standby makes no pass at all (and holds no run series).
        assert passes(second) == 0 and passes(first) > 0
        assert leader_gauge(second) == 0 and leader_gauge(first) == 1
        assert value(scrape(second), "pulse_trainingruns", phase="Running") == 0

        first.stop(kill=True)
        killed = time.monotonic()
        took_over = replicas.wait_holder("replica-b", timeout=LEASE_DURATION_S + 30)
        failover = took_over - killed
        print(f"\nfailover (SIGKILL of the leader -> standby holds the Lease): {failover:.1f} s")
        assert failover <= LEASE_DURATION_S + RETRY_PERIOD_S + 2.0
        eventually(lambda: leader_gauge(second) == 1, WAIT_S, "replica-b to lead")

        set_phase(plane, driver, "Succeeded")
        done = wait_phase(plane, namespace, "Succeeded")
        assert done["attempts"] == 1
        assert passes(second) > 0
    assert children.children("jobs") == {
        "run-driver": {driver["metadata"]["ownerReferences"][0]["uid"]}
    }
    cluster = dask_cluster(plane, namespace)
    assert list(children.children("daskclusters")) == [cluster]
    assert len(children.children("daskclusters")[cluster]) == 1


def test_a_leader_that_exits_hands_over_at_once(replicas: Replicas) -> None:
    """SIGTERM: the leader releases the Lease on its way out; the standby takes it within
    about one retry period instead of waiting out the lease duration."""
    first = replicas.start("replica-a")
    replicas.wait_holder("replica-a")
    second = replicas.start("replica-b")
    eventually(lambda: leader_gauge(second) == 0, WAIT_S, "replica-b to stand by")
    first.stop()
    stopped = time.monotonic()
    handover = replicas.wait_holder("replica-b", timeout=LEASE_DURATION_S) - stopped
    print(f"\nhandover after SIGTERM of the leader: {handover:.1f} s")
    assert handover < LEASE_DURATION_S / 2


def _play_kubelet(plane: ControlPlane, namespace: str) -> None:
    """One round of kubelet: Dask pods start running, driver pods finish (exit 0)."""
    for pod in items(plane, "pods", namespace, LABEL_RUN):
        if pod["metadata"].get("deletionTimestamp") or pod["status"].get("phase") not in (
            None, "Pending",
        ):  # fmt: skip
            continue
        is_driver = "batch.kubernetes.io/job-name" in pod["metadata"]["labels"]
        with contextlib.suppress(KubectlError):  # deleted meanwhile
            set_phase(plane, pod, "Succeeded" if is_driver else "Running")


@pytest.mark.timeout(900)  # 20 runs start one at a time on a shared 2-core machine
def test_twenty_runs_through_repeated_failovers_get_one_cluster_and_one_job_each(
    replicas: Replicas, namespace: str
) -> None:
    """20 runs created while the leader is killed (SIGKILL) every few seconds and replaced by a
    new standby: all succeed, each with exactly one DaskCluster and one driver Job ever, and
    one driver attempt."""
    plane = replicas.plane
    replicas.timing = (3.0, 2.0, 0.5)  # short Leases: many failovers in a short test
    count, kills = 20, 0
    leader = replicas.start("replica-0")
    replicas.wait_holder("replica-0")
    standby = replicas.start("replica-1")
    names = [f"run-{index:02d}" for index in range(count)]
    with ledger(plane, namespace) as children:
        # Fail on a stall, not on a slow machine: some run must finish every STALL_S.
        progressed, done_before = time.monotonic(), 0
        next_kill = time.monotonic() + 4
        created = 0
        while True:
            if created < count:  # about one a second: the kills fall between creations
                plane.apply(training_run(namespace, names[created], dask={"workers": 1}))
                created += 1
            _play_kubelet(plane, namespace)
            runs: list[dict[str, Any]] = plane.kubectl_json(
                "get", "trainingruns", f"--namespace={namespace}"
            )["items"]
            finished = [r for r in runs if (r.get("status") or {}).get("phase") == "Succeeded"]
            if len(finished) == count:
                break
            if len(finished) > done_before:
                progressed, done_before = time.monotonic(), len(finished)
            stalled = time.monotonic() - progressed
            assert stalled < STALL_S, (
                f"{len(finished)} of {count} runs finished, none for {stalled:.0f} s"
            )
            if time.monotonic() > next_kill and replicas.holder() == leader.name:
                leader.stop(kill=True)
                kills += 1
                leader, standby = standby, replicas.start(f"replica-{kills + 1}")
                next_kill = time.monotonic() + (5 if created < count else 15)
            time.sleep(0.5)
    print(f"\n{count} runs succeeded through {kills} leader kills")
    assert kills >= 3
    for run in runs:
        assert run["status"]["attempts"] == 1, run["metadata"]["name"]
    expected = {
        "jobs": [f"{run['metadata']['name']}-driver" for run in runs],
        "daskclusters": [
            f"{run['metadata']['name']}-dask-{run['metadata']['uid'][:8]}" for run in runs
        ],
    }
    for kind, names_of_kind in expected.items():
        seen = children.children(kind)
        assert sorted(seen) == sorted(names_of_kind), kind
        duplicated = {name: uids for name, uids in seen.items() if len(uids) != 1}
        assert not duplicated, f"{kind} created more than once: {duplicated}"
