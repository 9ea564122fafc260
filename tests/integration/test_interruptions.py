"""Real signals at random moments: whatever the moment, one of two clean outcomes.

A CLI subprocess replaces an earlier run's results (``--overwrite``) and gets a real
SIGINT or SIGTERM after a delay that hypothesis draws over the whole life of the run:
imports, planning, both map stages, writing, the exit (atexit hooks). The outcome must be
either complete new results and exit 0, or the earlier results untouched and exit 1
(143 after SIGTERM), with one line saying which, no traceback, no temporary file left in
the output folder or the temporary directory.

The delay is counted from the moment the process has installed its SIGTERM handler (read
from /proc/PID/status), i.e. from the first line of ``main``: before it, the interpreter
is still starting and its own default behaviour applies. It is drawn as a fraction of how
long an undisturbed run of the same command took on this machine, so the draws cover the
whole run however loaded the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from .test_cli import PROJECT, SMALL

RUN = ("--input-data", SMALL, "--lags", "2", "--batch-size-days", "60", "--overwrite")


def handles(pid: int, signum: int) -> bool:
    """True once process ``pid`` has a handler of its own for ``signum``."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True  # already gone: nothing left to wait for
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


def start(out: Path, spool: Path) -> subprocess.Popen[str]:
    """The CLI writing into ``out`` (temporary files in ``spool``), once ``main`` runs."""
    environment = {**os.environ, "TMPDIR": str(spool)}
    environment.pop("DASK_SCHEDULER_ADDRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "recursive_training.run_training", *RUN, "--output-dir", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    began = time.monotonic()
    while not handles(process.pid, signal.SIGTERM) and time.monotonic() - began < 60:
        time.sleep(0.002)
    return process


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A folder holding one finished run, and how many seconds its ``main`` took."""
    folder = tmp_path_factory.mktemp("earlier")
    process = start(folder, tmp_path_factory.mktemp("spool"))
    began = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    return folder, time.monotonic() - began


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(moment=st.floats(0.0, 1.05), signum=st.sampled_from([signal.SIGINT, signal.SIGTERM]))
def test_a_signal_at_any_moment_leaves_one_of_two_clean_outcomes(
    earlier: tuple[Path, float],
    tmp_path_factory: pytest.TempPathFactory,
    moment: float,
    signum: int,
) -> None:
    folder, duration = earlier
    work = tmp_path_factory.mktemp("run")
    out, spool = work / "out", work / "tmp"
    spool.mkdir()
    out.mkdir()
    for file in folder.iterdir():
        (out / file.name).write_bytes(file.read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    process = start(out, spool)
    try:
        time.sleep(moment * duration)
        if process.poll() is None:
            process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    after = {p.name: p.read_bytes() for p in out.iterdir()}
    event(f"exit status {process.returncode}")  # --hypothesis-show-statistics
    assert "Traceback" not in stderr, stderr
    assert not list(spool.iterdir()), "temporary files left in TMPDIR"
    if process.returncode == 0:
        document = json.loads(after["results.json"])
        assert sorted(after) == sorted(["results.json", *document["files"].values()])
        assert before["results.json"] != after["results.json"]
        assert "Trained on" in stdout or "after the results were complete" in stderr
    else:
        expected = 1 if signum == signal.SIGINT else 128 + signal.SIGTERM
        assert process.returncode == expected, stderr
        assert after == before
        (last,) = [line for line in stderr.splitlines() if "ERROR" in line]
        assert "no new results were written (earlier results are unchanged)" in last


# Where CPython 3.11 itself mishandles a signal's exception, each found by the random draws
# above: the signal lands while code compiled from source text runs (what dataclasses,
# namedtuple and scipy's array-API modules exec while they are imported), while a class
# being defined calls a descriptor's __set_name__ (pandas' cached_property), or in a weakref
# callback (importlib's module locks), where an exception can only be reported. The sleep
# after it stands for the rest of the run, where the signal must arrive again.
SIGNAL_INSIDE = {
    "exec of source text": "    exec('signal.raise_signal(SIGNUM)')\n",
    "__set_name__": (
        "    class Descriptor:\n"
        "        def __set_name__(self, owner, name):\n"
        "            signal.raise_signal(SIGNUM)\n"
        "    class Owner:\n"
        "        field = Descriptor()\n"
    ),
    "weakref callback": (
        "    referent = argparse.Namespace()\n"
        "    reference = weakref.ref(referent, lambda dead: signal.raise_signal(SIGNUM))\n"
        "    del referent\n"
        "    time.sleep(30)\n"
    ),
}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("inside", SIGNAL_INSIDE)
def test_a_signal_inside_code_python_mishandles_still_gives_one_line_and_the_status(
    tmp_path: Path, inside: str, signum: signal.Signals
) -> None:
    """The real ``cli`` run as ``python -m`` (the only way CPython's exit takes the
    interpreter's "unhandled KeyboardInterrupt" mark into account), with its argument
    parser replaced by the code that receives the signal: the moments above at will,
    instead of once in a few dozen random draws."""
    (tmp_path / "signal_inside.py").write_text(
        "import argparse, signal, time, weakref\n"
        "from recursive_training import run_training\n"
        "def parse_args(argv):\n"
        + SIGNAL_INSIDE[inside].replace("SIGNUM", f"signal.{signum.name}")
        + "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
        "run_training.parse_args = parse_args\n"
        "run_training.cli()\n"
    )
    path = os.pathsep.join([str(tmp_path), str(PROJECT), os.environ.get("PYTHONPATH", "")])
    process = subprocess.run(
        [sys.executable, "-m", "signal_inside"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        timeout=60,
    )
    assert process.returncode == (1 if signum == signal.SIGINT else 128 + signal.SIGTERM), (
        process.stderr
    )
    (line,) = process.stderr.splitlines()
    cause = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert line.endswith(f"{cause}; no new results were written (earlier results are unchanged)")


def test_sigterm_on_a_local_dask_cluster_stops_it_and_leaves_nothing(tmp_path: Path) -> None:
    """The local cluster is forced for a small run by lowering the work threshold in the
    subprocess (a real LocalCluster, real worker processes, a real SIGTERM)."""
    out, spool = tmp_path / "out", tmp_path / "tmp"
    spool.mkdir()
    environment = {**os.environ, "TMPDIR": str(spool)}
    environment.pop("DASK_SCHEDULER_ADDRESS", None)
    program = (
        "import recursive_training.engines as engines; engines.MIN_LOCAL_DASK_WORK = 0; "
        "from recursive_training.run_training import cli; cli()"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            program,
            *RUN,
            "--use-dask",
            "--max-workers",
            "2",
            "--output-dir",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "Running on" in line:
                break
        assert "Dask" in seen[-1], "".join(seen)
        workers = psutil.Process(process.pid).children(recursive=True)
        assert workers, "the local cluster started no worker process"
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = "".join(seen) + rest
    assert process.returncode == 128 + signal.SIGTERM, stderr
    # the workers' own logs may show the tasks they were running being cancelled; the
    # driver must not show the interruption itself, nor a half-built object's finalizer
    assert "Terminated" not in stderr and "Exception ignored" not in stderr, stderr
    assert stderr.splitlines()[-1].endswith(
        "terminated (SIGTERM); no new results were written (earlier results are unchanged)"
    )
    assert not out.exists() or not any(out.iterdir())
    # Dask's own scratch folder stays after any run (the next cluster start purges the
    # folders of workers that are gone); nothing of the run's own may stay
    assert [p.name for p in spool.iterdir()] == ["dask-scratch-space"]
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"worker processes left running: {alive}"
