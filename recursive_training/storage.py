"""Reading and atomically writing the run's files at a location: a local path or ``s3://``.

A local write goes to a temporary name in the destination folder and is renamed into
place; an S3 write is one PUT, which S3 makes visible whole or not at all. Either way a
reader never sees a partial file, and the caller removes what a failed run wrote.
Content type and metadata are stored with S3 objects; local files have no place for them.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from recursive_training.exceptions import OutputError, StateError
from recursive_training.s3_location import S3Location, S3Settings, is_s3_uri

DEFAULT_S3 = S3Settings()


def join(base: str, name: str) -> str:
    """``name`` inside the folder ``base``."""
    return f"{base.rstrip('/')}/{name}"


def exists(location: str, settings: S3Settings = DEFAULT_S3) -> bool:
    """True when a file is at ``location`` (for S3 a missing bucket is an OutputError)."""
    if is_s3_uri(location):
        from recursive_training import s3  # boto3, for S3 locations only

        return s3.exists(S3Location.parse(location), settings, OutputError)
    return Path(location).is_file()


def read_bytes(location: str, settings: S3Settings = DEFAULT_S3) -> bytes:
    """The content of a state file (the only thing a run reads back)."""
    if is_s3_uri(location):
        from recursive_training import s3  # boto3, for S3 locations only

        return s3.get_bytes(
            S3Location.parse(location), settings, StateError, action="read resume state"
        )
    try:
        return Path(location).read_bytes()
    except FileNotFoundError:
        raise StateError(f"resume state {location} does not exist; check --resume-from") from None
    except OSError as e:
        raise StateError(f"cannot read resume state {location}: {e.strerror or e}") from e


def write_bytes(
    location: str,
    data: bytes | Path,
    settings: S3Settings = DEFAULT_S3,
    *,
    content_type: str = "application/octet-stream",
    metadata: dict[str, str] | None = None,
    consume: bool = False,
) -> None:
    """Write ``data`` (bytes, or a local file's content) to ``location`` atomically.

    One PUT for S3; a temporary file in the destination folder, fsync and rename locally.
    With ``consume``, a local file ``data`` on the destination's filesystem is moved there
    instead of copied (the caller no longer needs it): a 100,000-series run's predictions
    are gigabytes.
    """
    if is_s3_uri(location):
        from recursive_training import s3  # boto3, for S3 locations only

        content = data if isinstance(data, bytes) else data.read_bytes()
        s3.put_bytes(
            S3Location.parse(location),
            content,
            settings,
            content_type=content_type,
            metadata=metadata or {},
        )
        return
    path = Path(location)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as e:
        raise OutputError(_folder_problem(path.parent, e)) from e
    try:
        if not isinstance(data, bytes) and consume and _moved(data, temporary):
            os.close(handle)  # the moved file replaced the one the handle names
        else:
            with os.fdopen(handle, "wb") as stream:
                if isinstance(data, bytes):
                    stream.write(data)
                else:
                    with data.open("rb") as source:
                        shutil.copyfileobj(source, stream)
                stream.flush()
                os.fsync(stream.fileno())
        # mkstemp creates 0600; results are meant to be shared like any file the user writes
        Path(temporary).chmod(0o666 & ~_umask())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _moved(source: Path, temporary: str) -> bool:
    """Move ``source`` (synced first) over the temporary file; False across filesystems."""
    with source.open("rb") as stream:
        os.fsync(stream.fileno())
    try:
        source.replace(temporary)
    except OSError as e:
        if e.errno == errno.EXDEV:
            return False
        raise
    return True


def check_writable(folder: str, settings: S3Settings = DEFAULT_S3) -> None:
    """Write and delete a probe file in ``folder``, so a run that could not save its results
    fails before training instead of at its end. A missing local folder is not created:
    the probe goes into its nearest existing ancestor."""
    probe = f".pulse-write-probe-{uuid.uuid4().hex[:12]}"
    if is_s3_uri(folder):
        from recursive_training import s3  # boto3, for S3 locations only

        location = S3Location.parse(folder).child(probe)
        s3.put_bytes(location, b"", settings, content_type="text/plain", metadata={})
        s3.delete(location, settings)
        return
    path = Path(folder)
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor))
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        (existing / probe).touch(exist_ok=False)
        (existing / probe).unlink()
    except OSError as e:
        raise OutputError(_folder_problem(path, e)) from e


def _folder_problem(folder: Path, error: OSError) -> str:
    """Why nothing can be written into ``folder``, naming a file that stands in its way."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return f"cannot write into {folder}: {blocker} is a file, not a folder; choose another path"
    return f"cannot write into {folder}: {error.strerror or error}"


def remove(location: str, settings: S3Settings = DEFAULT_S3) -> None:
    """Delete the file at ``location`` if it is there (undoing a partial set of outputs)."""
    if is_s3_uri(location):
        from recursive_training import s3  # boto3, for S3 locations only

        s3.delete(S3Location.parse(location), settings)
        return
    Path(location).unlink(missing_ok=True)


def _umask() -> int:
    """The process umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
