"""Samples of the retrodiction problem: lagged changes as features, h-step changes as targets.

For an origin row t the features are ``[1, d_v(t), d_v(t-1), ..., d_v(t-L+1) for each v]``
with ``d_v(t) = v(t) - v(t-1)``, and the targets are ``v(t+h) - v(t)``. A sample is known
at its realization row t+h. Rows are steps of the series, whatever their spacing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from recursive_training.arrays import FloatArray
from recursive_training.constants import INTERCEPT


def feature_names(variables: Sequence[str], lags: int) -> list[str]:
    """Names of the feature columns, variable-major: ``spx_close.change.lag0`` ..."""
    return [INTERCEPT] + [f"{v}.change.lag{lag}" for v in variables for lag in range(lags)]


def design(
    levels: FloatArray, origins: NDArray[np.intp], lags: int, horizon: int
) -> tuple[FloatArray, FloatArray]:
    """Features X (n x (1 + m*lags)) and targets Y (n x m) for the given origin rows.

    Every origin must have ``lags`` rows before it and ``horizon`` rows after it in
    ``levels``; missing values propagate as NaN for the caller to drop.
    """
    return feature_rows(levels, lags)[origins], levels[origins + horizon] - levels[origins]


def feature_rows(levels: FloatArray, lags: int) -> FloatArray:
    """The features of every row of ``levels`` taken as an origin (rows x (1 + m*lags)),
    NaN where a lag reaches before the window's first change. Samples of any horizon take
    their rows of it, so a window's features are built once for all horizons."""
    changes = np.full_like(levels, np.nan)
    changes[1:] = np.diff(levels, axis=0)
    rows, width = levels.shape
    features = np.full((rows, 1 + width * lags), np.nan)
    features[:, 0] = 1.0
    # variable-major, as feature_names; a view, so writing it fills the features
    lagged = np.reshape(features[:, 1:], (rows, width, lags), copy=False)
    for lag in range(min(lags, rows)):
        lagged[lag:, :, lag] = changes[: rows - lag]
    return features


def complete_rows(features: FloatArray, targets: FloatArray) -> NDArray[np.bool_]:
    """Samples with every feature and every target present."""
    return np.asarray(np.isfinite(features).all(axis=1) & np.isfinite(targets).all(axis=1))


def usable_by_variable(
    levels: FloatArray, origins: NDArray[np.intp], lags: int, horizon: int
) -> NDArray[np.int64]:
    """Per column of ``levels``, the samples whose own values are all present: the origin,
    the ``lags`` rows before it (for its changes) and the target row."""
    present = np.isfinite(levels)
    usable = present[origins + horizon].copy()
    for lag in range(lags + 1):
        usable &= present[origins - lag]
    return np.asarray(usable.sum(axis=0), dtype=np.int64)
