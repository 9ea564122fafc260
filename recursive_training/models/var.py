"""``var``: every series regressed on the lagged changes of every series (a VAR).

Today's model, numbers unchanged: one design ``features.design`` shared by all targets,
one GEMM for the statistics and one ridge solve. The features are rows of the window's
(``Window.features``), built once for every horizon. Its statistics grow as (1 + V * L)^2,
so ``memory.check_var_memory`` refuses runs that would not fit before any data is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from recursive_training import features as feats
from recursive_training.arrays import FloatArray
from recursive_training.exceptions import ConfigError
from recursive_training.models.base import ORIGINS, Forecast, ModelStructure, Window, rows_at
from recursive_training.penalty import EvaluationSamples, RidgePath
from recursive_training.statistics import Moments, solve_ridge


@dataclass(frozen=True)
class VectorAutoRegressive(ModelStructure):
    """Shared features ``[1, every series' L lagged changes]``; coefficients (p x V)."""

    name: ClassVar[str] = "var"

    def __post_init__(self) -> None:
        if self.exog:
            raise ConfigError(
                "exog applies to --model ar and pooled; var already regresses every series "
                "on the lags of every variable (list the regressors among the variables)"
            )

    def feature_names(self) -> list[str]:
        return feats.feature_names(self.series, self.lags)

    def zeros(self) -> Moments:
        p, v = self.n_features, len(self.series)
        return Moments(np.zeros((p, p)), np.zeros((p, v)), np.zeros(v), np.zeros(1, np.int64))

    def statistics(
        self, levels: FloatArray | Window, origins: ORIGINS, weights: FloatArray
    ) -> tuple[Moments, NDArray[np.bool_]]:
        x, y, complete = self._samples(levels, origins)
        moments = Moments.from_samples(*_complete_rows(complete, x, y, weights))
        return moments, np.broadcast_to(complete[:, None], y.shape)

    def _samples(
        self, levels: FloatArray | Window, origins: ORIGINS
    ) -> tuple[FloatArray, FloatArray, NDArray[np.bool_]]:
        """``features.design`` at these origins (the features a view of the window's when
        the origins are consecutive) and which samples are complete."""
        window = Window.of(levels, self.lags)
        features, known = window.features
        x = rows_at(features, origins, 0)
        y = rows_at(window.levels, origins, self.horizon) - rows_at(window.levels, origins, 0)
        return x, y, rows_at(known, origins, 0) & np.isfinite(y).all(axis=1)

    def solve(self, moments: Moments, alpha: float, min_samples: int) -> FloatArray | None:
        if moments.n.sum() < min_samples:
            return None
        return solve_ridge(moments.xtx, moments.xty, alpha)

    def systems(self, moments: Moments) -> tuple[FloatArray, FloatArray, FloatArray]:
        """One system whose targets are the series."""
        return moments.xtx[None], moments.xty[None], moments.yty[None]

    def to_systems(self, coefficients: FloatArray) -> FloatArray:
        return coefficients[..., None, :, :]

    def from_systems(self, stacked: FloatArray) -> FloatArray:
        return stacked[..., 0, :, :]

    def evaluation_samples(
        self, levels: FloatArray | Window, origins: ORIGINS
    ) -> tuple[EvaluationSamples, NDArray[np.bool_]]:
        """The complete rows themselves (see ``penalty.EvaluationSamples``), and which
        origins they are."""
        x, y, complete = self._samples(levels, origins)
        return EvaluationSamples.of_rows(*_complete_rows(complete, x, y)), complete

    def path_errors(self, path: RidgePath, parts: Sequence[EvaluationSamples]) -> list[FloatArray]:
        """Every alpha's squared errors on each part's rows, from the path's basis."""
        return path.row_errors([(samples.features, samples.targets) for samples in parts])

    def predict(
        self, coefficients: FloatArray, levels: FloatArray | Window, origins: ORIGINS
    ) -> Forecast:
        x, y, complete = self._samples(levels, origins)
        if complete.all():
            predicted = x @ coefficients
        else:
            predicted = np.full(y.shape, np.nan)
            predicted[complete] = x[complete] @ coefficients
        return Forecast(predicted, y, np.broadcast_to(complete[:, None], y.shape).copy())

    def samples_per_origin(self) -> int:
        """A VAR sample is a whole row: every target of one origin."""
        return 1

    def sample_count(self, per_series: FloatArray) -> int:
        """Every target of a VAR sample is counted with it: the rows are the samples."""
        return int(per_series.max(initial=0))

    def coefficient_table(self, coefficients: FloatArray) -> dict[str, list[float]]:
        """One column of coefficients per target."""
        return {v: coefficients[:, j].tolist() for j, v in enumerate(self.series)}

    def shard(self, start: int, stop: int) -> ModelStructure:
        """A VAR's targets share features of every series: it has one shard, itself."""
        if (start, stop) != (0, len(self.series)):
            raise ValueError("a VAR is computed over all its series at once")
        return self

    def combine_shards(self, parts: Sequence[Moments]) -> Moments:
        """A VAR's targets share their features, so it is never split by series."""
        if len(parts) != 1:
            raise ValueError("a VAR is computed over all its series at once")
        return parts[0]


def _complete_rows(complete: NDArray[np.bool_], *arrays: FloatArray) -> list[FloatArray]:
    """The complete rows of each array: the arrays themselves when every row is (no copy)."""
    every = bool(complete.all())
    return [a if every else a[complete] for a in arrays]
