"""Names and numbers shared across the package."""

from __future__ import annotations

from typing import Final

RESULTS_SCHEMA_VERSION: Final = 3
STATE_SCHEMA_VERSION: Final = 3
RESULTS_KIND: Final = "pulse.dev/TrainingResults"
STATE_KIND: Final = "pulse.dev/TrainingState"
SERIES_METRICS_KIND: Final = "pulse.dev/SeriesMetrics"
RULE_TRUST_KIND: Final = "pulse.dev/RuleTrust"
PENALTIES_KIND: Final = "pulse.dev/Penalties"

DEFAULT_INPUT_DATA: Final = "builtin:synthetic"
DEFAULT_RESULTS_FILE: Final = "results.json"
STATE_FILE: Final = "state-{run_id}.npz"
PREDICTIONS_FILE: Final = "predictions-{run_id}.parquet"
METRICS_FILE: Final = "metrics-{run_id}.parquet"
RULES_FILE: Final = "rules-{run_id}.parquet"
PENALTIES_FILE: Final = "penalties-{run_id}.parquet"  # with --ridge-alpha auto only
"""A run's data files carry its id, so writing them never touches an earlier run's files;
``results.json`` names them and is written last (docs/outputs.md)."""

SERIES_DETAIL_LIMIT: Final = 200
"""Up to this many series, the results document also lists every series' metrics (overall
and per batch), coefficients and every rule; beyond it only their summary, and the full
tables are in the metrics and rules Parquet files (which every run writes)."""

CONFIDENCE_LEVEL: Final = 0.90
"""Width of the credible interval reported for rule trust."""

MODEL_RULE: Final = "model"
INTERCEPT: Final = "const"

DEFAULT_SCALE_WINDOW: Final = 52
"""Changes in the pooled rms scale: about a quarter of business days (or a year of weeks),
so the RMS is within ~10% (1/sqrt(2W)) of the series' scale while following slow changes
of volatility."""

DEFAULT_ALPHA_GRID: Final = (
    0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0,
)  # fmt: skip
"""From about ordinary least squares (0.001: a standardized slope shrinks by 0.1%) to about
the mean-change model (1000: every slope shrinks by 99.9%), two values a decade, rounded
so the grid reads the same in YAML, the CRD and the results."""
FALLBACK_ALPHA: Final = 0.01
"""The penalty a batch uses before any error is known: the default of a fixed run (or the
grid value nearest to it on a log scale), so an ``auto`` run starts as a default run does."""
