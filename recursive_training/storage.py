"""Reading and atomically writing the run's files at a location (a local path for now).

Every write goes to a temporary name in the destination folder and is renamed into
place, so a reader never sees a partial file and a failed run leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from recursive_training.exceptions import OutputError, StateError


def join(base: str, name: str) -> str:
    """``name`` inside the folder ``base``."""
    return f"{base.rstrip('/')}/{name}"


def exists(location: str) -> bool:
    """True when a file is at ``location``."""
    return Path(location).is_file()


def read_bytes(location: str) -> bytes:
    """The content of a state file (the only thing a run reads back)."""
    try:
        return Path(location).read_bytes()
    except FileNotFoundError:
        raise StateError(f"resume state {location} does not exist; check --resume-from") from None
    except OSError as e:
        raise StateError(f"cannot read resume state {location}: {e.strerror or e}") from e


def write_bytes(location: str, data: bytes) -> None:
    """Write ``data`` to ``location`` atomically (temporary file, fsync, rename)."""
    path = Path(location)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write into {path.parent}: {e.strerror or e}") from e
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove(location: str) -> None:
    """Delete the file at ``location`` if it is there (undoing a partial set of outputs)."""
    Path(location).unlink(missing_ok=True)
