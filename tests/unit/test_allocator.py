"""The CLI's allocator settings: big temporaries reuse pages instead of faulting new ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# Allocates and frees 24 MiB arrays (the size of a 10,000-series batch's temporaries)
# and prints the minor page faults that cost, with or without the CLI's settings.
FAULTS = """
import resource, sys
import numpy as np
from recursive_training.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    a = np.ones(3 << 20)
    b = a * 2.0
    del a, b
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], check=True, capture_output=True, text=True
    )
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_temporaries_are_reused_without_page_faults() -> None:
    default, tuned = faults("default"), faults("tuned")
    # By default every round faults its pages again (fewer than 6,144 per array where the
    # kernel hands out transparent huge pages); tuned, only the first round does.
    assert default > 5_000
    assert tuned < default / 5
