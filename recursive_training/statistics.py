"""Sufficient statistics of weighted ridge regression, and the solve.

Everything the pipeline learns is a sum over samples, so batch statistics can be computed
anywhere and added in any grouping. Exponential forgetting stays exact under that
re-association because each batch weighs its samples relative to its own end and the
scan decays whole prefixes: ``decay(a -> c) = decay(a -> b) * decay(b -> c)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.linalg
from numpy.typing import NDArray

from recursive_training.arrays import FloatArray

SECONDS_PER_DAY = 86_400.0


def forgetting_weights(
    realized: NDArray[np.datetime64], reference: pd.Timestamp, half_life_days: float | None
) -> FloatArray:
    """w = 0.5 ** ((reference - realized) / half_life), or ones without forgetting."""
    if half_life_days is None:
        return np.ones(len(realized))
    age_days = (reference.to_datetime64() - realized) / np.timedelta64(1, "s") / SECONDS_PER_DAY
    return np.power(0.5, age_days.astype(float) / half_life_days)


def decay_factor(start: pd.Timestamp, end: pd.Timestamp, half_life_days: float | None) -> float:
    """How much statistics referenced at ``start`` shrink when re-referenced at ``end``."""
    if half_life_days is None:
        return 1.0
    return float(0.5 ** ((end - start).total_seconds() / SECONDS_PER_DAY / half_life_days))


@dataclass(frozen=True)
class SufficientStats:
    """Weighted sums over samples: X'WX, X'WY, Y'WY diagonal, sample count, rule counts."""

    xtx: FloatArray
    xty: FloatArray
    yty: FloatArray
    n: int
    rule_hits: FloatArray
    rule_misses: FloatArray

    @classmethod
    def zeros(cls, n_features: int, n_targets: int, n_rule_entries: int) -> SufficientStats:
        """The statistics of no samples at all."""
        return cls(
            xtx=np.zeros((n_features, n_features)),
            xty=np.zeros((n_features, n_targets)),
            yty=np.zeros(n_targets),
            n=0,
            rule_hits=np.zeros(n_rule_entries),
            rule_misses=np.zeros(n_rule_entries),
        )

    @classmethod
    def from_samples(
        cls,
        features: FloatArray,
        targets: FloatArray,
        weights: FloatArray,
        rule_hits: FloatArray,
        rule_misses: FloatArray,
    ) -> SufficientStats:
        """Statistics of complete samples; one GEMM serves every target."""
        weighted = features * weights[:, None]
        return cls(
            xtx=weighted.T @ features,
            xty=weighted.T @ targets,
            yty=np.einsum("i,ij,ij->j", weights, targets, targets),
            n=len(features),
            rule_hits=rule_hits,
            rule_misses=rule_misses,
        )

    def __add__(self, other: SufficientStats) -> SufficientStats:
        return SufficientStats(
            xtx=self.xtx + other.xtx,
            xty=self.xty + other.xty,
            yty=self.yty + other.yty,
            n=self.n + other.n,
            rule_hits=self.rule_hits + other.rule_hits,
            rule_misses=self.rule_misses + other.rule_misses,
        )

    def count_only(self) -> SufficientStats:
        """The sample count alone, its sums dropped (once they are folded into a prefix)."""
        empty = np.zeros(0)
        return SufficientStats(empty, empty, empty, self.n, empty, empty)

    def decayed(self, factor: float) -> SufficientStats:
        """Every weighted sum times ``factor`` (the count of samples stays)."""
        if factor == 1.0:
            return self
        return replace(
            self,
            xtx=self.xtx * factor,
            xty=self.xty * factor,
            yty=self.yty * factor,
            rule_hits=self.rule_hits * factor,
            rule_misses=self.rule_misses * factor,
        )


def ridge_penalty(xtx: FloatArray, alpha: float) -> FloatArray:
    """Per-feature penalty alpha * sum(w) * var_j: ridge on standardized features.

    Minimizing ``sum w (y - x b)^2 + sum_j alpha * sum(w) * var_j * b_j^2`` is ridge with
    penalty ``alpha`` on z-scored features and a mean loss, so alpha is scale-free (0.01
    shrinks a lone standardized coefficient by about 1%). The intercept is not penalized.
    ``xtx`` may be one system or a stack of them (..., q, q); so is the result (..., q).
    """
    total_weight = xtx[..., 0, 0]
    known = total_weight > 0
    divisor = np.where(known, total_weight, 1.0)[..., None]
    mean = xtx[..., 0, 1:] / divisor
    variance = np.clip(np.diagonal(xtx, axis1=-2, axis2=-1)[..., 1:] / divisor - mean**2, 0.0, None)
    penalty = np.where(known[..., None], alpha * total_weight[..., None] * variance, 0.0)
    return np.concatenate([np.zeros((*penalty.shape[:-1], 1)), penalty], axis=-1)


def solve_ridge(xtx: FloatArray, xty: FloatArray, alpha: float) -> FloatArray:
    """Coefficients (features x targets) of weighted ridge from its sufficient statistics.

    Jacobi-scaled for conditioning (variables may differ by orders of magnitude); falls
    back to the minimum-norm least-squares solution when the system is singular or
    numerically so (a constant feature with alpha = 0). A stack of systems (..., q, q) with
    right-hand sides (..., q, k) is solved in one vectorized pass (per-series models).
    """
    penalty = ridge_penalty(xtx, alpha)
    system = xtx + penalty[..., :, None] * np.eye(xtx.shape[-1])
    diagonal = np.diagonal(system, axis1=-2, axis2=-1)
    scale = np.sqrt(np.where(diagonal > 0, diagonal, 1.0))
    scaled = system / (scale[..., :, None] * scale[..., None, :])
    rhs = xty / scale[..., :, None]
    solution = _solve_one(scaled, rhs) if system.ndim == 2 else _solve_stack(scaled, rhs)
    coefficients: FloatArray = solution / scale[..., :, None]
    return coefficients


def _solve_one(scaled: FloatArray, rhs: FloatArray) -> FloatArray:
    """Cholesky solve of one scaled system, least squares when it is (nearly) singular."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
            solution: FloatArray = scipy.linalg.solve(
                scaled, rhs, assume_a="pos", check_finite=False
            )
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgWarning, ValueError):
        return np.asarray(np.linalg.lstsq(scaled, rhs, rcond=None)[0], dtype=np.float64)
    return solution


def _solve_stack(scaled: FloatArray, rhs: FloatArray) -> FloatArray:
    """Solve a stack of scaled symmetric systems: LU where well conditioned, else the
    minimum-norm least-squares solution (the pseudo-inverse with lstsq's own cutoff)."""
    size = scaled.shape[-1]
    cutoff = size * np.finfo(np.float64).eps
    eigenvalues = np.linalg.eigvalsh(scaled)
    well = eigenvalues[..., 0] > cutoff * np.abs(eigenvalues).max(axis=-1)
    solution: FloatArray = np.empty(rhs.shape)
    if well.any():
        solution[well] = np.linalg.solve(scaled[well], rhs[well])
    if not well.all():
        solution[~well] = np.linalg.pinv(scaled[~well], cutoff, True) @ rhs[~well]
    return solution
