"""docs/trainingrun-reference.md is what hack/generate_reference.py renders from the CRD."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_trainingrun_reference_matches_the_crd() -> None:
    done = subprocess.run(
        [sys.executable, str(PROJECT / "hack" / "generate_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
