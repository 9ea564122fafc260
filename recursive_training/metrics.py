"""Walk-forward forecast metrics from additive error sums.

Each batch returns sums (count, absolute error, squared error, squared actual change,
direction hits and misses) so that overall metrics are sums of batch sums. Persistence
predicts no change, so its squared error is the squared actual change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from recursive_training.arrays import FloatArray


@dataclass(frozen=True)
class ErrorSums:
    """Per-variable sums over evaluated samples."""

    n: FloatArray
    abs_error: FloatArray
    sq_error: FloatArray
    sq_actual: FloatArray
    hits: FloatArray
    misses: FloatArray

    @classmethod
    def zeros(cls, n_targets: int) -> ErrorSums:
        """The sums of no samples."""
        zero = np.zeros(n_targets)
        return cls(zero, zero, zero, zero, zero, zero)

    @classmethod
    def from_predictions(cls, predicted: FloatArray, actual: FloatArray) -> ErrorSums:
        """Sums for predicted vs actual changes (origins x variables); NaN on either side
        means that variable was not predicted at that origin."""
        known = np.isfinite(predicted) & np.isfinite(actual)
        if not known.all():
            predicted, actual = np.where(known, predicted, 0.0), np.where(known, actual, 0.0)
        error = predicted - actual
        agree = np.sign(predicted) * np.sign(actual)
        return cls(
            n=known.sum(axis=0).astype(np.float64),
            abs_error=np.abs(error).sum(axis=0),
            sq_error=(error**2).sum(axis=0),
            sq_actual=(actual**2).sum(axis=0),
            hits=(agree > 0).sum(axis=0).astype(float),
            misses=(agree < 0).sum(axis=0).astype(float),
        )

    def __add__(self, other: ErrorSums) -> ErrorSums:
        return ErrorSums(
            self.n + other.n,
            self.abs_error + other.abs_error,
            self.sq_error + other.sq_error,
            self.sq_actual + other.sq_actual,
            self.hits + other.hits,
            self.misses + other.misses,
        )

    def arrays(self) -> dict[str, FloatArray]:
        """Metrics of every variable at once (NaN where undefined): the O(V) path that the
        per-series table and summary take at any number of series."""
        with np.errstate(divide="ignore", invalid="ignore"):
            called = self.hits + self.misses
            return {
                "n": self.n,
                "mae": np.where(self.n > 0, self.abs_error / self.n, np.nan),
                "rmse": np.where(self.n > 0, np.sqrt(self.sq_error / self.n), np.nan),
                "directional_accuracy": np.where(called > 0, self.hits / called, np.nan),
                "skill_vs_persistence": np.where(
                    self.sq_actual != 0, 1.0 - self.sq_error / self.sq_actual, np.nan
                ),
                "rms_change": np.where(self.n > 0, np.sqrt(self.sq_actual / self.n), np.nan),
            }

    def table(self, variables: list[str]) -> dict[str, dict[str, float | int | None]]:
        """Metrics per variable: n, then TABLE_METRICS."""
        return rows(self.arrays(), variables, range(len(variables)))


TABLE_METRICS = ("mae", "rmse", "directional_accuracy", "skill_vs_persistence", "rms_change")
"""The metrics of a variable in the results document, after its sample count ``n``."""


def rows(
    arrays: dict[str, FloatArray], variables: list[str], indices: Iterable[int]
) -> dict[str, dict[str, float | int | None]]:
    """The document's metrics of the variables at ``indices`` (None where undefined)."""
    return {
        variables[j]: {"n": int(arrays["n"][j])}
        | {name: _defined(arrays[name][j]) for name in TABLE_METRICS}
        for j in indices
    }


def _defined(value: np.float64) -> float | None:
    return None if np.isnan(value) else float(value)
