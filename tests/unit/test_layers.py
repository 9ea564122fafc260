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


LAYER_PROBE = """
import importlib, sys
importlib.import_module({module!r})
loaded = sorted(m for m in sys.modules for f in {forbidden!r} if m == f or m.startswith(f + "."))
print(",".join(loaded))
"""


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        # Engines run any task on any batch; what the tasks compute is the stages' business.
        ("recursive_training.engines", ["recursive_training.stages"]),
        # Checkpoints are keyed by batches and task arguments, not by how they are run.
        (
            "recursive_training.checkpoint",
            ["recursive_training.engines", "recursive_training.config", "dask", "distributed"],
        ),
        # Validating a config (the CLI, --help, the operator's contract tests) needs no S3
        # client; the CLI's parser (--help) reads the config's fields and needs no numpy.
        ("recursive_training.config", ["boto3", "botocore", "numpy"]),
        # --help and a bad flag answer at once: the CLI loads the heavy libraries in run().
        (
            "recursive_training.run_training",
            ["pandas", "scipy", "pyarrow", "boto3", "distributed", "matplotlib", "tqdm"],
        ),
    ],
)
def test_lower_layers_do_not_import_higher_ones(module: str, forbidden: list[str]) -> None:
    """Importing `module` in a fresh interpreter loads none of `forbidden` (nor their parts)."""
    code = LAYER_PROBE.format(module=module, forbidden=forbidden)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "", f"{module} imports {result.stdout.strip()}"
