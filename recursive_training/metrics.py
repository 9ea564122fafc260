"""Walk-forward forecast metrics from additive error sums.

Each batch returns sums (count, absolute error, squared error, squared actual change,
direction hits and misses) so that overall metrics are sums of batch sums. Persistence
predicts no change, so its squared error is the squared actual change.
"""

from __future__ import annotations

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

    def table(self, variables: list[str]) -> dict[str, dict[str, float | int | None]]:
        """Metrics per variable: n, mae, rmse, directional_accuracy, skill_vs_persistence."""
        return {v: self._metrics(j) for j, v in enumerate(variables)}

    def _metrics(self, j: int) -> dict[str, float | int | None]:
        n = int(self.n[j])
        called = self.hits[j] + self.misses[j]
        return {
            "n": n,
            "mae": _ratio(self.abs_error[j], n),
            "rmse": None if n == 0 else float(np.sqrt(self.sq_error[j] / n)),
            "directional_accuracy": _ratio(self.hits[j], called),
            "skill_vs_persistence": None
            if self.sq_actual[j] == 0
            else float(1.0 - self.sq_error[j] / self.sq_actual[j]),
        }


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else float(numerator / denominator)
