"""Local atomic writes: a file the caller gives up is moved into place, not copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recursive_training import storage

pytestmark = pytest.mark.unit

CONTENT = os.urandom(1 << 20)


def spooled(folder: Path) -> Path:
    path = folder / "spool.parquet"
    path.write_bytes(CONTENT)
    return path


def test_a_consumed_file_on_the_same_disk_is_moved_not_copied(tmp_path: Path) -> None:
    source = spooled(tmp_path)
    inode = source.stat().st_ino
    target = tmp_path / "out" / "predictions.parquet"
    storage.write_bytes(str(target), source, consume=True)
    assert target.read_bytes() == CONTENT
    assert target.stat().st_ino == inode, "copied instead of moved"
    assert not source.exists()
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["predictions.parquet"]


def test_a_file_not_consumed_is_copied_and_kept(tmp_path: Path) -> None:
    source = spooled(tmp_path)
    target = tmp_path / "predictions.parquet"
    storage.write_bytes(str(target), source)
    assert target.read_bytes() == CONTENT and source.read_bytes() == CONTENT
    assert target.stat().st_ino != source.stat().st_ino


def test_a_consumed_file_on_another_disk_is_copied(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's folder")
    folder = other / f"pulse-test-{os.getpid()}"
    folder.mkdir()
    try:
        source = spooled(folder)
        target = tmp_path / "predictions.parquet"
        storage.write_bytes(str(target), source, consume=True)
        assert target.read_bytes() == CONTENT
        assert [p.name for p in tmp_path.iterdir()] == ["predictions.parquet"]
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
