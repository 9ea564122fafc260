"""Real Dask clusters for the tests: ``dask scheduler`` and ``dask worker`` processes.

They are started through the CLIs, as a user or the operator's pods start them, on a free
port of 127.0.0.1; waited for with a bounded ``Client.wait_for_workers``; and stopped by
their own PIDs. Each keeps its log (and each worker its working directory) in the test's
temporary folder. Workers run in their own folder, so a relative data path given to the
driver does not exist for them, as on a real cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import Client

DASK = str(Path(sys.executable).parent / "dask")
START_SECONDS = 60.0
STOP_SECONDS = 30.0


@dataclass(frozen=True)
class DaskCluster:
    """A running scheduler and its workers (the processes are the nannies)."""

    address: str
    scheduler: subprocess.Popen[bytes]
    workers: tuple[subprocess.Popen[bytes], ...]
    folder: Path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(command: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start one Dask process with its output in ``log``."""
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    with log.open("wb") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=cwd, env=env)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process by its PID: SIGTERM (nannies stop their workers), SIGKILL if it hangs."""
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_SECONDS)


@contextmanager
def running_cluster(folder: Path, n_workers: int = 2) -> Iterator[DaskCluster]:
    """A scheduler and ``n_workers`` single-threaded workers, stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(_start(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
             "--no-dashboard", "--dashboard-address", "127.0.0.1:0"],  # else it takes :8787
            folder / "scheduler.log", folder,
        ))
        for index in range(n_workers):
            home = folder / f"worker-{index}"
            home.mkdir()
            processes.append(_start(
                [DASK, "worker", address, "--nthreads", "1", "--no-dashboard",
                 "--local-directory", str(home)],
                folder / f"worker-{index}.log", home,
            ))
        with Client(address, timeout=START_SECONDS, set_as_default=False) as client:
            if n_workers:
                client.wait_for_workers(n_workers, timeout=START_SECONDS)
        yield DaskCluster(address, processes[0], tuple(processes[1:]), folder)
    finally:
        for process in reversed(processes):
            _stop(process)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """One cluster of two workers shared by the tests that leave it as they found it."""
    with running_cluster(tmp_path_factory.mktemp("dask-cluster")) as cluster:
        yield cluster


@pytest.fixture
def new_cluster(tmp_path: Path) -> Callable[[int], AbstractContextManager[DaskCluster]]:
    """Start a cluster of its own (``with new_cluster(n_workers) as cluster:``)."""
    return lambda n_workers: running_cluster(tmp_path / f"cluster-{n_workers}", n_workers)


@pytest.fixture
def observer(dask_cluster: DaskCluster) -> Iterator[Client]:
    """A client with which the test watches the shared cluster, closed after the test."""
    with Client(dask_cluster.address, timeout=START_SECONDS, set_as_default=False) as client:
        yield client



@pytest.fixture
def unreachable_address() -> str:
    """A scheduler address where nothing listens."""
    return f"tcp://127.0.0.1:{free_port()}"
