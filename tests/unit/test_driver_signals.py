"""The driver passes SIGTERM on to the pipeline, so deleting a run does not wait out the grace;
it hands the pipeline's error line to the kubelet.

A real child process and a real signal to this process: the asyncio handler the driver
installs must catch it, forward it, and report the child's death as 128 + signal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trainingrun_operator.driver import (
    StderrTail,
    not_retryable,
    pipeline_command,
    wait_forwarding_signals,
    write_termination_message,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


async def _terminate_while_waiting() -> int:
    process = await asyncio.create_subprocess_exec(*SLEEPER)
    waiting = asyncio.create_task(wait_forwarding_signals(process))
    await asyncio.sleep(0.2)  # the handlers are installed once the task runs
    os.kill(os.getpid(), signal.SIGTERM)
    return await asyncio.wait_for(waiting, timeout=10)


def test_sigterm_stops_the_pipeline_and_exits_143() -> None:
    """SIGTERM reaches the child, which dies of it: 143, as kubelet and shells report it."""
    assert asyncio.run(_terminate_while_waiting()) == 128 + signal.SIGTERM


def test_handlers_are_removed_and_exit_codes_pass_through() -> None:
    """A child's own exit code comes back unchanged, and SIGTERM's default is restored."""

    async def run() -> int:
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
        return await wait_forwarding_signals(process)

    assert asyncio.run(run()) == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_the_pipelines_error_line_becomes_the_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real pipeline, given data that does not exist: its ERROR line, and nothing else, is
    what the driver leaves for the kubelet (and so for status.message)."""
    missing = tmp_path / "missing.csv"

    async def run() -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            *pipeline_command([f"--input-data={missing}", f"--output-dir={tmp_path / 'out'}"],
                              tmp_path / "progress.jsonl"),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        tail = StderrTail()
        await tail.pump(process.stderr)
        return await process.wait(), tail.message

    code, message = asyncio.run(run())
    assert code == 1
    assert str(missing) in message and "\n" not in message and "ERROR" not in message
    # Missing data stays missing: the driver will exit 3 and the Job will not retry.
    assert not_retryable(tmp_path / "progress.jsonl")
    monkeypatch.setenv("PULSE_TERMINATION_MESSAGE_PATH", str(tmp_path / "termination-log"))
    write_termination_message(message)
    assert (tmp_path / "termination-log").read_text() == message


def test_an_unreachable_endpoint_is_worth_a_retry(tmp_path: Path) -> None:
    """The real pipeline against a closed port: its error is recorded as retryable, so the
    driver keeps the pipeline's exit status 1 and the Job retries."""
    progress = tmp_path / "progress.jsonl"
    closed = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    command = pipeline_command(
        ["--input-data=s3://prices/daily.csv", f"--s3-endpoint-url={closed}",
         f"--output-dir={tmp_path / 'out'}"], progress,
    )  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, timeout=120, check=False)
    assert result.returncode == 1
    assert b"unreachable" in result.stderr
    assert not not_retryable(progress)
    assert '"retryable": true' in progress.read_text()


def _closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
