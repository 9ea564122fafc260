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
class Eigendecomposition:
    """``C = V diag(lambda) V'`` of a stack of R standardized grams: each grid value is a
    rescale, ``1 / (lambda + alpha)``, zero for a direction at or below the cutoff."""

    vectors: FloatArray  # (R, p, p)
    shrink: FloatArray  # (G, R, p)

    def solve(self, position: int, x: FloatArray) -> FloatArray:
        """``(diag(lambda) + alpha I)^-1 x`` for grid value ``position``, x (R, p, m)."""
        solved: FloatArray = self.shrink[position][..., None] * x
        return solved

    def solve_chosen(self, choice: IntArray, x: FloatArray) -> FloatArray:
        """Column t of each system's x (R, p, T) solved with grid value ``choice[r, t]``."""
        picked = self.shrink[choice, np.arange(len(choice))[:, None]]  # (R, T, p)
        solved: FloatArray = np.swapaxes(picked, -1, -2) * x
        return solved

    def apply(self, x: FloatArray) -> FloatArray:
        """``V x``, x (R, p, m)."""
        return np.asarray(self.vectors @ x)

    def apply_transposed(self, x: FloatArray) -> FloatArray:
        """``V' x``, x (R, p, m)."""
        return np.asarray(np.swapaxes(self.vectors, -1, -2) @ x)

    def rotate_rows(self, rows: FloatArray) -> FloatArray:
        """``rows V`` of the one system, rows (k, p)."""
        return np.asarray(rows @ self.vectors[0])


@dataclass(frozen=True)
class TridiagonalReduction:
    """``C = Q M Q'`` of one standardized gram, M tridiagonal (LAPACK sytrd), Q kept as
    its Householder reflectors and applied by ormqr: each grid value is one tridiagonal
    solve (ptsv). ``Q = diag(1, Q~)``, Q~ the reflectors below the subdiagonal."""

    reflectors: FloatArray  # (p - 1, p - 1), Fortran order
    tau: FloatArray  # (p - 1,)
    diagonal: FloatArray  # (p,)
    off_diagonal: FloatArray  # (p - 1,)
    grid: FloatArray  # (G,)

    def solve(self, position: int, x: FloatArray) -> FloatArray:
        """``(M + alpha I)^-1 x`` for grid value ``position``, x (1, p, m)."""
        shifted = self.diagonal + self.grid[position]
        *_, solved, info = lapack.dptsv(shifted, self.off_diagonal, x[0])
        assert info == 0, f"alpha {self.grid[position]}: not positive definite"
        return np.asarray(solved)[None]

    def solve_chosen(self, choice: IntArray, x: FloatArray) -> FloatArray:
        """Column t of x (1, p, T) solved with grid value ``choice[0, t]``: one solve per
        grid value chosen."""
        solved = np.empty_like(x)
        for position in np.unique(choice[0]):
            columns = choice[0] == position
            solved[..., columns] = self.solve(int(position), x[..., columns])
        return solved

    def _reflect(self, side: str, trans: str, x: FloatArray) -> FloatArray:
        """ormqr of Q~ on x (k, m) (already without the first feature's row/column)."""
        work = 64 * max(x.shape)
        out, _, info = lapack.dormqr(
            side, trans, self.reflectors, self.tau, np.asfortranarray(x), work
        )
        assert info == 0, f"ormqr failed ({info})"
        return np.asarray(out)

    def apply(self, x: FloatArray) -> FloatArray:
        """``Q x``, x (1, p, m)."""
        out = x.copy()
        out[0, 1:] = self._reflect("L", "N", x[0, 1:])
        return out

    def apply_transposed(self, x: FloatArray) -> FloatArray:
        """``Q' x``, x (1, p, m), in Fortran order (what ptsv reads without a copy)."""
        out = np.asfortranarray(x[0])
        out[1:] = self._reflect("L", "T", x[0, 1:])
        return out[None]

    def rotate_rows(self, rows: FloatArray) -> FloatArray:
        """``rows Q``, rows (k, p)."""
        out = rows.copy()
        out[:, 1:] = self._reflect("R", "N", rows[:, 1:])
        return out


Factorization = Eigendecomposition | TridiagonalReduction


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
    factorization: Factorization
    rotated: FloatArray  # (R, p, T) Q' z
    size: int  # G, grid values

    def coefficients(self, choice: IntArray | None = None) -> FloatArray:
        """Coefficients (G, S, q, T) of every grid value, or given ``choice`` (S, T grid
        positions) each target's chosen one (S, q, T)."""
        if choice is None:
            return np.stack([self._coefficients(self._solved(g)) for g in range(self.size)])
        return self._coefficients(self.factorization.solve_chosen(choice[self.ready], self.rotated))

    def _solved(self, position: int) -> FloatArray:
        return self.factorization.solve(position, self.rotated)

    def _coefficients(self, solved: FloatArray) -> FloatArray:
        """(S, q, T) from the solved ``u`` (R, p, T) of the ready systems."""
        slopes = self.factorization.apply(solved) * self.inverse[:, :, None]
        intercept = self.base - np.einsum("rp,rpt->rt", self.mean, slopes)
        coefficients = np.full((len(self.ready), slopes.shape[1] + 1, slopes.shape[2]), np.nan)
        coefficients[self.ready] = np.concatenate([intercept[:, None, :], slopes], axis=1)
        return coefficients

    def row_errors(self, parts: Sequence[tuple[FloatArray, FloatArray]]) -> list[FloatArray]:
        """Squared errors (G, T) of every grid value of the one system on each part's
        complete sample rows (features k x q with the intercept column, targets k x T);
        NaN for a part without rows.

        The rows of all parts are rotated into the basis at once (``Z = X Q``); grid value
        g predicts ``Z u_g = ((M + alpha_g I)^-1 Z')' Q'z`` (M is symmetric), so each grid
        value solves for the k rows rather than for the T targets."""
        assert len(self.ready) == 1 and self.ready[0], "one solved system"
        if not parts:
            return []
        features = np.concatenate([f for f, _ in parts])
        targets = np.concatenate([t for _, t in parts])
        squared = np.empty((self.size, len(features), self.rotated.shape[-1]))
        if len(features):
            standardized = (features[:, 1:] - self.mean[0]) * self.inverse[0]
            rows = self.factorization.rotate_rows(standardized).T[None]  # (1, p, k)
            solved = np.stack([self.factorization.solve(g, rows)[0].T for g in range(self.size)])
            predicted = solved.reshape(-1, rows.shape[1]) @ self.rotated[0]  # one GEMM
            squared[:] = predicted.reshape(squared.shape) + (self.base[0] - targets)
            squared **= 2
        ends = np.cumsum([len(f) for f, _ in parts])
        none = np.full((self.size, self.rotated.shape[-1]), np.nan)
        return [
            squared[:, end - len(f) : end].sum(axis=1) if len(f) else none
            for (f, _), end in zip(parts, ends, strict=True)
        ]


# From this many features, one system is reduced to tridiagonal form rather than
# diagonalized: measured with 13 grid values, the reduction is 1.6x faster at 300
# features and 1.6x at 500 (no eigenvectors; Q is applied to the right-hand sides and the
# evaluation rows only), about even at 150, and slower below; stacks of small per-series
# systems stay one vectorized eigendecomposition.
TRIDIAGONAL_FROM: Final = 150


def ridge_path(
    xtx: FloatArray, xty: FloatArray, alphas: Sequence[float], ready: NDArray[np.bool_]
) -> RidgePath:
    """Every alpha's solution of the ``ready`` ridge systems among X'X (S, q, q), X'Y (S,
    q, T), the intercept (feature 0) unpenalized.

    A feature without spread (constant, or never seen) gets a zero coefficient; a
    (numerically) zero eigenvalue at alpha 0 is left out, as a pseudo-inverse would.
    """
    if not ready.all():
        xtx, xty = xtx[ready], xty[ready]
    total = xtx[:, 0, 0]
    divisor = np.where(total > 0, total, 1.0)
    mean = xtx[:, 0, 1:] / divisor[:, None]
    spread = ridge_penalty(xtx, 1.0)[:, 1:]
    inverse = np.divide(1.0, np.sqrt(spread), out=np.zeros_like(spread), where=spread > 0)
    gram = xtx[:, 1:, 1:] - (total[:, None] * mean)[:, :, None] * mean[:, None, :]
    gram *= inverse[:, :, None]
    gram *= inverse[:, None, :]
    rhs = (xty[:, 1:, :] - mean[:, :, None] * xty[:, :1, :]) * inverse[:, :, None]
    grid = np.asarray(alphas, dtype=np.float64)
    size = gram.shape[-1]
    factorization: Factorization
    # The standardized gram's eigenvalues are at most its trace, ``size``: a grid value
    # above the eigendecomposition's cutoff at that bound never meets a left-out direction.
    if len(gram) == 1 and size >= TRIDIAGONAL_FROM and grid.min() > size * size * EPSILON:
        factorization = _tridiagonal_reduction(gram[0], grid)
    else:
        factorization = _eigendecomposition(gram, grid)
    return RidgePath(
        ready,
        mean,
        inverse,
        xty[:, 0, :] / divisor[:, None],
        factorization,
        factorization.apply_transposed(rhs),
        len(grid),
    )


def _eigendecomposition(gram: FloatArray, grid: FloatArray) -> Eigendecomposition:
    """Eigenvectors of each gram and every alpha's ``1 / (lambda + alpha)``, directions
    with ``lambda + alpha`` at or below the cutoff left out."""
    eigenvalues, vectors = np.linalg.eigh(gram)
    shifted = eigenvalues[None] + grid[:, None, None]
    cutoff = gram.shape[-1] * EPSILON * np.abs(eigenvalues).max(axis=-1)
    shrink = np.divide(1.0, shifted, out=np.zeros_like(shifted), where=shifted > cutoff[:, None])
    return Eigendecomposition(vectors, shrink)


def _tridiagonal_reduction(gram: FloatArray, grid: FloatArray) -> TridiagonalReduction:
    """``gram = Q M Q'`` by LAPACK sytrd (the gram is symmetric: its transpose is the
    Fortran-ordered array sytrd reads without a copy)."""
    work = int(lapack.dsytrd_lwork(len(gram), lower=1)[0])
    reduced, diagonal, off_diagonal, tau, info = lapack.dsytrd(
        gram.T, lower=1, lwork=work, overwrite_a=1
    )
    assert info == 0, f"sytrd failed ({info})"
    reflectors = np.asfortranarray(reduced[1:, :-1])
    return TridiagonalReduction(reflectors, tau, diagonal, off_diagonal, grid)


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
