"""``pooled``: one model shared by every series (a "global" model).

The samples of all series are stacked and regressed on their own lagged changes (plus
the exog's) with one set of coefficients, so the statistics are one q x q system that
adds up across series shards.

Series of different scales: with ``scale="rms"`` (the default) each sample is divided by
its series' root-mean-square change over the ``scale_window`` changes up to and
including its origin (exog features by the exog's own), and predictions are multiplied
back. The scale is known at the origin, so nothing looks ahead, and a window only needs
``scale_window`` rows of margin, so every batching sees the same scales. Unscaled, the
sum of squares is dominated by the largest series and the shared coefficients describe
those alone; scaled, every series weighs in with the same unit-free dynamics. A sample
whose scale is undefined (no finite change in the window) or zero (a flat window) is
dropped. ``scale="none"`` is plain pooled least squares on the changes, as mlforecast's
LinearRegression on lags of differences computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from recursive_training.arrays import FloatArray
from recursive_training.constants import DEFAULT_SCALE_WINDOW
from recursive_training.exceptions import ConfigError
from recursive_training.models.base import (
    ORIGINS,
    Forecast,
    ModelStructure,
    SeriesSamples,
    Window,
    own_lag_names,
    predict_columns,
    rows_at,
    sample_moments,
    series_samples,
)
from recursive_training.statistics import Moments, solve_ridge

SCALES: Final = ("rms", "none")


def rolling_rms(
    changes: FloatArray, finite: NDArray[np.bool_], origins: ORIGINS, window: int
) -> FloatArray:
    """RMS of the finite changes among the ``window`` rows ending at each origin (n x cols).

    ``changes`` hold zeros where not ``finite``. NaN where no change is finite or the RMS
    is zero: such a sample has no scale. Each sum adds the same values in the same order
    whatever rows a window holds beyond them (a running cumulative sum would not, and
    would lose precision after a volatile spell); counts are exact integers.
    """
    low, high = int(origins.min()), int(origins.max()) + 1
    first = max(low - window + 1, 0)
    pad = window - 1 - (low - first)  # rows before the data's first row count as missing
    squares = changes[first:high] ** 2
    seen = finite[first:high]
    if pad:
        squares = np.concatenate([np.zeros((pad, changes.shape[1])), squares])
        seen = np.concatenate([np.zeros((pad, changes.shape[1]), dtype=bool), seen])
    total = rows_at(sliding_window_view(squares, window, axis=0).sum(axis=-1), origins, -low)
    if seen.all():
        count: FloatArray | NDArray[np.int64] = np.full((len(origins), 1), window)
    else:
        counts = np.zeros((len(seen) + 1, seen.shape[1]), dtype=np.int64)
        np.cumsum(seen, axis=0, out=counts[1:])
        count = rows_at(counts[window:] - counts[:-window], origins, -low)
    rms = np.sqrt(total / np.maximum(count, 1))
    return np.where((count > 0) & (rms > 0), rms, np.nan)


@dataclass(frozen=True)
class Pooled(ModelStructure):
    """All series share one regression; coefficients (q,) in scaled units."""

    name: ClassVar[str] = "pooled"

    scale: str = "rms"
    scale_window: int = DEFAULT_SCALE_WINDOW

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ConfigError(f"scale {self.scale!r} is unknown; use one of {', '.join(SCALES)}")
        if self.scale_window < 1:
            raise ConfigError(f"scale_window={self.scale_window} must be at least 1")

    @property
    def history(self) -> int:
        return max(self.lags, self.scale_window) if self.scale == "rms" else self.lags

    def feature_names(self) -> list[str]:
        return own_lag_names(self.exog, self.lags)

    def coefficient_table(self, coefficients: FloatArray) -> dict[str, list[float]]:
        """One model for every series."""
        return {"all series": coefficients.tolist()}

    def describe(self) -> dict[str, Any]:
        window = self.scale_window if self.scale == "rms" else None
        return {**super().describe(), "scale": self.scale, "scale_window": window}

    def zeros(self) -> Moments:
        q = self.n_features
        return Moments(np.zeros((q, q)), np.zeros(q), np.zeros(1), np.zeros(1, np.int64))

    def scaled_samples(
        self, levels: FloatArray | Window, origins: ORIGINS
    ) -> tuple[SeriesSamples, FloatArray | None]:
        """The samples with the exog columns divided by their scale, incomplete where a
        scale is undefined, and each series' scale at each origin (None when unscaled)."""
        samples, changes, finite = series_samples(self, levels, origins)
        if self.scale == "none":
            return samples, None
        n_series = len(self.series)
        scales = rolling_rms(changes, finite, origins, self.scale_window)
        own = scales[:, :n_series]
        exog = np.repeat(scales[:, n_series:], self.lags, axis=1)  # one per shared column
        known = np.isfinite(exog).all(axis=1, keepdims=True)
        shared = np.where(known, samples.shared / np.where(known, exog, 1.0), 0.0)
        complete = samples.complete & np.isfinite(own) & known
        return SeriesSamples(samples.own, shared, samples.target, complete), own

    def statistics(
        self, levels: FloatArray | Window, origins: ORIGINS, weights: FloatArray
    ) -> tuple[Moments, NDArray[np.bool_]]:
        samples, scales = self.scaled_samples(levels, origins)
        inverse = (
            None
            if scales is None
            else np.divide(1.0, scales, out=np.zeros_like(scales), where=samples.complete)
        )
        moments = Moments(
            *sample_moments(samples, weights, per_series=False, inverse_scale=inverse)
        )
        return moments, samples.complete

    def solve(self, moments: Moments, alpha: float, min_samples: int) -> FloatArray | None:
        if moments.n.sum() < min_samples:
            return None
        coefficients: FloatArray = solve_ridge(moments.xtx, moments.xty[:, None], alpha)[:, 0]
        return coefficients

    def systems(self, moments: Moments) -> tuple[FloatArray, FloatArray, FloatArray]:
        """One system, one target: every series' scaled samples together."""
        return moments.xtx[None], moments.xty[None, :, None], moments.yty[None]

    def to_systems(self, coefficients: FloatArray) -> FloatArray:
        return coefficients[..., None, :, None]

    def from_systems(self, stacked: FloatArray) -> FloatArray:
        return stacked[..., 0, :, 0]

    def penalty_targets(self) -> tuple[str, ...]:
        """One model, one penalty, chosen on the error it is fitted to: squared errors in
        scaled units summed over series, so no series weighs in by its size."""
        return ("all series",)

    def predict(
        self, coefficients: FloatArray, levels: FloatArray | Window, origins: ORIGINS
    ) -> Forecast:
        samples, scales = self.scaled_samples(levels, origins)
        predicted = predict_columns(coefficients, samples, scales)
        return Forecast(predicted, samples.target, np.isfinite(predicted))
