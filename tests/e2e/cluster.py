"""The e2e tier's Kubernetes: the single node of hack/local-cluster.sh, driven by kubectl/helm.

Everything here is the real thing: pods run the project image in containerd, Services go
through kube-proxy, names resolve through CoreDNS. The helpers only wrap the command line
tools (argument lists, never a shell) and poll with bounded waits that report what the
cluster looked like when they gave up.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "local-cluster.sh"
T = TypeVar("T")


class ClusterError(RuntimeError):
    """A kubectl or helm call failed, or a wait ran out."""


@dataclass(frozen=True)
class KubeCluster:
    """A running cluster: its admin kubeconfig and the kubectl/helm to use with it."""

    kubeconfig: Path
    bin_dir: Path

    @property
    def node_ip(self) -> str:
        """The node's (and API server's) address, on the cluster's own bridge."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        host = urllib.parse.urlsplit(config["clusters"][0]["cluster"]["server"]).hostname
        assert host is not None
        return host

    def _run(self, tool: str, args: tuple[str, ...], stdin: str | None, timeout: float,
             check: bool) -> subprocess.CompletedProcess[str]:  # fmt: skip
        command = [str(self.bin_dir / tool), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ClusterError(f"{tool} {' '.join(args)} exited {result.returncode}: "
                               f"{result.stderr.strip()}")  # fmt: skip
        return result

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120,
                check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run kubectl as the cluster admin; raise ClusterError on failure if `check`."""
        return self._run("kubectl", args, stdin, timeout, check)

    def helm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run helm against the cluster; raise ClusterError on failure."""
        return self._run("helm", args, None, timeout, True)

    @contextmanager
    def following_logs(self, namespace: str, pods: list[str], folder: Path
                       ) -> Iterator[dict[str, Path]]:  # fmt: skip
        """Stream each pod's log to `folder/<pod>.log` while inside (what a pod said while it
        stopped is gone with the pod); yields the files by pod name."""
        files = {pod: folder / f"{pod}.log" for pod in pods}
        followers = []
        for pod, path in files.items():
            with path.open("wb") as log:
                followers.append(subprocess.Popen(
                    [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", "logs",
                     "--follow", "--timestamps", pod, f"--namespace={namespace}"],
                    stdout=log, stderr=subprocess.STDOUT,
                ))  # fmt: skip
        try:
            yield files
        finally:
            for follower in followers:
                follower.terminate()
                follower.wait(timeout=30)

    def get(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, decoded."""
        return json.loads(self.kubectl("get", *args, "--output=json").stdout)

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        """The pods of `namespace` matching the label `selector`, still present or terminating."""
        items: list[dict[str, Any]] = self.get(
            "pods", f"--namespace={namespace}", f"--selector={selector}"
        )["items"]
        return items

    def diagnostics(self, namespace: str) -> str:
        """What a failing test should show: pods, events, and the logs of every pod."""
        objects = "pods,jobs,daskclusters,trainingruns"
        listed = self.kubectl("get", objects, f"--namespace={namespace}", "--output=wide",
                              check=False)  # fmt: skip
        events = self.kubectl("get", "events", f"--namespace={namespace}",
                              "--sort-by=.lastTimestamp", check=False)  # fmt: skip
        parts = [listed.stdout, events.stdout[-4000:]]
        for pod in self.pods(namespace):
            name = pod["metadata"]["name"]
            logs = self.kubectl("logs", name, "--namespace", namespace, "--all-containers",
                                "--tail=30", check=False)  # fmt: skip
            parts.append(f"--- logs of {name} ---\n{logs.stdout}{logs.stderr}")
        return "\n".join(parts)


def eventually(probe: Callable[[], T | None], timeout: float, what: str,
               explain: Callable[[], str] = lambda: "", interval: float = 1.0) -> T:  # fmt: skip
    """Poll `probe` until it returns something; fail with `explain()` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not reached within {timeout:.0f} s\n{explain()}")
        time.sleep(interval)


def timestamp(text: str) -> datetime.datetime:
    """An API timestamp (RFC 3339, Z) as an aware datetime."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def pod_start_seconds(pod: dict[str, Any]) -> float | None:
    """Seconds from the pod's creation to its first container starting, if it started."""
    for status in pod.get("status", {}).get("containerStatuses", []):
        state = status.get("state", {})
        started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
        if started:
            created = timestamp(pod["metadata"]["creationTimestamp"])
            return (timestamp(started) - created).total_seconds()
    return None
