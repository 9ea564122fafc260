"""Cost of a run's mutual TLS (trainingrun_operator/tls.py) on a run with many batches.

The same pipeline run (many small date batches, so many task round trips: where TLS costs
most relative to the work) on two clusters of real ``dask scheduler`` + ``dask worker``
processes started alike, one plain TCP (the reference, measured in the same run) and one
with the run's certificate and ``require-encryption``. Reported: wall time of the run, and
CPU seconds of the driver (this process) and of the scheduler and worker processes and
their children, best of --repeats each, plus the ratios TLS / TCP.

    python benchmarks/bench_dask_tls.py --repeats 3 --batch-days 30
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def cluster(
    folder: Path, secure: bool, port: int
) -> Iterator[tuple[str, list[int], dict[str, object]]]:
    """A scheduler and one two-thread worker; TLS with the run's files when `secure`."""
    scheme = "tls" if secure else "tcp"
    address = f"{scheme}://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    config: dict[str, object] = {}
    if secure:
        files = folder / "tls"
        files.mkdir()
        issued = tls.issue("bench", ["127.0.0.1"], datetime.datetime.now(datetime.UTC))
        for name, content in issued.items():
            (files / name).write_bytes(content)
        env.update({e["name"]: e["value"] for e in tls.dask_env(str(files))})
        config = {
            "distributed.comm.require-encryption": True,
            "distributed.comm.tls.ca-file": str(files / tls.CA_KEY),
            "distributed.comm.tls.client.cert": str(files / tls.CERT_KEY),
            "distributed.comm.tls.client.key": str(files / tls.KEY_KEY),
        }
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
        yield address, [p.pid for p in processes], config
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)


def one_run(
    address: str, pids: list[int], config: dict[str, object], batch_days: int
) -> tuple[float, float, float]:
    """Wall seconds, driver CPU seconds and cluster CPU seconds of one pipeline run."""
    settings = TrainingConfig.build(input_data=DATA, batch_size_days=batch_days,
                                    dask_scheduler_address=address)  # fmt: skip
    cluster_before = sum(tree_cpu(pid) for pid in pids)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    driver_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    with dask.config.set(config):
        result = TrainingPipeline().execute(settings)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    driver = usage.ru_utime + usage.ru_stime - driver_before
    assert result.statistics, "no batches ran"
    return wall, driver, sum(tree_cpu(pid) for pid in pids) - cluster_before


def main() -> None:
    """Measure both clusters, print figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch-days", type=int, default=30, help="days per batch (smaller: more batches)"
    )
    args = parser.parse_args()
    figures: dict[str, tuple[float, float, float]] = {}
    for secure in (False, True):
        with (
            tempfile.TemporaryDirectory() as folder,
            cluster(Path(folder), secure, free_port()) as (address, pids, config),
        ):
            runs = [one_run(address, pids, config, args.batch_days) for _ in range(args.repeats)]
            figures["tls" if secure else "tcp"] = tuple(min(r[i] for r in runs) for i in range(3))  # type: ignore[assignment]
    settings = TrainingConfig.build(input_data=DATA, batch_size_days=args.batch_days)
    batches = len(TrainingPipeline().execute(settings).statistics)
    print(f"{DATA}, {args.batch_days}-day batches ({batches} batches), best of {args.repeats}")
    print(f"{'':6}{'wall s':>10}{'driver CPU s':>14}{'cluster CPU s':>15}")
    for name, (wall, driver, cluster_cpu) in figures.items():
        print(f"{name:6}{wall:10.2f}{driver:14.2f}{cluster_cpu:15.2f}")
    tcp, secure = figures["tcp"], figures["tls"]
    print(
        f"{'ratio':6}{secure[0] / tcp[0]:10.2f}{secure[1] / tcp[1]:14.2f}{secure[2] / tcp[2]:15.2f}"
    )


if __name__ == "__main__":
    main()
