"""SIGINT and SIGTERM as exceptions, and a way to hold them while results are committed.

Ctrl-C already raises ``KeyboardInterrupt``; SIGTERM (what ``kill``, Kubernetes and tini
send) is made to raise ``Terminated``, a subclass, so both unwind the same ``with`` and
``finally`` blocks: the predictions spool, ``.tmp`` files and a local Dask cluster are
cleaned up either way. Only the standard library is imported here, so the CLI can install
the handlers before it imports anything slow.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Final

HANDLED: Final = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Outcome:
    """Where the run's results are once they are complete (None until then), so whoever
    catches an interruption can say truthfully whether they exist."""

    results: str | None = None


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""

    exit_status: Final = 128 + signal.SIGTERM


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def handle_termination() -> None:
    """Make SIGTERM raise ``Terminated`` (in the main thread, like Ctrl-C)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def ignore_interruptions() -> None:
    """Ignore SIGINT and SIGTERM from now on: the outcome is decided, only exit remains."""
    for signum in HANDLED:
        signal.signal(signum, signal.SIG_IGN)


@contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the block and deliver them once it is done.

    Used around the few steps whose interruption would leave a state no message can
    describe: the commit of the results and the cleanup of a failed write. Outside the
    main thread (where Python runs signal handlers anyway) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    for signum in HANDLED:
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])
