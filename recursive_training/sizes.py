"""Sizes in bytes as people write and read them (``8GB``, ``512MiB``), and how much memory
this process may use.

Kept apart from the models so the config can parse ``--max-memory`` without loading numpy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

UNITS: Final = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    # as Kubernetes writes memory (resource.Quantity), so a TrainingRun's 8Gi means 8 GiB
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_bytes(text: str) -> int:
    """``8GB``, ``512MiB``, ``8Gi``, ``1.5e9``: a size in bytes, with a clear error otherwise."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    try:
        if match is None or unit not in UNITS:
            raise ValueError(text)
        return int(float(match.group(1)) * UNITS[unit])
    except ValueError:
        raise ValueError(
            f"{text!r} is not a size; write bytes or a number with a unit such as 8GB or 512MiB"
        ) from None


def show_bytes(size: float) -> str:
    """``1.8 GB``: decimal units, as people read them."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


# Where a container's memory limit is (cgroup v2, then v1): in a pod the machine's memory
# is the node's, not what the kernel lets this process use.
CGROUP_LIMITS: Final = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def usable_memory() -> int | None:
    """Bytes this process may use: the machine's memory, or its container's limit if lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 0
    for limit in CGROUP_LIMITS:
        try:
            text = limit.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means no limit; v1 writes a huge number then
            total = min(total, int(text)) if total > 0 else int(text)
        break
    return total if total > 0 else None
