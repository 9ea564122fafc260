"""The ridge penalty chosen walk-forward (``--ridge-alpha auto``).

Every grid value's coefficients come from one eigendecomposition per system: with the
intercept eliminated and the features standardized (centred, divided by the same spread
the fixed penalty uses, ``statistics.ridge_penalty``), the system is ``(C + alpha I) beta
= z`` and ``C = Q diag(lambda) Q'`` turns every alpha into a diagonal rescale,
``beta = Q diag(1 / (lambda + alpha)) Q' z``. That is the model a fixed-alpha run solves,
so each grid value's walk-forward errors are those of a fixed run with that alpha.

Errors of a grid value on a batch are its squared errors on the batch's evaluation
samples, from their moments: ``SSE(b) = y'y - 2 b'X'y + b'X'X b``. A batch's errors are
used for the choice only once every sample behind them is realized (``PenaltyPath.add``
and ``release``), so choosing looks no further ahead than training does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recursive_training.arrays import FloatArray, IntArray
from recursive_training.constants import FALLBACK_ALPHA
from recursive_training.statistics import ridge_penalty


def ridge_path(xtx: FloatArray, xty: FloatArray, alphas: Sequence[float]) -> FloatArray:
    """Coefficients (G, S, q, T) of the ridge systems X'X (S, q, q), X'Y (S, q, T) for
    every alpha, the intercept (feature 0) unpenalized, from one eigendecomposition each.

    A feature without spread (constant, or never seen) gets a zero coefficient; a
    (numerically) zero eigenvalue at alpha 0 is left out, as a pseudo-inverse would.
    """
    total = xtx[:, 0, 0]
    divisor = np.where(total > 0, total, 1.0)
    mean = xtx[:, 0, 1:] / divisor[:, None]
    spread = ridge_penalty(xtx, 1.0)[:, 1:]
    inverse = np.divide(1.0, np.sqrt(spread), out=np.zeros_like(spread), where=spread > 0)
    centered = xtx[:, 1:, 1:] - total[:, None, None] * mean[:, :, None] * mean[:, None, :]
    gram = centered * inverse[:, :, None] * inverse[:, None, :]
    rhs = (xty[:, 1:, :] - mean[:, :, None] * xty[:, :1, :]) * inverse[:, :, None]
    eigenvalues, vectors = np.linalg.eigh(gram)
    rotated = np.swapaxes(vectors, -1, -2) @ rhs
    grid = np.asarray(alphas, dtype=np.float64)[:, None, None]
    shifted = eigenvalues[None] + grid
    cutoff = gram.shape[-1] * np.finfo(np.float64).eps * np.abs(eigenvalues).max(axis=-1)
    shrink = np.divide(1.0, shifted, out=np.zeros_like(shifted), where=shifted > cutoff[:, None])
    slopes = (vectors @ (shrink[..., None] * rotated)) * inverse[:, :, None]
    intercept = xty[:, 0, :] / divisor[:, None] - np.einsum("sr,gsrt->gst", mean, slopes)
    return np.concatenate([intercept[:, :, None, :], slopes], axis=2)


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
