"""Cost of a run's mutual TLS (trainingrun_operator/tls.py) on a run with many batches.

Two clusters of real ``dask scheduler`` + ``dask worker`` processes run side by side for the
whole benchmark, started alike: one plain TCP (the reference) and one with the run's
certificate and ``require-encryption``, the settings the operator gives a run's pods. The
same pipeline run (many small date batches, so many task round trips: where TLS costs most
relative to the work) goes to one, then the other, alternating which goes first, so a
change of machine load hits both alike. Each run is timed for wall seconds and CPU seconds
of the driver (this process) and of the cluster's processes (scheduler, nanny, worker).
Printed: every run with the 1-minute load average; per cluster the median and the best
run; and the ratio TLS / TCP as the median over repetitions of each TLS run against the
TCP run next to it.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_dask_tls.py --repeats 9 --batch-days 30
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]

import dask  # noqa: E402
from distributed import Client  # noqa: E402

from recursive_training.config import TrainingConfig  # noqa: E402
from recursive_training.stages import TrainingPipeline  # noqa: E402
from trainingrun_operator import tls  # noqa: E402

DASK = str(Path(sys.executable).parent / "dask")
DATA = "builtin:synthetic?n_variables=20&years=20&seed=5"
FIGURES = ("wall s", "driver CPU s", "cluster CPU s")


@dataclass(frozen=True)
class Cluster:
    """A running scheduler and worker, and the client settings that reach them."""

    name: str
    address: str
    pids: tuple[int, ...]
    config: dict[str, object]


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of `pid` and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (a worker's nanny and its worker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return process_cpu(pid) + sum(tree_cpu(int(child)) for child in children)


def tls_settings(folder: Path) -> tuple[dict[str, str], dict[str, object]]:
    """A run's files written to `folder`: the pods' environment and the driver's config."""
    folder.mkdir()
    issued = tls.issue("bench", ["127.0.0.1"], datetime.datetime.now(datetime.UTC))
    for name, content in issued.items():
        (folder / name).write_bytes(content)
    env = {e["name"]: e["value"] for e in tls.dask_env(str(folder))}
    config: dict[str, object] = {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": str(folder / tls.CA_KEY),
        "distributed.comm.tls.client.cert": str(folder / tls.CERT_KEY),
        "distributed.comm.tls.client.key": str(folder / tls.KEY_KEY),
    }
    return env, config


@contextmanager
def cluster(folder: Path, secure: bool) -> Iterator[Cluster]:
    """A scheduler and one two-thread worker; TLS with a run's files when `secure`."""
    scheme = "tls" if secure else "tcp"
    port = free_port()
    address = f"{scheme}://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    config: dict[str, object] = {}
    if secure:
        tls_env, config = tls_settings(folder / "tls")
        env.update(tls_env)
    commands = [
        [DASK, "scheduler", f"--protocol={scheme}", "--host=127.0.0.1", f"--port={port}",
         "--dashboard-address=127.0.0.1:0"],
        [DASK, "worker", address, "--nthreads=2", "--no-dashboard", f"--local-directory={folder}"],
    ]  # fmt: skip
    processes = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for c in commands
    ]
    try:
        with dask.config.set(config), Client(address, timeout=60, set_as_default=False) as c:
            c.wait_for_workers(1, timeout=60)
        yield Cluster(scheme, address, tuple(p.pid for p in processes), config)
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)


def tasks_done(target: Cluster) -> int:
    """How many keys the cluster's scheduler has seen reach memory so far."""
    with dask.config.set(target.config), Client(target.address, set_as_default=False) as c:
        done: int = c.run_on_scheduler(
            lambda dask_scheduler: sum(
                prefix.state_counts["memory"] for prefix in dask_scheduler.task_prefixes.values()
            )
        )
    return done


def one_run(target: Cluster, batch_days: int) -> tuple[tuple[float, float, float], int, int]:
    """Wall, driver CPU and cluster CPU seconds of one pipeline run; its batches and tasks."""
    settings = TrainingConfig.build(input_data=DATA, batch_size_days=batch_days,
                                    dask_scheduler_address=target.address)  # fmt: skip
    tasks_before = tasks_done(target)
    cluster_before = sum(tree_cpu(pid) for pid in target.pids)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    driver_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    with dask.config.set(target.config):
        result = TrainingPipeline().execute(settings)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    driver = usage.ru_utime + usage.ru_stime - driver_before
    cluster_cpu = sum(tree_cpu(pid) for pid in target.pids) - cluster_before
    assert result.statistics, "no batches ran"
    return (wall, driver, cluster_cpu), len(result.statistics), tasks_done(target) - tasks_before


def main() -> None:
    """Measure both clusters, interleaved; print every run, medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="runs on each cluster")
    parser.add_argument(
        "--batch-days", type=int, default=30, help="days per batch (smaller: more batches)"
    )
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float, float]]] = {"tcp": [], "tls": []}
    loads = [os.getloadavg()[0]]
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for name in runs:
            (folder / name).mkdir()
        clusters = [stack.enter_context(cluster(folder / name, name == "tls")) for name in runs]
        one_run(clusters[0], args.batch_days)  # warm-up: imports, first connections
        one_run(clusters[1], args.batch_days)
        print(f"{'run':8}{'cluster':8}" + "".join(f"{f:>15}" for f in FIGURES) + f"{'load':>7}")
        for repeat in range(args.repeats):
            for target in clusters if repeat % 2 == 0 else clusters[::-1]:
                figures, batches, tasks = one_run(target, args.batch_days)
                runs[target.name].append(figures)
                loads.append(os.getloadavg()[0])
                print(f"{repeat + 1:<8}{target.name:8}" + "".join(f"{v:15.2f}" for v in figures)
                      + f"{loads[-1]:7.1f}", flush=True)  # fmt: skip
    print(f"\n{DATA}, {args.batch_days}-day batches: {batches} batches, {tasks} Dask keys "
          f"(tasks and scattered arrays) per run; {args.repeats} runs per cluster, "
          f"interleaved; 1-min load {min(loads):.1f}-{max(loads):.1f}")  # fmt: skip
    # CPU of driver and cluster together as a fourth figure.
    both = {name: [(*run, run[1] + run[2]) for run in figures] for name, figures in runs.items()}
    columns = (*FIGURES, "all CPU s")
    print(f"{'':22}" + "".join(f"{f:>15}" for f in columns))
    for summary, pick in (("median", statistics.median), ("best", min)):
        for name, figures in both.items():
            values = [pick(run[i] for run in figures) for i in range(len(columns))]
            print(f"{summary + ' ' + name:22}" + "".join(f"{v:15.2f}" for v in values))
    # Each repetition's TLS run against its neighbouring TCP run: load drifts cancel.
    paired = [statistics.median(s[i] / t[i] for s, t in zip(both["tls"], both["tcp"], strict=True))
              for i in range(len(columns))]  # fmt: skip
    print(f"{'ratio TLS/TCP (paired)':22}" + "".join(f"{r:15.2f}" for r in paired))


if __name__ == "__main__":
    main()
