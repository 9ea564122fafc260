"""The image's pins (docker/constraints.txt) cover every runtime dependency in pyproject.

The image installs with ``--only-binary --no-deps -r constraints.txt``, so a dependency
added to pyproject but not pinned there is simply missing in the image, and the first sign
is an ImportError in a pod.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pinned() -> set[str]:
    lines = (ROOT / "docker" / "constraints.txt").read_text().splitlines()
    return {
        canonicalize_name(line.split("==")[0])
        for line in lines
        if line.strip() and not line.startswith("#")
    }


@pytest.mark.unit
def test_every_runtime_requirement_is_pinned_for_the_image() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [*project["dependencies"], *project["optional-dependencies"]["operator"]]
    names = {canonicalize_name(Requirement(r).name) for r in runtime}
    missing = sorted(names - pinned())
    assert not missing, (
        f"{', '.join(missing)} not pinned in docker/constraints.txt; "
        "run docker/update-constraints.py after changing dependencies"
    )
