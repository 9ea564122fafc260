"""A run's Dask worker, started exactly as its pod starts it, exits at once on SIGTERM.

The worker container of the operator's DaskCluster (its command with the image's init,
tini, its args and environment: nanny, mutual TLS with the run's files) runs here as real
processes against a real ``dask scheduler`` with the run's TLS settings.

What a deleted run does to them: the scheduler and the worker pods get SIGTERM at about the
same moment. Signalled only through its nanny (the old ``tini --``), the worker process
took 8 s or more to go, until the nanny killed it, in two ways the tests reproduce; a third
outlived the pod's whole grace period even with the signal sent to the process group:

- it was running a task: its close waits for the task's thread (up to the nanny's 8 s);
- it was idle, and the closing scheduler told it to close first: it asks its nanny to
  close gracefully; a nanny already closing on its own SIGTERM drops that request, and
  distributed leaves the worker "closing" for good. That order depends on timing (a loaded
  node, the TLS handshake of a new connection to the nanny); the test makes it certain by
  freezing the nanny (SIGSTOP) until both signals are out;
- the nanny was still starting: it forks the worker process just after the group got the
  signal, so that process gets none, and the closing nanny waits for it to reach the
  scheduler, which is gone. A CI run hit it by chance; the test makes it certain with a
  nanny preload that forks the worker process 1 s late. The pod's ``timeout
  --kill-after`` ends it.

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

import psutil
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


def start_scheduler(files: Path, folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """A scheduler with the run's TLS settings; its address and process."""
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    env = {**{k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"},
           **pod_env(files)}  # fmt: skip
    with (folder / "scheduler.log").open("wb") as log:
        scheduler = subprocess.Popen(
            [DASK, "scheduler", "--protocol=tls", "--host=127.0.0.1", f"--port={port}",
             "--dashboard-address=127.0.0.1:0"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
        )  # fmt: skip
    return address, scheduler


def start_worker(
    address: str, files: Path, home: Path, *extra_args: str
) -> subprocess.Popen[bytes]:
    """The worker container's command, args and environment, with the Secret's files at
    `files` and the scheduler at `address` (what the Dask controller and kubelet provide),
    and `extra_args` after the container's."""
    container = worker_container()
    env = {e["name"]: e["value"].replace(tls.MOUNT_PATH, str(files)) for e in container["env"]}
    env |= {"DASK_SCHEDULER_ADDRESS": address, "DASK_WORKER_NAME": "run-dask-default-worker-0"}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], part)
            for part in [*container["command"], *container["args"], *extra_args]]  # fmt: skip
    argv[argv.index("dask")] = DASK
    process_env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(home), **env}
    with (home / "worker.log").open("wb") as log:
        return subprocess.Popen(argv, env=process_env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=home)  # fmt: skip


def nanny_of(pod: subprocess.Popen[bytes]) -> psutil.Process:
    """The worker pod's nanny: the `dask worker` process (`python .../dask worker ...`)."""
    (nanny,) = [p for p in psutil.Process(pod.pid).children(recursive=True)
                if p.cmdline()[1:2] == [DASK]]  # fmt: skip
    return nanny


def process_group(pod: subprocess.Popen[bytes]) -> int:
    """The process group of the worker pod's command: its `timeout` makes one of its own."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        with contextlib.suppress(psutil.NoSuchProcess, IndexError):
            group = os.getpgid(psutil.Process(pod.pid).children()[0].pid)
            if group != os.getpgrp():
                return group
        assert time.monotonic() < deadline, "the pod's command got no process group of its own"
        time.sleep(0.01)


def kill_group(group: int) -> None:
    """SIGKILL what the worker pod's processes left behind: in a pod, the kernel does it
    when PID 1 exits; here nothing would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


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
    address, scheduler = start_scheduler(files, tmp_path)
    worker = start_worker(address, files, tmp_path)
    group = process_group(worker)
    try:
        with Client(address, security=run_security(files), timeout=START_SECONDS,
                    set_as_default=False) as client:  # fmt: skip
            client.wait_for_workers(1, timeout=START_SECONDS)
        yield RunPods(tmp_path, files, address, scheduler, worker, nanny_of(worker).pid)
    finally:
        for process in (worker, scheduler):
            _stop(process)
        kill_group(group)  # a frozen nanny too, if a test failed before thawing it


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


# A nanny preload (test instrumentation, in the nanny's process only): the thread that forks
# the worker process waits 1 s first, so the pod's SIGTERM certainly comes before the fork.
LATE_FORK_PRELOAD = """
import multiprocessing.context
import time

_start = multiprocessing.context.SpawnProcess.start


def late_start(process):
    time.sleep(1)
    return _start(process)


def dask_setup(nanny):
    multiprocessing.context.SpawnProcess.start = late_start
"""


def test_a_run_deleted_while_its_worker_starts_loses_the_worker_pod_at_once(
    tini: str, tmp_path: Path,
) -> None:  # fmt: skip
    """The scheduler and the worker pod get SIGTERM while the nanny is about to fork the
    worker process: that process gets no signal and waits for a scheduler that is gone."""
    files = write_files(tmp_path / "tls", "run")
    address, scheduler = start_scheduler(files, tmp_path)
    preload = tmp_path / "late_fork.py"
    preload.write_text(LATE_FORK_PRELOAD)
    with Client(address, security=run_security(files), timeout=START_SECONDS,
                set_as_default=False):  # fmt: skip
        pass  # the scheduler is up
    worker = start_worker(address, files, tmp_path, f"--preload-nanny={preload}")
    group = process_group(worker)
    try:
        # Printed as the nanny asks for its worker process, before the fork.
        wait_for_line(tmp_path / "worker.log", "Start Nanny at", START_SECONDS)
        scheduler.terminate()
        pod = RunPods(tmp_path, files, address, scheduler, worker, nanny_of(worker).pid)
        pod.sigterm_worker_pod()
        pod.assert_worker_pod_gone()
    finally:
        for process in (worker, scheduler):
            _stop(process)
        kill_group(group)
