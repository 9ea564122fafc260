"""Walk-forward forecast metrics from additive error sums.

Each batch returns sums (count, absolute error, squared error, squared actual change,
direction hits and misses) so that overall metrics are sums of batch sums. Persistence
predicts no change, so its squared error is the squared actual change.

Scale-free metrics, also sums:

- MASE: each absolute error divided by the mean absolute error of persistence (the mean
  absolute h-step change) over the samples realized before the prediction's batch starts,
  so the scale is known when the batch is predicted. A batch predicted before any such
  sample of its series (or when all of them were zero changes) has no scale: its
  predictions are left out of MASE, and ``n_scaled`` counts those that entered.
- sMAPE on levels: ``2 |F - A| / (|F| + |A|)`` with the forecast level F = level at the
  origin + predicted change and A the realized level, over the samples whose origin and
  realized levels are both positive (``n_smape`` counts them); undefined for a series
  without any.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

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
    scaled_abs_error: FloatArray  # sum of |error| / persistence MAE known before the batch
    n_scaled: FloatArray
    smape: FloatArray  # sum of the sMAPE terms
    n_smape: FloatArray

    @classmethod
    def zeros(cls, n_targets: int) -> ErrorSums:
        """The sums of no samples."""
        zero = np.zeros(n_targets)
        return cls(zero, zero, zero, zero, zero, zero, zero, zero, zero, zero)

    @classmethod
    def from_predictions(
        cls, predicted: FloatArray, actual: FloatArray, origin_levels: FloatArray
    ) -> ErrorSums:
        """Sums for predicted vs actual changes (origins x variables), from the levels at
        the origins; NaN on either side means that variable was not predicted at that
        origin. The MASE sums are filled in by ``scaled`` once the batch's scale is known."""
        known = np.isfinite(predicted) & np.isfinite(actual)
        if not known.all():
            predicted, actual = np.where(known, predicted, 0.0), np.where(known, actual, 0.0)
        # Few full-size temporaries, reused through ``out=``: with thousands of series every
        # one costs a pass over memory (and fresh pages); the values are those of the plain
        # expressions, operation for operation.
        error = predicted - actual
        abs_error = np.abs(error)
        square = np.multiply(error, error, out=error)
        sq_error = square.sum(axis=0)
        sq_actual = np.multiply(actual, actual, out=square).sum(axis=0)
        # sign(p) * sign(a) > 0 (< 0) without the products: both rose or both fell
        # (one rose, one fell); a zero on either side is neither.
        rose, fell = predicted > 0, predicted < 0
        hits = (rose & (actual > 0)) | (fell & (actual < 0))
        misses = (rose & (actual < 0)) | (fell & (actual > 0))
        forecast_level = np.add(origin_levels, predicted, out=square)
        realized_level = origin_levels + actual
        positive = known & (origin_levels > 0) & (realized_level > 0)
        denominator = np.abs(forecast_level, out=forecast_level)
        denominator += np.abs(realized_level, out=realized_level)
        terms = np.zeros_like(denominator)
        # 2|e| / (|F| + |A|) where both levels are positive, 0 elsewhere (not computed)
        np.divide(
            np.multiply(abs_error, 2, out=realized_level), denominator, out=terms, where=positive
        )
        zero = np.zeros(predicted.shape[1])
        return cls(
            n=known.sum(axis=0).astype(np.float64),
            abs_error=abs_error.sum(axis=0),
            sq_error=sq_error,
            sq_actual=sq_actual,
            hits=hits.sum(axis=0).astype(float),
            misses=misses.sum(axis=0).astype(float),
            scaled_abs_error=zero,
            n_scaled=zero,
            smape=terms.sum(axis=0),
            n_smape=positive.sum(axis=0).astype(np.float64),
        )

    def scaled(self, persistence_mae: FloatArray) -> ErrorSums:
        """These sums (one batch's) with the MASE sums of a scale per variable: the
        persistence MAE known before the batch (NaN or zero: no scale, left out)."""
        usable = np.isfinite(persistence_mae) & (persistence_mae > 0)
        divisor = np.where(usable, persistence_mae, 1.0)
        return replace(
            self,
            scaled_abs_error=np.where(usable, self.abs_error / divisor, 0.0),
            n_scaled=np.where(usable, self.n, 0.0),
        )

    def __add__(self, other: ErrorSums) -> ErrorSums:
        return ErrorSums(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(ErrorSums))
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
                "mase": np.where(self.n_scaled > 0, self.scaled_abs_error / self.n_scaled, np.nan),
                "smape": np.where(self.n_smape > 0, self.smape / self.n_smape, np.nan),
            }

    def table(self, variables: list[str]) -> dict[str, dict[str, float | int | None]]:
        """Metrics per variable: n, then TABLE_METRICS."""
        return rows(self.arrays(), variables, range(len(variables)))


TABLE_METRICS = (
    "mae",
    "rmse",
    "directional_accuracy",
    "skill_vs_persistence",
    "rms_change",
    "mase",
    "smape",
)
"""The metrics of a variable in the results document, after its sample count ``n``."""


def rows(
    arrays: dict[str, FloatArray], variables: list[str], indices: Iterable[int]
) -> dict[str, dict[str, float | int | None]]:
    """The document's metrics of the variables at ``indices`` (None where undefined)."""
    at = np.fromiter(indices, dtype=np.intp)
    # each metric converted to Python numbers at once, not element by element
    columns = {"n": arrays["n"][at].astype(np.int64).tolist()} | {
        name: [None if math.isnan(v) else v for v in arrays[name][at].tolist()]
        for name in TABLE_METRICS
    }
    return {
        variables[j]: {name: column[k] for name, column in columns.items()}
        for k, j in enumerate(at.tolist())
    }
