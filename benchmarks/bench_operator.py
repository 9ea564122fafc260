"""Load on the TrainingRun operator: N runs applied at once against a real API server.

For each N it starts a fresh test control plane (tests/k8s/controlplane.py: etcd,
kube-apiserver, kube-controller-manager), installs the CRDs and RBAC of manifests/base,
starts the operator as a subprocess under its ServiceAccount, applies N TrainingRuns in
one ``kubectl apply`` and measures:

- until every run has its workload (driver Job and DaskCluster) created, and until every
  run shows a phase in its status;
- reconcile latency: passes, mean and maximum seconds per pass, from the operator's own
  ``/healthz`` probe (``reconcile`` metrics);
- operator memory: resident set size before the runs and its peak afterwards (VmHWM).

The dask-kubernetes controller is not started (``--with-dask-controller`` adds it), so
the figures are the operator's own.

    eval "$(hack/envtest.sh)"; python benchmarks/bench_operator.py --runs 10,50,200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.k8s.controlplane import ControlPlane, free_port  # noqa: E402
from trainingrun_operator.constants import (  # noqa: E402
    DASK_CONTROLLER_NAME,
    DEFAULT_NAMESPACE,
    OPERATOR_NAME,
)
from trainingrun_operator.manifests import build_install  # noqa: E402

NAMESPACE = "bench"
TIMEOUT_S = 600.0
PROBE_MAX_AGE_S = 10.0


@dataclass(frozen=True)
class Result:
    """Figures of one N."""

    runs: int
    workload_s: float
    status_s: float
    passes: int
    mean_ms: float
    max_ms: float
    rss_before_mb: float
    rss_peak_mb: float
    cpu_s: float


def memory_mb(pid: int, field: str) -> float:
    """VmRSS or VmHWM of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def training_runs(count: int) -> dict[str, Any]:
    """A v1 List of `count` TrainingRuns."""
    runs = [
        {
            "apiVersion": "pulse.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": {"name": f"run-{index:04d}", "namespace": NAMESPACE},
            "spec": {"output": {"uri": f"s3://results/run-{index:04d}"}},
        }
        for index in range(count)
    ]
    return {"apiVersion": "v1", "kind": "List", "items": runs}


def count(plane: ControlPlane, resource: str, predicate: str = "") -> int:
    """How many objects of `resource` are in the namespace (matching a jsonpath predicate)."""
    if not predicate:
        names = plane.kubectl("get", resource, f"--namespace={NAMESPACE}", "--output=name").stdout
        return len(names.split())
    listed = plane.kubectl(
        "get", resource, f"--namespace={NAMESPACE}", f"--output=jsonpath={predicate}"
    ).stdout
    return len(listed.split())


def wait_for(condition: Any, began: float) -> float:
    """Seconds since `began` when `condition()` first holds."""
    while not condition():
        if time.monotonic() - began > TIMEOUT_S:
            raise TimeoutError(f"not done after {TIMEOUT_S:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - began


def start(plane: ControlPlane, name: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A controller subprocess under its ServiceAccount."""
    kubeconfig = plane.kubeconfig_for_service_account(DEFAULT_NAMESPACE, name)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    with log.open("wb") as output:
        return subprocess.Popen(args, env=env, stdout=output, stderr=subprocess.STDOUT)


def measure(assets: Path, runs: int, with_dask: bool, resync: float) -> Result:
    """One fresh control plane, one operator, `runs` TrainingRuns."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-operator-") as folder,
        ControlPlane(assets, Path(folder)) as plane,
    ):
        install = build_install()
        for file in ("crd.yaml", "dask-crds.yaml", "namespace.yaml", "rbac.yaml"):
            for manifest in install[file]:
                plane.apply(manifest)
        plane.kubectl("wait", "--for=condition=Established", "crd/trainingruns.pulse.dev")
        plane.kubectl("create", "namespace", NAMESPACE)
        plane.kubectl("wait", "--for=create", "serviceaccount/default", f"--namespace={NAMESPACE}")
        processes = []
        if with_dask:
            dask = [
                sys.executable,
                "-m",
                "kopf",
                "run",
                "--standalone",
                "--all-namespaces",
                "-m",
                "dask_kubernetes.operator.controller",
            ]
            processes.append(start(plane, DASK_CONTROLLER_NAME, dask, Path(folder) / "dask.log"))
        liveness = f"http://127.0.0.1:{free_port()}/healthz"
        operator = start(
            plane,
            OPERATOR_NAME,
            [
                sys.executable,
                "-m",
                "trainingrun_operator.main",
                f"--namespace={NAMESPACE}",
                f"--resync-seconds={resync}",
                "--log-level=WARNING",
                f"--liveness-endpoint={liveness}",
            ],
            Path(folder) / "operator.log",
        )
        processes.append(operator)
        try:
            wait_for(lambda: _probe(liveness) is not None, time.monotonic())
            rss_before = memory_mb(operator.pid, "VmRSS")
            cpu_before = cpu_seconds(operator.pid)
            began = time.monotonic()
            plane.kubectl(
                "apply", "--server-side", "--filename=-", stdin=json.dumps(training_runs(runs))
            )
            workload = wait_for(
                lambda: count(plane, "jobs") == runs and count(plane, "daskclusters") == runs, began
            )
            phased = wait_for(
                lambda: count(plane, "trainingruns", "{.items[*].status.phase}") == runs, began
            )
            # kopf caches probe results for 10 s: wait until the startup answer is stale.
            time.sleep(max(0.0, PROBE_MAX_AGE_S - (time.monotonic() - began) + 0.5))
            metrics = (_probe(liveness) or {})["reconcile"]
            cpu = cpu_seconds(operator.pid) - cpu_before
            return Result(
                runs,
                workload,
                phased,
                int(metrics["passes"]),
                1000 * metrics["seconds_mean"],
                1000 * metrics["seconds_max"],
                rss_before,
                memory_mb(operator.pid, "VmHWM"),
                cpu,
            )
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(30)


def _probe(url: str) -> dict[str, Any] | None:
    """The operator's probe results, or None while it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            decoded: dict[str, Any] = json.loads(response.read())
            return decoded
    except OSError:
        return None


def main() -> None:
    """Measure every N and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", default="10,50,200", help="comma-separated N (default: 10,50,200)"
    )
    parser.add_argument("--resync-seconds", type=float, default=10.0, help="operator resync period")
    parser.add_argument(
        "--with-dask-controller", action="store_true", help="also run dask-kubernetes"
    )
    args = parser.parse_args()
    found = subprocess.run(
        ["bash", str(REPO / "hack" / "envtest.sh"), "find"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        sys.exit('no control-plane binaries: run `eval "$(hack/envtest.sh)"` first')
    assets = Path(found.stdout.strip())
    header = ("runs", "workload s", "status s", "passes", "mean ms", "max ms", "RSS MiB",
              "peak MiB", "CPU s")  # fmt: skip
    widths = (5, 10, 9, 7, 8, 8, 8, 9, 6)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    for runs in (int(n) for n in args.runs.split(",")):
        r = measure(assets, runs, args.with_dask_controller, args.resync_seconds)
        print(
            f"{r.runs:>5} {r.workload_s:>10.2f} {r.status_s:>9.2f} {r.passes:>7} {r.mean_ms:>8.1f} "
            f"{r.max_ms:>8.1f} {r.rss_before_mb:>8.1f} {r.rss_peak_mb:>9.1f} {r.cpu_s:>6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
