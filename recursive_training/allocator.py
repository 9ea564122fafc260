"""The C allocator's settings for a process that runs the pipeline's tasks.

A task over thousands of series makes many temporaries of tens of megabytes. glibc gives
every allocation above its mmap threshold (at most 32 MiB, 128 KiB at first) fresh pages
from the kernel and returns them on free, so every temporary pays a page fault per 4 KiB
page: at 10,000 series that was 250,000 faults and about a third of the run's CPU time
(system time). Raising the threshold, and the amount of freed memory kept at the top of
the heap, lets a batch reuse the pages of the one before. Peak memory is unchanged (pages
are kept only once they were needed); memory freed after the peak is returned at exit.
Called by the CLI for its own process; the worker processes of a local Dask cluster get
a fixed mmap threshold through their environment instead (``engines.WORKER_MALLOC``).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Final

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
# Allocations up to this size come from the heap, and this much free memory stays in it.
KEEP_BYTES: Final = 2**30


def keep_freed_memory() -> bool:
    """Tune glibc's allocator as the module says; False where there is no glibc (macOS,
    musl), which keeps its own defaults."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES) and mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
