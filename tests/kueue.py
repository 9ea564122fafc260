"""Real Kueue for the tests of the Kueue route (docs/kueue.md), shared by two tiers: the k8s
tier (tests/k8s/test_kueue.py, envtest's API server) and the e2e tier
(tests/e2e/test_cluster_kueue.py, the single-node cluster of hack/local-cluster.sh).

Here: Kueue's CRDs, its manager as a process on this machine, the queue objects a test sets
up, and readers of Workloads and of the runs' admission timestamps. The manager is Kueue
v0.17.0's own binary, built by hack/kueue.sh from the Go module proxy.

The manager runs **without webhooks**. The route needs none: the operator writes each
Workload complete (pod sets, priority class and value), so Kueue's Workload defaulting and
validation webhooks have nothing to add, and the route uses none of Kueue's job
integrations (no Job, Pod or JobSet carries a queue label). So no webhook configuration is
registered and the API server never calls the manager. Its webhook server still starts
(Kueue registers handlers on it unconditionally and reports ready only once it listens),
on loopback with a throwaway certificate.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from tests.k8s.controlplane import LoggedProcess, Pki, die_with_parent, free_port

ROOT: Final = Path(__file__).resolve().parents[1]
SCRIPT: Final = ROOT / "hack" / "kueue.sh"
API: Final = "kueue.x-k8s.io/v1beta2"
# The manager's own namespace (its config's `namespace`; events and its Secrets would go there).
NAMESPACE: Final = "kueue-system"
READY_TIMEOUT_S: Final = 90.0
# Kueue v0.17 reads its metrics serving certificate from this fixed path whenever its
# internal certificate management is off (cmd/kueue/main.go; its Deployment mounts a Secret
# there), and exits without one. No config option moves it.
METRICS_CERTS: Final = "kueue/metrics/certs"
# Run in a mount namespace of the manager's own: /etc becomes a read-only overlay of the
# host's /etc under a layer ($1) that holds kueue/metrics/certs. The host's /etc is never
# written and the mount vanishes with the process. `exec` keeps the PID, so stopping the
# process stops the manager.
OVERLAY_ETC: Final = 'mount -t overlay overlay -o "lowerdir=$1:/etc" /etc && shift && exec "$@"'


class Kubectl(Protocol):
    """What both tiers' cluster objects offer: kubectl as the cluster admin."""

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl; raise on a non-zero exit when `check`."""


def find_assets() -> Path | None:
    """Kueue's manager and CRDs as hack/kueue.sh caches them (never builds), or None."""
    found = subprocess.run(["bash", str(SCRIPT), "find"], capture_output=True, text=True,
                           check=False, timeout=60)  # fmt: skip
    return Path(found.stdout.strip()) if found.returncode == 0 else None


def _crds(assets: Path) -> list[Path]:
    """Kueue's CRD files."""
    return sorted((assets / "crds").glob("*.yaml"))


def _crd_name(crd: Path) -> str:
    """The CRD's name from its file name (kueue.x-k8s.io_workloads.yaml -> workloads...)."""
    group, plural = crd.stem.split("_", 1)
    return f"{plural}.{group}"


def install_crds(cluster: Kubectl, assets: Path) -> None:
    """Apply Kueue's CRDs, wait until they serve, and create Kueue's namespace."""
    # Server-side: the Workload CRD is too large for client-side apply's annotation.
    cluster.kubectl("apply", "--server-side", *(f"--filename={crd}" for crd in _crds(assets)))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *(f"crd/{_crd_name(crd)}" for crd in _crds(assets)))  # fmt: skip
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)  # exists: fine


def remove_crds(cluster: Kubectl, assets: Path) -> None:
    """Delete Kueue's CRDs (and so every Kueue object) and its namespace, and wait."""
    cluster.kubectl("delete", "--wait", "--ignore-not-found", "--timeout=120s",
                    *(f"--filename={crd}" for crd in _crds(assets)))  # fmt: skip
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait", "--ignore-not-found",
                    "--timeout=120s")  # fmt: skip


def answers(url: str) -> bool:
    """True when `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def in_private_etc(layer: Path, command: Sequence[str]) -> list[str]:
    """`command` run with /etc overlaid by `layer` in a mount namespace of its own (see
    OVERLAY_ETC). As root a mount namespace is enough; otherwise a user namespace (the
    caller mapped to root in it) allows the mount."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--mount", "--propagation", "private", "--",
            "sh", "-c", OVERLAY_ETC, "sh", str(layer), *command]  # fmt: skip


class KueueManager(LoggedProcess):
    """Kueue's manager as a process on this machine, against the API server of `kubeconfig`."""

    def __init__(self, assets: Path, kubeconfig: Path, work: Path) -> None:
        """Prepare; nothing runs until start()."""
        self.assets = assets
        self.kubeconfig = kubeconfig
        self.work = work
        self.log_path = work / "kueue.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _configure(self) -> tuple[Path, Path, str]:
        """Write the certificates and the config; return the /etc layer, config, health URL."""
        cert, key = Pki(self.work / "pki").issue("kueue", "kueue", server=True)
        webhook_certs = self.work / "webhook-certs"
        layer = self.work / "etc-layer"
        for directory in (webhook_certs, layer / METRICS_CERTS):
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copy(cert, directory / "tls.crt")
            shutil.copy(key, directory / "tls.key")
        health = free_port()
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
            "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
            "webhook": {"port": free_port(), "host": "127.0.0.1", "certDir": str(webhook_certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": ["batch/job"]},
        }  # fmt: skip
        config_file = self.work / "config.yaml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        return layer, config_file, f"http://127.0.0.1:{health}/readyz"

    def start(self) -> KueueManager:
        """Start the manager; return once it is ready (raise with its log if it is not)."""
        layer, config_file, ready_url = self._configure()
        manager = [str(self.assets / "kueue"), f"--config={config_file}",
                   "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=2"]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                in_private_etc(layer, manager), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not answers(ready_url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"Kueue did not become ready:\n{self.log_tail()}")
            time.sleep(0.5)
        return self


def queue_objects(
    name: str, namespace: str, local_queue: str, quota: Mapping[str, str],
    node_labels: Mapping[str, str], tolerations: Sequence[Mapping[str, str]],
) -> list[dict[str, Any]]:  # fmt: skip
    """A ResourceFlavor `name` (node labels, tolerations), a ClusterQueue `name` with `quota`
    (resource -> nominal quota) for `namespace` only, preempting lower priorities within it,
    the LocalQueue `local_queue` in `namespace`, and WorkloadPriorityClasses `name`-low (10)
    and `name`-high (1000).
    """
    return [
        {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": name},
         "spec": {"nodeLabels": dict(node_labels), "tolerations": [dict(t) for t in tolerations]}},
        {"apiVersion": API, "kind": "ClusterQueue", "metadata": {"name": name},
         "spec": {
             "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
             "preemption": {"withinClusterQueue": "LowerPriority"},
             "resourceGroups": [{"coveredResources": sorted(quota), "flavors": [
                 {"name": name, "resources": [{"name": resource, "nominalQuota": amount}
                                              for resource, amount in sorted(quota.items())]}]}],
         }},
        {"apiVersion": API, "kind": "LocalQueue",
         "metadata": {"name": local_queue, "namespace": namespace},
         "spec": {"clusterQueue": name}},
        {"apiVersion": API, "kind": "WorkloadPriorityClass",
         "metadata": {"name": f"{name}-low"}, "value": 10},
        {"apiVersion": API, "kind": "WorkloadPriorityClass",
         "metadata": {"name": f"{name}-high"}, "value": 1000},
    ]  # fmt: skip


def _target(manifest: Mapping[str, Any]) -> list[str]:
    """kubectl arguments naming the object: kind.group/name and its namespace if it has one."""
    meta = manifest["metadata"]
    scope = [f"--namespace={meta['namespace']}"] if "namespace" in meta else []
    return [f"{manifest['kind'].lower()}.kueue.x-k8s.io/{meta['name']}", *scope]


def create_queue(cluster: Kubectl, objects: Sequence[Mapping[str, Any]]) -> None:
    """Apply the queue objects and wait until the ClusterQueue and LocalQueue are Active."""
    for manifest in objects:
        cluster.kubectl("apply", "--server-side", "--field-manager=pulse-tests", "--filename=-",
                        stdin=json.dumps(manifest))  # fmt: skip
    for manifest in objects:
        if manifest["kind"] in ("ClusterQueue", "LocalQueue"):
            cluster.kubectl("wait", "--for=condition=Active", "--timeout=60s", *_target(manifest))


def delete_queue(cluster: Kubectl, objects: Sequence[Mapping[str, Any]], wait: bool) -> None:
    """Delete the queue objects, newest first; with `wait`, until they are gone (Kueue must
    run: it holds finalizers on them while Workloads use them)."""
    for manifest in reversed(objects):
        cluster.kubectl("delete", *_target(manifest), f"--wait={str(wait).lower()}",
                        "--ignore-not-found", "--timeout=120s")  # fmt: skip


def workload_name(run: str) -> str:
    """The Workload the operator keeps for the run `run` (kueue.workload_name)."""
    return f"trainingrun-{run}"


def has_condition(found: Mapping[str, Any], kind: str) -> bool:
    """The object's condition `kind` is True."""
    return any(c["type"] == kind and c["status"] == "True"
               for c in (found.get("status") or {}).get("conditions") or [])  # fmt: skip


def seconds(text: str) -> float:
    """A Kubernetes timestamp as seconds since the epoch."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def since(found: Mapping[str, Any], kind: str) -> float:
    """When the object's condition `kind` last changed."""
    conditions = (found.get("status") or {}).get("conditions") or []
    return seconds(next(c for c in conditions if c["type"] == kind)["lastTransitionTime"])


def _items(cluster: Kubectl, resource: str, namespace: str) -> list[dict[str, Any]]:
    """Every object of `resource` in `namespace`."""
    listed = cluster.kubectl("get", resource, f"--namespace={namespace}", "--output=json")
    found: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return found


def latency(cluster: Kubectl, namespace: str, order: Sequence[str]) -> dict[str, list[float]]:
    """Per run of `order` (the order Kueue admitted them), from the API server's timestamps
    (1 s resolution):

    - run -> Workload: the run created -> its Workload created (the operator's reaction);
    - ready -> admitted: the run created, or the previous run of `order` finished, whichever
      is later -> the Workload's Admitted condition (Kueue's reaction);
    - admitted -> DaskCluster: -> the operator's CreateCluster event;
    - admitted -> Running: -> the run's first Running event (pods started, driver running).
    """
    runs = {r["metadata"]["name"]: r for r in _items(cluster, "trainingruns", namespace)}
    workloads = {w["metadata"]["name"]: w
                 for w in _items(cluster, "workloads.kueue.x-k8s.io", namespace)}  # fmt: skip
    events = _items(cluster, "events", namespace)

    def first_event(run: str, reason: str) -> float:
        return min(seconds(e.get("firstTimestamp") or e["eventTime"]) for e in events
                   if e["involvedObject"]["name"] == run and e["reason"] == reason)  # fmt: skip

    figures: dict[str, list[float]] = {"run -> Workload": [], "ready -> admitted": [],
                                       "admitted -> DaskCluster": [], "admitted -> Running": []}
    ready_since = 0.0
    for name in order:
        run, found = runs[name], workloads[workload_name(name)]
        created = seconds(run["metadata"]["creationTimestamp"])
        admitted = since(found, "Admitted")
        figures["run -> Workload"].append(seconds(found["metadata"]["creationTimestamp"]) - created)
        figures["ready -> admitted"].append(admitted - max(created, ready_since))
        figures["admitted -> DaskCluster"].append(first_event(name, "CreateCluster") - admitted)
        figures["admitted -> Running"].append(first_event(name, "Running") - admitted)
        ready_since = seconds(run["status"]["completionTime"])
    return figures
