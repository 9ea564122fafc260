"""Sufficient statistics of weighted ridge regression, and the solve.

Everything the pipeline learns is a sum over samples, so batch statistics can be computed
anywhere and added in any grouping. Exponential forgetting stays exact under that
re-association because each batch weighs its samples relative to its own end and the
scan decays whole prefixes: ``decay(a -> c) = decay(a -> b) * decay(b -> c)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.linalg import lapack

from recursive_training.arrays import FloatArray, IntArray

MOMENT_ARRAYS: Final = ("xtx", "xty", "yty", "n")
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
class Moments:
    """Weighted sums over samples: X'WX, X'WY, Y'WY and sample counts.

    Shapes depend on the model structure (one system, or one per series stacked on axis
    0); ``n`` counts samples per count group (one group, or one per series).
    """

    xtx: FloatArray
    xty: FloatArray
    yty: FloatArray
    n: IntArray

    @classmethod
    def from_samples(
        cls, features: FloatArray, targets: FloatArray, weights: FloatArray
    ) -> Moments:
        """Sums of complete samples that share their features; one GEMM serves every target."""
        weighted = features * weights[:, None]
        return cls(
            xtx=weighted.T @ features,
            xty=weighted.T @ targets,
            yty=np.einsum("i,ij,ij->j", weights, targets, targets),
            n=np.array([len(features)], dtype=np.int64),
        )

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            self.xtx + other.xtx, self.xty + other.xty, self.yty + other.yty, self.n + other.n
        )

    def decayed(self, factor: float) -> Moments:
        """Every weighted sum times ``factor`` (the counts stay)."""
        if factor == 1.0:
            return self
        return Moments(self.xtx * factor, self.xty * factor, self.yty * factor, self.n)

    def count_only(self) -> Moments:
        """The counts alone, the sums dropped (once they are folded into a prefix)."""
        empty = np.zeros(0)
        return Moments(empty, empty, empty, self.n)

    @property
    def nbytes(self) -> int:
        """Memory the arrays hold."""
        return int(sum(getattr(self, name).nbytes for name in MOMENT_ARRAYS))

    def to_arrays(self) -> dict[str, NDArray[Any]]:
        """Plain arrays, keyed by name (for state files)."""
        return {name: getattr(self, name) for name in MOMENT_ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, NDArray[Any]]) -> Moments:
        """The inverse of ``to_arrays``."""
        return cls(
            xtx=np.asarray(arrays["xtx"], dtype=np.float64),
            xty=np.asarray(arrays["xty"], dtype=np.float64),
            yty=np.asarray(arrays["yty"], dtype=np.float64),
            n=np.asarray(arrays["n"], dtype=np.int64),
        )


@dataclass(frozen=True)
class SufficientStats:
    """A batch's or a prefix's model statistics and the fixed rules' hit and miss counts."""

    moments: Moments
    rule_hits: FloatArray
    rule_misses: FloatArray

    @property
    def n(self) -> int:
        """Samples in the statistics (rows for a VAR, series-rows for per-series models)."""
        return int(self.moments.n.sum())

    def __add__(self, other: SufficientStats) -> SufficientStats:
        return SufficientStats(
            self.moments + other.moments,
            self.rule_hits + other.rule_hits,
            self.rule_misses + other.rule_misses,
        )

    def count_only(self) -> SufficientStats:
        """The sample counts alone, the sums dropped (once they are folded into a prefix)."""
        empty = np.zeros(0)
        return SufficientStats(self.moments.count_only(), empty, empty)

    def decayed(self, factor: float) -> SufficientStats:
        """Every weighted sum times ``factor`` (the counts of samples stay)."""
        if factor == 1.0:
            return self
        return SufficientStats(
            self.moments.decayed(factor), self.rule_hits * factor, self.rule_misses * factor
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
    scaled, scale = _scaled_system(xtx, alpha)
    rhs = xty / scale[..., :, None]
    if xtx.ndim > 2:
        solution = _solve_stack(scaled, rhs)
    else:
        solved = _solve_one(scaled, rhs)
        # singular: least squares on the system again (the factorization overwrote it)
        solution = _least_squares(_scaled_system(xtx, alpha)[0], rhs) if solved is None else solved
    coefficients: FloatArray = solution / scale[..., :, None]
    return coefficients


def _scaled_system(xtx: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    """The penalized system ``X'X + diag(penalty)`` divided by ``scale scale'`` (scale: the
    square root of its diagonal), and the scale.

    One system is written straight into a Fortran-ordered array that LAPACK factors in
    place: penalizing a copy, dividing it into another and letting the wrapper transpose
    a third cost a tenth of a 501 x 501 solve. The entries are those of the plain
    expressions, operation for operation.
    """
    diagonal = np.diagonal(xtx, axis1=-2, axis2=-1) + ridge_penalty(xtx, alpha)
    scale = np.sqrt(np.where(diagonal > 0, diagonal, 1.0))
    outer = scale[..., :, None] * scale[..., None, :]
    scaled = np.divide(xtx, outer, out=np.empty_like(xtx, order="F" if xtx.ndim == 2 else "C"))
    diagonal_at = np.arange(xtx.shape[-1])
    scaled[..., diagonal_at, diagonal_at] = diagonal / outer[..., diagonal_at, diagonal_at]
    return scaled, scale


def _solve_one(scaled: FloatArray, rhs: FloatArray) -> FloatArray | None:
    """Cholesky solve of one scaled system (Fortran-ordered, factored in place); None when
    it is (nearly) singular: not positive definite, or a reciprocal condition number below
    machine epsilon (what ``scipy.linalg.solve(assume_a="pos")`` warns about). The LAPACK
    calls themselves, since the wrapper's checks cost a quarter of the solve."""
    anorm = float(lapack.dlange("1", scaled))
    factor, info = lapack.dpotrf(scaled, lower=0, clean=0, overwrite_a=1)
    if info == 0:
        rcond, info = lapack.dpocon(factor, anorm)
        if info == 0 and rcond >= np.finfo(np.float64).eps:
            solution, _ = lapack.dpotrs(factor, rhs, lower=0)
            return np.asarray(solution, dtype=np.float64)
    return None


def _least_squares(system: FloatArray, rhs: FloatArray) -> FloatArray:
    """The minimum-norm least-squares solution of a singular system."""
    return np.asarray(np.linalg.lstsq(system, rhs, rcond=None)[0], dtype=np.float64)


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
