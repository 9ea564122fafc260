"""The ridge penalty chosen walk-forward (``--ridge-alpha auto``).

Every grid value's coefficients come from one factorization per system: with the
intercept eliminated and the features standardized (centred, divided by the same spread
the fixed penalty uses, ``statistics.ridge_penalty``), the system is ``(C + alpha I) beta
= z``, and ``C = Q M Q'`` (an eigendecomposition, M diagonal, for stacks of small
per-series systems; a tridiagonal reduction for one large system) turns every alpha into
a rescale or a tridiagonal solve, ``beta = Q (M + alpha I)^-1 Q' z``. That is the model a
fixed-alpha run solves, so each grid value's walk-forward errors are those of a fixed run
with that alpha.

Errors of a grid value on a batch are its squared errors on the batch's evaluation
samples: from their moments, ``SSE(b) = y'y - 2 b'X'y + b'X'X b`` (per-series
structures), or from the sample rows rotated into the basis Q (a VAR,
``EvaluationSamples``). A batch's errors are used for the choice only once every sample
behind them is realized (``PenaltyPath.add`` and ``release``), so choosing looks no
further ahead than training does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.linalg import lapack

from recursive_training.arrays import FloatArray, IntArray
from recursive_training.constants import FALLBACK_ALPHA
from recursive_training.statistics import Moments, ridge_penalty

EPSILON: Final = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class EvaluationSamples:
    """The samples a batch's grid errors are measured on, as moments or as rows.

    Per-series structures keep moments (q x q per series with small q: fewer numbers than
    the rows). A VAR keeps its complete rows: a batch's k rows x (q + T) are fewer numbers
    than the q x q moments when k < q, and its grid errors are then one product with the
    eigenvectors instead of a q x q x T product per grid value.
    """

    moments: Moments  # only the counts when rows are kept
    features: FloatArray  # (k, q) complete rows, the intercept column first; (0, 0) unused
    targets: FloatArray  # (k, T); (0, 0) unused

    @classmethod
    def of_moments(cls, moments: Moments) -> EvaluationSamples:
        empty = np.zeros((0, 0))
        return cls(moments, empty, empty)

    @classmethod
    def of_rows(cls, features: FloatArray, targets: FloatArray) -> EvaluationSamples:
        empty = np.zeros(0)
        counts = np.array([len(features)], dtype=np.int64)
        return cls(Moments(empty, empty, empty, counts), features, targets)


@dataclass(frozen=True)
class RidgePath:
    """Every grid value's ridge solution of S systems, from one factorization each.

    With the intercept eliminated and the features standardized, system s is
    ``(C + alpha I) beta = z``. ``C = Q M Q'`` with Q orthogonal and M diagonal (an
    eigendecomposition) or tridiagonal (a tridiagonal reduction, for one large system), so
    grid value g's slopes are ``inverse * Q u_g`` with ``(M + alpha_g I) u_g = Q' z``: a
    rescale or a tridiagonal solve. Coefficients are formed only on demand: every grid
    value's (small per-series systems), each target's chosen one, or none at all when the
    errors come from sample rows (``row_errors``), which for one large system (a VAR)
    skips a features x features x targets product per grid value.
    """

    ready: NDArray[np.bool_]  # (S,) the systems solved; the others' coefficients are NaN
    mean: FloatArray  # (R, p) per solved system, feature means (p = q - 1, no intercept)
    inverse: FloatArray  # (R, p) 1 / spread, 0 for a feature without spread
    base: FloatArray  # (R, T) the weighted mean target: the intercept of zero slopes
    basis: FloatArray  # (R, p, p) the orthogonal Q
    solutions: FloatArray  # (G, R, p, T) each grid value's u_g

    def coefficients(self, choice: IntArray | None = None) -> FloatArray:
        """Coefficients (G, S, q, T) of every grid value, or given ``choice`` (S, T grid
        positions) each target's chosen one (S, q, T)."""
        if choice is None:
            factors = self.solutions
        else:
            positions = choice[self.ready][None, :, None, :]
            factors = np.take_along_axis(self.solutions, positions, axis=0)[0]
        slopes = (self.basis @ factors) * self.inverse[:, :, None]
        intercept = self.base - np.einsum("rp,...rpt->...rt", self.mean, slopes)
        solved = np.concatenate([intercept[..., None, :], slopes], axis=-2)
        coefficients = np.full((*solved.shape[:-3], len(self.ready), *solved.shape[-2:]), np.nan)
        coefficients[..., self.ready, :, :] = solved
        return coefficients

    def row_errors(self, features: FloatArray, targets: FloatArray) -> FloatArray:
        """Squared errors (G, T) of every grid value of the one system on these complete
        sample rows (features k x q with the intercept column, targets k x T): the rows
        are rotated into the basis once, then each grid value is a k x p x T product."""
        assert len(self.ready) == 1 and self.ready[0], "one solved system"
        standardized = (features[:, 1:] - self.mean[0]) * self.inverse[0]
        predicted = self.base[0] + (standardized @ self.basis[0]) @ self.solutions[:, 0]
        errors: FloatArray = ((predicted - targets) ** 2).sum(axis=1)
        return errors


# From this many features, one system is reduced to tridiagonal form rather than
# diagonalized: about 3x less work at 500 features (no eigenvectors, and Q is applied to
# the right-hand sides only), while stacks of small per-series systems stay one vectorized
# eigendecomposition.
TRIDIAGONAL_FROM: Final = 32


def ridge_path(
    xtx: FloatArray, xty: FloatArray, alphas: Sequence[float], ready: NDArray[np.bool_]
) -> RidgePath:
    """Every alpha's solution of the ``ready`` ridge systems among X'X (S, q, q), X'Y (S,
    q, T), the intercept (feature 0) unpenalized.

    A feature without spread (constant, or never seen) gets a zero coefficient; a
    (numerically) zero eigenvalue at alpha 0 is left out, as a pseudo-inverse would.
    """
    xtx, xty = xtx[ready], xty[ready]
    total = xtx[:, 0, 0]
    divisor = np.where(total > 0, total, 1.0)
    mean = xtx[:, 0, 1:] / divisor[:, None]
    spread = ridge_penalty(xtx, 1.0)[:, 1:]
    inverse = np.divide(1.0, np.sqrt(spread), out=np.zeros_like(spread), where=spread > 0)
    centered = xtx[:, 1:, 1:] - total[:, None, None] * mean[:, :, None] * mean[:, None, :]
    gram = centered * inverse[:, :, None] * inverse[:, None, :]
    rhs = (xty[:, 1:, :] - mean[:, :, None] * xty[:, :1, :]) * inverse[:, :, None]
    grid = np.asarray(alphas, dtype=np.float64)
    size = gram.shape[-1]
    # The standardized gram's eigenvalues are at most its trace, ``size``: a grid value
    # above the eigendecomposition's cutoff at that bound never meets a left-out direction.
    if len(gram) == 1 and size >= TRIDIAGONAL_FROM and grid.min() > size * size * EPSILON:
        basis, solutions = _tridiagonal_solutions(gram[0], rhs[0], grid)
        basis, solutions = basis[None], solutions[:, None]
    else:
        basis, solutions = _eigen_solutions(gram, rhs, grid)
    return RidgePath(ready, mean, inverse, xty[:, 0, :] / divisor[:, None], basis, solutions)


def _eigen_solutions(
    gram: FloatArray, rhs: FloatArray, grid: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Eigenvectors V (R, p, p) of each gram and every alpha's ``diag(1 / (lambda +
    alpha)) V' z`` (G, R, p, T), directions with ``lambda + alpha`` at or below the cutoff
    left out."""
    eigenvalues, vectors = np.linalg.eigh(gram)
    shifted = eigenvalues[None] + grid[:, None, None]
    cutoff = gram.shape[-1] * EPSILON * np.abs(eigenvalues).max(axis=-1)
    shrink = np.divide(1.0, shifted, out=np.zeros_like(shifted), where=shifted > cutoff[:, None])
    return vectors, shrink[..., None] * (np.swapaxes(vectors, -1, -2) @ rhs)


def _tridiagonal_solutions(
    gram: FloatArray, rhs: FloatArray, grid: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Q (p, p) of ``gram = Q M Q'`` with M tridiagonal (LAPACK sytrd, Q formed by orgqr)
    and every alpha's solution of ``(M + alpha I) u = Q' z`` (G, p, T) (LAPACK ptsv)."""
    size = len(gram)
    work = int(lapack.dsytrd_lwork(size, lower=1)[0])
    reduced, diagonal, off_diagonal, tau, info = lapack.dsytrd(gram, lower=1, lwork=work)
    assert info == 0, f"sytrd failed ({info})"
    basis = np.eye(size)  # Q = diag(1, Q~), Q~ from the reflectors below the subdiagonal
    reflectors, _, info = lapack.dorgqr(reduced[1:, :-1], tau, lwork=64 * size)
    assert info == 0, f"orgqr failed ({info})"
    basis[1:, 1:] = reflectors
    rotated = basis.T @ rhs
    solutions = np.empty((len(grid), *rhs.shape))
    for position, alpha in enumerate(grid):
        *_, solutions[position], info = lapack.dptsv(diagonal + alpha, off_diagonal, rotated)
        assert info == 0, f"alpha {alpha}: the shifted system is not positive definite"
    return basis, solutions


def squared_errors(
    coefficients: FloatArray, xtx: FloatArray, xty: FloatArray, yty: FloatArray
) -> FloatArray:
    """Sum of squared errors (G, S, T) of coefficients (G, S, q, T) on samples with these
    moments: y'y - 2 b'X'y + b'X'X b."""
    fitted = np.einsum("gsqt,sqt->gst", coefficients, xty)
    spread = np.einsum("gsqt,gsqt->gst", coefficients, xtx @ coefficients)
    errors: FloatArray = yty - 2.0 * fitted + spread
    return errors


def fallback_index(grid: Sequence[float]) -> int:
    """Position of FALLBACK_ALPHA in the grid, or of the value nearest to it in log scale."""
    values = np.asarray(grid, dtype=np.float64)
    with np.errstate(divide="ignore"):
        distance = np.abs(np.log(values) - np.log(FALLBACK_ALPHA))
    return int(np.argmin(distance))


@dataclass(frozen=True)
class PenaltyErrors:
    """What a state carries of ``--ridge-alpha auto``'s choice: each grid value's squared
    walk-forward errors per target (G x targets) and which targets have any."""

    grid: tuple[float, ...]
    totals: FloatArray
    seen: np.ndarray  # bool per target

    def fits(self, grid: Sequence[float], n_targets: int) -> bool:
        """True when these errors are of the same grid and targets."""
        return self.grid == tuple(grid) and self.totals.shape == (len(grid), n_targets)


@dataclass
class PenaltyPath:
    """The walk-forward choice of the penalty, per target, batch after batch.

    ``totals`` are the squared errors of every grid value (G x targets) on the evaluated
    samples realized so far; ``pending`` holds errors of samples realized later, with the
    last realization time, until a batch starts after it. A target chooses the grid value
    of least total error (the larger penalty on a tie); before it has any error, the
    fallback. ``chosen`` records each evaluated batch's choice (NaN: target not predicted).
    """

    grid: tuple[float, ...]
    targets: tuple[str, ...]
    totals: FloatArray = field(init=False)
    seen: np.ndarray = field(init=False)  # targets with at least one known error
    pending: list[tuple[pd.Timestamp, FloatArray]] = field(default_factory=list)
    chosen: dict[int, FloatArray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.totals = np.zeros((len(self.grid), len(self.targets)))
        self.seen = np.zeros(len(self.targets), dtype=bool)

    def resume(self, known: PenaltyErrors) -> None:
        """Start from the errors a state carries (all realized before this run starts)."""
        self.totals = known.totals.copy()
        self.seen = known.seen.copy()

    def known(self) -> PenaltyErrors:
        """Every error of the run (and the runs it resumed), for the state: all are
        realized before the run's end, so a resumed run knows them all."""
        self.release_all()
        return PenaltyErrors(self.grid, self.totals.copy(), self.seen.copy())

    @property
    def fallback(self) -> int:
        """Grid position used before a target has any known error."""
        return fallback_index(self.grid)

    def release(self, before: pd.Timestamp) -> None:
        """Count the pending errors whose samples were all realized before ``before``."""
        still = []
        for realized_by, errors in self.pending:
            if realized_by < before:
                self._count(errors)
            else:
                still.append((realized_by, errors))
        self.pending = still

    def release_all(self) -> None:
        """Count every pending error (the run's data end is after all of them)."""
        for _, errors in self.pending:
            self._count(errors)
        self.pending = []

    def _count(self, errors: FloatArray) -> None:
        known = np.isfinite(errors[0])
        self.totals += np.where(known, errors, 0.0)
        self.seen |= known

    def add(self, batch_id: int, errors: FloatArray, realized_by: pd.Timestamp) -> None:
        """Errors (G x targets, NaN: no sample) of batch ``batch_id``'s predictions, known
        once ``realized_by`` has passed."""
        self.pending.append((realized_by, errors))

    def choice(self) -> IntArray:
        """Grid position per target: least total error, the larger penalty on a tie."""
        last = len(self.grid) - 1
        best = last - np.argmin(self.totals[::-1], axis=0)
        return np.where(self.seen, best, self.fallback).astype(np.int64)

    def record(self, batch_id: int, choice: IntArray, predicted: np.ndarray) -> None:
        """Remember the penalty each predicted target of a batch used."""
        values = np.asarray(self.grid)[choice]
        self.chosen[batch_id] = np.where(predicted, values, np.nan)

    def final_choice(self) -> IntArray:
        """Grid position of each target's final model: chosen on every error of the run."""
        self.release_all()
        return self.choice()
