"""A run's Dask worker, started exactly as its pod starts it, exits at once on SIGTERM.

The worker container of the operator's DaskCluster (its command with the image's init,
tini, its args and environment: nanny, mutual TLS with the run's files) runs here as real
processes against a real ``dask scheduler`` with the run's TLS settings.

What a deleted run does to them: the scheduler and the worker pods get SIGTERM at about the
same moment. Signalled only through its nanny (the old ``tini --``), the worker process
took 8 s or more to go, until the nanny killed it, in two ways the tests reproduce:

- it was running a task: its close waits for the task's thread (up to the nanny's 8 s);
- it was idle, and the closing scheduler told it to close first: it asks its nanny to
  close gracefully; a nanny already closing on its own SIGTERM drops that request, and
  distributed leaves the worker "closing" for good. That order depends on timing (a loaded
  node, the TLS handshake of a new connection to the nanny); the test makes it certain by
  freezing the nanny (SIGSTOP) until both signals are out.

tini is the image's init; the test needs it on the host (Debian: ``apt-get install tini``)
and fails without it when CI=true, as hack/test.sh installs it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, fire_and_forget

from tests.integration.dask.conftest import DASK, START_SECONDS, _stop, free_port
from tests.integration.dask.test_tls import pod_env, run_security, write_files
from trainingrun_operator import tls
from trainingrun_operator.settings import OperatorSettings
from trainingrun_operator.spec import RunSpec
from trainingrun_operator.workload import build_dask_cluster

pytestmark = pytest.mark.integration
# A pod's grace period is 30 s; a worker that stops on SIGTERM is gone in about a second
# (2-3 s at load 15), one the nanny has to kill never less than 8 s (its own wait).
EXIT_WITHIN_S = 7.0
RUN = RunSpec.from_body({
    "metadata": {"name": "run", "namespace": "team", "uid": "u-1", "generation": 1},
    "spec": {"output": {"uri": "s3://results/run"}, "dask": {"workers": 1, "threads": 1}},
})  # fmt: skip


def worker_container() -> dict[str, Any]:
    """The worker container of the run's DaskCluster, as the operator builds it (TLS on)."""
    cluster = build_dask_cluster(RUN, OperatorSettings(dask_tls=True))
    container: dict[str, Any] = cluster["spec"]["worker"]["spec"]["containers"][0]
    return container


def start_worker(address: str, files: Path, home: Path) -> subprocess.Popen[bytes]:
    """The worker container's command, args and environment, with the Secret's files at
    `files` and the scheduler at `address` (what the Dask controller and kubelet provide)."""
    container = worker_container()
    env = {e["name"]: e["value"].replace(tls.MOUNT_PATH, str(files)) for e in container["env"]}
    env |= {"DASK_SCHEDULER_ADDRESS": address, "DASK_WORKER_NAME": "run-dask-default-worker-0"}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], part)
            for part in [*container["command"], *container["args"]]]  # fmt: skip
    argv[argv.index("dask")] = DASK
    process_env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(home), **env}
    with (home / "worker.log").open("wb") as log:
        return subprocess.Popen(argv, env=process_env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=home)  # fmt: skip


def children(pid: int) -> list[int]:
    """The PIDs of `pid`'s children."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_for_line(log: Path, text: str, timeout: float) -> None:
    """Wait until `text` appears in `log`."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in {log} after {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def tini() -> str:
    """The image's init on this host."""
    found = shutil.which("tini")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tini is not installed (apt-get install tini)", pytrace=False)
        pytest.skip("tini is not installed (apt-get install tini)")
    return found


@dataclass
class RunPods:
    """A run's scheduler and worker pod, as local processes; the worker is the pod's PID 1."""

    folder: Path
    files: Path
    address: str
    scheduler: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    nanny: int
    signalled: float = 0.0

    def client(self) -> Client:
        """A client with the run's certificate (the driver's)."""
        return Client(self.address, security=run_security(self.files), timeout=START_SECONDS,
                      set_as_default=False)  # fmt: skip

    def sigterm_worker_pod(self) -> None:
        """The kubelet's SIGTERM to the worker container's PID 1."""
        self.signalled = time.monotonic()
        self.worker.terminate()

    def assert_worker_pod_gone(self) -> None:
        """The worker container's PID 1 exits within EXIT_WITHIN_S of its SIGTERM."""
        try:
            self.worker.wait(timeout=EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker pod outlived its SIGTERM by {EXIT_WITHIN_S} s; "
                        f"log: {self.folder / 'worker.log'}")  # fmt: skip
        print(f"worker pod gone {time.monotonic() - self.signalled:.1f} s after SIGTERM")


@pytest.fixture
def run_pods(tini: str, tmp_path: Path) -> Iterator[RunPods]:
    """A TLS scheduler and one worker pod's processes, registered; all stopped at the end."""
    files = write_files(tmp_path / "tls", "run")
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    scheduler_env = {**{k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"},
                     **pod_env(files)}  # fmt: skip
    with (tmp_path / "scheduler.log").open("wb") as log:
        scheduler = subprocess.Popen(
            [DASK, "scheduler", "--protocol=tls", "--host=127.0.0.1", f"--port={port}",
             "--dashboard-address=127.0.0.1:0"],
            env=scheduler_env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    worker = start_worker(address, files, tmp_path)
    nanny, left = None, []
    try:
        with Client(address, security=run_security(files), timeout=START_SECONDS,
                    set_as_default=False) as client:  # fmt: skip
            client.wait_for_workers(1, timeout=START_SECONDS)
        (nanny,) = children(worker.pid)  # tini's one child: `dask worker`, the nanny
        left = children(nanny)  # the worker process (and multiprocessing's helper)
        yield RunPods(tmp_path, files, address, scheduler, worker, nanny)
    finally:
        if nanny is not None:  # a test that froze it may have failed before thawing it
            with contextlib.suppress(ProcessLookupError):
                os.kill(nanny, signal.SIGCONT)
        for process in (worker, scheduler):
            _stop(process)
        for pid in left:  # outside a pod nothing kills what PID 1 leaves behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_deleted_runs_busy_worker_exits_at_once(run_pods: RunPods) -> None:
    """The worker is running a task when the scheduler and the worker pod get SIGTERM."""
    with run_pods.client() as client:
        fire_and_forget(client.submit(time.sleep, 600, pure=False))  # runs on without us
        deadline = time.monotonic() + START_SECONDS
        while not any(client.run(lambda dask_worker: bool(dask_worker.state.executing)).values()):
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
    run_pods.scheduler.terminate()
    run_pods.sigterm_worker_pod()
    run_pods.assert_worker_pod_gone()


def test_a_deleted_runs_idle_worker_exits_at_once_when_its_scheduler_closes_first(
    run_pods: RunPods,
) -> None:
    """The closing scheduler has told the worker to close, and the pod's SIGTERM comes
    before the nanny has answered the worker."""
    os.kill(run_pods.nanny, signal.SIGSTOP)
    run_pods.scheduler.terminate()
    wait_for_line(run_pods.folder / "worker.log", "Reason: scheduler-close", START_SECONDS)
    run_pods.sigterm_worker_pod()
    os.kill(run_pods.nanny, signal.SIGCONT)
    run_pods.assert_worker_pod_gone()
