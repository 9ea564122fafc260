"""The TrainingRun operator: turns `trainingruns.pulse.dev` objects into Dask training workloads.

The package lives in the repository's ``operator/`` folder but is imported as
``trainingrun_operator``, because ``operator`` is a standard-library module. It never
imports the pipeline (``recursive_training``), pandas or numpy: the contract between the
two worlds is the ``pulse-train`` command line that the driver pod runs.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    # One distribution ships the pipeline and the operator: one version for both.
    __version__ = version("pulse-recursive-training")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
