"""SIGINT and SIGTERM as exceptions, and a way to hold them while results are committed.

SIGINT (Ctrl-C) is made to raise ``Interrupted`` and SIGTERM (what ``kill``, Kubernetes and
tini send) ``Terminated``, both subclasses of ``KeyboardInterrupt``, so both unwind the same
``with`` and ``finally`` blocks: the predictions spool, ``.tmp`` files and a local Dask
cluster are cleaned up either way. Only the standard library is imported here, so the CLI
can install the handlers before it imports anything slow.

Why a subclass for SIGINT too: CPython 3.11 marks an exception of exactly the type
``KeyboardInterrupt`` that leaves code run from source text (``exec``/``eval`` of a string,
as dataclasses, namedtuple and scipy's array-API modules do while they are imported) as
unhandled, even when the CLI catches it further up; under ``python -m`` the interpreter then
kills itself with SIGINT at exit (``run_eval_code_obj`` in Python/pythonrun.c,
``exit_sigint`` in Modules/main.c) instead of exiting with the status the CLI chose. It
compares the type by identity, so a subclass is never marked.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import ClassVar, Final

HANDLED: Final = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Outcome:
    """Where the run's results are once they are complete (None until then), so whoever
    catches an interruption can say truthfully whether they exist."""

    results: str | None = None


class Signalled(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised by the handlers ``handle_interruptions`` installs."""

    signum: ClassVar[int]


class Interrupted(Signalled):
    """The process received SIGINT (Ctrl-C)."""

    signum = signal.SIGINT


class Terminated(Signalled):
    """The process received SIGTERM."""

    signum = signal.SIGTERM
    exit_status: Final = 128 + signal.SIGTERM


RAISED: Final[dict[int, type[Signalled]]] = {
    kind.signum: kind for kind in (Interrupted, Terminated)
}


def _raise(signum: int, frame: FrameType | None) -> None:
    raise RAISED[signum]


def handle_interruptions() -> None:
    """Make SIGINT raise ``Interrupted`` and SIGTERM ``Terminated`` (in the main thread).

    A SIGINT the parent had ignored (a shell's background job) stays ignored, as Python
    leaves it at startup.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)
    sys.unraisablehook = _redelivering(sys.unraisablehook)


def _redelivering(
    previous: Callable[[sys.UnraisableHookArgs], object],
) -> Callable[[sys.UnraisableHookArgs], None]:
    """An unraisable-exception hook that delivers a lost interruption again, else `previous`.

    A handler that runs while Python is in a weakref callback (importlib's module locks use
    one during every import) or a ``__del__`` raises where Python can only report the
    exception and go on: the signal would be lost. It is sent again from a new thread, which
    needs the GIL to send it, so it arrives once this hook has returned (run inside the hook,
    the handler would be lost the same way). ``threading.Thread.start`` would wait for the
    thread, and receive the signal while waiting: the bare ``_thread`` one does not wait.
    """

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, Signalled):
            _thread.start_new_thread(os.kill, (os.getpid(), unraisable.exc_value.signum))
        else:
            previous(unraisable)

    return hook


def interruption(error: BaseException) -> KeyboardInterrupt | None:
    """The interruption `error` stands for, if it stands for one.

    Python 3.11 wraps whatever a class's ``__set_name__`` raises in a RuntimeError (3.12
    no longer does), so a signal that lands while an import is defining such a class
    arrives as a RuntimeError caused by the interruption.
    """
    if isinstance(error, KeyboardInterrupt):
        return error
    if isinstance(error, RuntimeError) and isinstance(error.__cause__, KeyboardInterrupt):
        return error.__cause__
    return None


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
