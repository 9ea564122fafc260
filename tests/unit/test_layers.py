"""The two worlds meet only at the CLI: neither package imports the other's dependencies."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import importlib, pkgutil, sys
package = importlib.import_module({package!r})
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(module.name)
print(",".join(sorted({{name.split(".")[0] for name in sys.modules}} & set({forbidden!r}))))
"""


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("recursive_training", ["kopf", "kubernetes", "kubernetes_asyncio", "kr8s", "pykube"]),
        ("trainingrun_operator", ["pandas", "numpy", "recursive_training", "dask", "distributed"]),
    ],
)
def test_package_does_not_import_the_other_world(package: str, forbidden: list[str]) -> None:
    """Importing every module of `package` in a fresh interpreter loads none of `forbidden`."""
    code = PROBE.format(package=package, forbidden=forbidden)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "", f"{package} imports {result.stdout.strip()}"
