"""The TrainingRun operator: turns `trainingruns.pulse.dev` objects into Dask training workloads.

The package lives in the repository's ``operator/`` folder but is imported as
``trainingrun_operator``, because ``operator`` is a standard-library module. It never
imports the pipeline (``recursive_training``), pandas or numpy: the contract between the
two worlds is the ``pulse-train`` command line that the driver pod runs.
"""

from __future__ import annotations

__version__ = "0.1.0"
