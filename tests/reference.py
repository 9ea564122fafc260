"""Independent reference implementations used to pin the pipeline's numbers.

Built with pandas shifts and numpy.linalg.lstsq on an explicitly augmented matrix, so
they share no code with the pipeline's sufficient-statistics path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def design_frame(
    levels: pd.DataFrame, lags: int, horizon: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Features, targets and realization time of every origin row, via pandas shifts."""
    changes = levels.diff()
    columns = {"const": pd.Series(1.0, index=levels.index)}
    for name in levels.columns:
        for lag in range(lags):
            columns[f"{name}.change.lag{lag}"] = changes[name].shift(lag)
    features = pd.DataFrame(columns)
    targets = levels.shift(-horizon) - levels
    realized = pd.Series(levels.index, index=levels.index).shift(-horizon)
    keep = features.notna().all(axis=1) & targets.notna().all(axis=1) & realized.notna()
    return features[keep], targets[keep], realized[keep]


def ridge_lstsq(
    features: pd.DataFrame, targets: pd.DataFrame, alpha: float, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted ridge with penalty alpha * sum(w) * var_j on each non-intercept column,
    solved by least squares on the augmented system [sqrt(w) X; sqrt(P)] b = [sqrt(w) Y; 0]."""
    x, y = features.to_numpy(), targets.to_numpy()
    w = np.ones(len(x)) if weights is None else weights
    total = w.sum()
    mean = (w[:, None] * x).sum(axis=0) / total
    variance = (w[:, None] * (x - mean) ** 2).sum(axis=0) / total
    penalty = alpha * total * variance
    penalty[0] = 0.0
    augmented_x = np.vstack([np.sqrt(w)[:, None] * x, np.diag(np.sqrt(penalty))])
    augmented_y = np.vstack([np.sqrt(w)[:, None] * y, np.zeros((x.shape[1], y.shape[1]))])
    return np.linalg.lstsq(augmented_x, augmented_y, rcond=None)[0]
