"""The driver passes SIGTERM on to the pipeline, so deleting a run does not wait out the grace.

A real child process and a real signal to this process: the asyncio handler the driver
installs must catch it, forward it, and report the child's death as 128 + signal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from trainingrun_operator.driver import wait_forwarding_signals

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
