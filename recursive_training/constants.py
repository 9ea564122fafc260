"""Names and numbers shared across the package."""

from __future__ import annotations

from typing import Final

RESULTS_SCHEMA_VERSION: Final = 1
STATE_SCHEMA_VERSION: Final = 1
RESULTS_KIND: Final = "pulse.dev/TrainingResults"
STATE_KIND: Final = "pulse.dev/TrainingState"

DEFAULT_INPUT_DATA: Final = "builtin:synthetic"
DEFAULT_RESULTS_FILE: Final = "results.json"
STATE_FILE: Final = "state-{run_id}.npz"
PREDICTIONS_FILE: Final = "predictions-{run_id}.parquet"
"""A run's data files carry its id, so writing them never touches an earlier run's files;
``results.json`` names them and is written last (docs/outputs.md)."""

CONFIDENCE_LEVEL: Final = 0.90
"""Width of the credible interval reported for rule trust."""

MODEL_RULE: Final = "model"
INTERCEPT: Final = "const"

DEFAULT_SCALE_WINDOW: Final = 52
"""Changes in the pooled rms scale: about a quarter of business days (or a year of weeks),
so the RMS is within ~10% (1/sqrt(2W)) of the series' scale while following slow changes
of volatility."""
