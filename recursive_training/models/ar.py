"""``ar``: one ridge model per series on its own lagged changes (plus shared exog lags).

Series are independent, so statistics are stacked per series: X'WX is (series x q x q)
with q = 1 + L * (1 + E), and all series are solved by one vectorized solve. Cost and
memory grow linearly in the number of series, and a missing value drops a sample of its
own series only, so counts are per series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from recursive_training.arrays import FloatArray
from recursive_training.models.base import (
    ORIGINS,
    Forecast,
    ModelStructure,
    Window,
    own_lag_names,
    predict_columns,
    sample_moments,
    series_samples,
)
from recursive_training.statistics import Moments, solve_ridge


@dataclass(frozen=True)
class AutoRegressive(ModelStructure):
    """Each series regressed on its own lags and the exog's; coefficients (series x q)."""

    name: ClassVar[str] = "ar"

    def feature_names(self) -> list[str]:
        return own_lag_names(self.exog, self.lags)

    def zeros(self) -> Moments:
        v, q = len(self.series), self.n_features
        return Moments(np.zeros((v, q, q)), np.zeros((v, q)), np.zeros(v), np.zeros(v, np.int64))

    def statistics(
        self, levels: FloatArray | Window, origins: ORIGINS, weights: FloatArray
    ) -> tuple[Moments, NDArray[np.bool_]]:
        samples, _, _ = series_samples(self, levels, origins)
        return Moments(*sample_moments(samples, weights, per_series=True)), samples.complete

    def solve(self, moments: Moments, alpha: float, min_samples: int) -> FloatArray | None:
        ready = moments.n >= min_samples
        if not ready.any():
            return None
        coefficients = np.full((len(self.series), self.n_features), np.nan)
        solved = solve_ridge(moments.xtx[ready], moments.xty[ready][..., None], alpha)
        coefficients[ready] = solved[..., 0]
        return coefficients

    def systems(self, moments: Moments) -> tuple[FloatArray, FloatArray, FloatArray]:
        """One system per series."""
        return moments.xtx, moments.xty[..., None], moments.yty[:, None]

    def to_systems(self, coefficients: FloatArray) -> FloatArray:
        return coefficients[..., None]

    def from_systems(self, stacked: FloatArray) -> FloatArray:
        return stacked[..., 0]

    def predict(
        self, coefficients: FloatArray, levels: FloatArray | Window, origins: ORIGINS
    ) -> Forecast:
        samples, _, _ = series_samples(self, levels, origins)
        predicted = predict_columns(coefficients, samples)
        return Forecast(predicted, samples.target, np.isfinite(predicted))

    def shard_coefficients(self, coefficients: FloatArray, start: int, stop: int) -> FloatArray:
        """Each series has its own row."""
        return coefficients[start:stop]

    def combine_shards(self, parts: Sequence[Moments]) -> Moments:
        """Series shards are disjoint models: their statistics are concatenated in order."""
        return Moments(
            xtx=np.concatenate([p.xtx for p in parts]),
            xty=np.concatenate([p.xty for p in parts]),
            yty=np.concatenate([p.yty for p in parts]),
            n=np.concatenate([p.n for p in parts]),
        )
