"""Domain errors: each says what is wrong and how to fix it, in one line.

The CLI prints ``str(error)`` and exits 1; anything that is not a ``TrainingError`` is a
bug and keeps its traceback.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of every error a user can cause and fix.

    ``retryable`` says whether running the same command again may succeed (an unreachable
    server, a failed batch) or will fail the same way (a bad flag, unreadable data). The
    exit status is 1 either way; ``--progress-file`` records it for the Kubernetes driver,
    which then fails the run at once instead of spending its retries.
    """

    retryable: bool = False


class ConfigError(TrainingError):
    """A flag, config file field or combination of them is invalid."""


class DataError(TrainingError):
    """The input data cannot be used: missing, unreadable, or inconsistent."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class StateError(TrainingError):
    """A resume state file is missing, corrupt, or incompatible with the config."""


class OutputError(TrainingError):
    """Results cannot be written where asked (exists, not writable, ...)."""


class ExecutionError(TrainingError):
    """The execution engine failed: scheduler unreachable, deadline exceeded, batch failed."""

    retryable = True
