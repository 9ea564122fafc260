"""Domain errors: each says what is wrong and how to fix it, in one line.

The CLI prints ``str(error)`` and exits 1; anything that is not a ``TrainingError`` is a
bug and keeps its traceback.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of every error a user can cause and fix."""


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
