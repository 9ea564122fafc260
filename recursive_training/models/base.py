"""The interface every model structure implements, and the statistics they share.

A structure turns a window of levels into additive statistics (``Moments``), solves them
into coefficients and predicts with those coefficients. Stages only ever call this
interface, so they never branch on which structure a run uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from recursive_training import features as feats
from recursive_training.arrays import FloatArray, IntArray
from recursive_training.constants import INTERCEPT
from recursive_training.penalty import (
    EvaluationSamples,
    RidgePath,
    ridge_path,
    squared_errors,
)
from recursive_training.statistics import Moments

ORIGINS = NDArray[np.intp]


class Window:
    """A window of levels (rows x columns: the series, then the exog) and what the samples
    of every horizon derive from it alike, each computed on first use.

    A task makes one per window (or series shard) and hands it to each horizon's
    structure, so with several horizons the changes and the features are computed once;
    only the targets and which samples are complete differ by horizon.
    """

    def __init__(self, levels: FloatArray, lags: int) -> None:
        self.levels = levels
        self.lags = lags

    @classmethod
    def of(cls, levels: FloatArray | Window, lags: int) -> Window:
        """``levels`` as a window (itself if it is one)."""
        return levels if isinstance(levels, Window) else cls(levels, lags)

    @cached_property
    def changes(self) -> tuple[FloatArray, NDArray[np.bool_]]:
        """First differences with the unknown ones zeroed, and where they are known."""
        changes = changes_of(self.levels)
        return changes, _zero_missing(changes)

    @cached_property
    def features(self) -> tuple[FloatArray, NDArray[np.bool_]]:
        """Every row's features as a VAR origin (``features.feature_rows``) and which rows
        have all of them."""
        rows = feats.feature_rows(self.levels, self.lags)
        return rows, np.asarray(np.isfinite(rows).all(axis=1))


@dataclass(frozen=True)
class Forecast:
    """Predicted and realized changes (origins x series) and which samples are complete."""

    predicted: FloatArray
    actual: FloatArray
    complete: NDArray[np.bool_]


@dataclass(frozen=True)
class ModelStructure(ABC):
    """A model structure over a set of series, with optional shared regressors (exog).

    Instances are small frozen values, so they travel to workers with each task. Windows
    of levels hold the ``columns`` (series, then exog) in that order, as an array or as a
    ``Window`` that horizons share; ``origins`` are row numbers inside the window and
    ``weights`` the forgetting weight of each origin's sample.
    """

    name: ClassVar[str]

    series: tuple[str, ...]
    lags: int
    horizon: int
    exog: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The variables a window loads, in order: the series, then the exog."""
        return self.series + self.exog

    @property
    def history(self) -> int:
        """Rows before an origin that its features read."""
        return self.lags

    @property
    def n_features(self) -> int:
        """Features of one regression (each series' own in per-series structures)."""
        return len(self.feature_names())

    @abstractmethod
    def feature_names(self) -> list[str]:
        """Names of the feature columns of one regression."""

    @abstractmethod
    def zeros(self) -> Moments:
        """The statistics of no samples."""

    @abstractmethod
    def statistics(
        self, levels: FloatArray | Window, origins: ORIGINS, weights: FloatArray
    ) -> tuple[Moments, NDArray[np.bool_]]:
        """Statistics of the complete samples with these origins, weighted per origin, and
        which samples were complete (origins x series), for the rules to count the same."""

    @abstractmethod
    def solve(self, moments: Moments, alpha: float, min_samples: int) -> FloatArray | None:
        """Coefficients from the statistics; None when no model has ``min_samples`` yet.

        Per-series structures give NaN coefficients to the series below the threshold,
        so those series are not predicted.
        """

    @abstractmethod
    def predict(
        self, coefficients: FloatArray, levels: FloatArray | Window, origins: ORIGINS
    ) -> Forecast:
        """Predicted changes, in each series' own units, for these origins."""

    @abstractmethod
    def systems(self, moments: Moments) -> tuple[FloatArray, FloatArray, FloatArray]:
        """The statistics as stacked ridge systems: X'X (S, q, q), X'Y (S, q, T) and Y'Y
        (S, T); S systems of T targets each, one count group per system."""

    @abstractmethod
    def to_systems(self, coefficients: FloatArray) -> FloatArray:
        """Coefficients (..., layout of ``solve``) as (..., S, q, T)."""

    @abstractmethod
    def from_systems(self, stacked: FloatArray) -> FloatArray:
        """The inverse of ``to_systems``."""

    def penalty_targets(self) -> tuple[str, ...]:
        """What chooses its own penalty under ``--ridge-alpha auto``: each series' model
        (one column of a VAR, one per-series system), in ``systems`` order."""
        return self.series

    def solve_path(
        self, moments: Moments, alphas: Sequence[float], min_samples: int
    ) -> RidgePath | None:
        """Every alpha's solution (``penalty.RidgePath``), what ``solve`` gives with that
        alpha (to rounding); None when no system has ``min_samples`` yet."""
        ready = moments.n >= min_samples
        if not ready.any():
            return None
        xtx, xty, _ = self.systems(moments)
        return ridge_path(xtx, xty, alphas, ready)

    def evaluation_samples(
        self, levels: FloatArray | Window, origins: ORIGINS
    ) -> tuple[EvaluationSamples, NDArray[np.bool_]]:
        """What grid errors are measured on for these origins' complete samples (unit
        weights): their moments, as statistics gives them; and which origins have a
        complete sample in some series."""
        moments, complete = self.statistics(levels, origins, np.ones(len(origins)))
        return EvaluationSamples.of_moments(moments), np.asarray(complete.any(axis=1))

    def path_errors(self, path: RidgePath, parts: Sequence[EvaluationSamples]) -> list[FloatArray]:
        """Squared errors (G x targets) of every alpha's coefficients on each part's
        samples (in the units the structure fits); NaN for a target with no such sample or
        no model."""
        coefficients = self.to_systems(self.from_systems(path.coefficients()))
        errors = []
        for samples in parts:
            xtx, xty, yty = self.systems(samples.moments)
            part = squared_errors(coefficients, xtx, xty, yty)
            part[:, samples.moments.n == 0] = np.nan
            errors.append(part.reshape(len(part), -1))
        return errors

    def pick(self, path: RidgePath, choice: NDArray[np.int64]) -> FloatArray:
        """The coefficients of one alpha per target (``choice``: grid positions)."""
        systems = len(path.ready)
        return self.from_systems(path.coefficients(choice.reshape(systems, -1)))

    def shard(self, start: int, stop: int) -> ModelStructure:
        """The same structure over the series ``start:stop`` (and the same exog)."""
        return replace(self, series=self.series[start:stop])

    def shard_coefficients(self, coefficients: FloatArray, start: int, stop: int) -> FloatArray:
        """The coefficients a shard of series predicts with: shared ones by default."""
        return coefficients

    def combine_shards(self, parts: Sequence[Moments]) -> Moments:
        """Statistics of the whole set of series from those of disjoint series shards."""
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    def coefficient_table(self, coefficients: FloatArray) -> dict[str, list[float]]:
        """Coefficients by the series (or model) they belong to, in feature order."""
        return {name: row.tolist() for name, row in zip(self.series, coefficients, strict=True)}

    def sample_count(self, per_series: FloatArray) -> int:
        """Samples behind per-series counts: a sample is one series at one origin."""
        return int(per_series.sum())

    def describe(self) -> dict[str, Any]:
        """What a state file records so a resumed run can refuse another structure."""
        return {"model": self.name, "exog": list(self.exog)}

    def samples_per_origin(self) -> int:
        """How many samples one origin row holds (for counting the dropped ones)."""
        return len(self.series)


def changes_of(levels: FloatArray) -> FloatArray:
    """First differences, NaN in the first row (its previous level is not loaded)."""
    changes = np.full_like(levels, np.nan)
    changes[1:] = np.diff(levels, axis=0)
    return changes


def own_lag_names(exog: Sequence[str], lags: int) -> list[str]:
    """Feature names of a per-series regression: own lagged changes, then each exog's."""
    own = [f"own.change.lag{lag}" for lag in range(lags)]
    return [INTERCEPT, *own, *(f"{e}.change.lag{lag}" for e in exog for lag in range(lags))]


@dataclass(frozen=True)
class SeriesSamples:
    """The samples of per-series regressions, column by column (origins x series each).

    ``own`` are each series' own lagged changes, ``shared`` the exog columns every series
    shares (origins x E*L), ``target`` the realized changes; missing values are zeroed and
    ``complete`` says which samples are whole. Kept as 2-D columns (views of the window
    where possible) rather than one (series x origins x q) tensor, so the statistics are a
    few passes over contiguous arrays and small GEMMs, with no big temporaries.
    """

    own: list[FloatArray]
    shared: FloatArray
    target: FloatArray
    complete: NDArray[np.bool_]


def rows_at(table: NDArray[Any], origins: ORIGINS, shift: int) -> NDArray[Any]:
    """``table[origins + shift]``: a view when the origins are consecutive rows."""
    first = int(origins[0]) + shift if len(origins) else 0
    if len(origins) and origins[-1] - origins[0] == len(origins) - 1:
        return table[first : first + len(origins)]
    return table[origins + shift]


def _zero_missing(values: FloatArray) -> NDArray[np.bool_]:
    """Zero the non-finite entries in place; return where the values were finite."""
    finite = np.isfinite(values)
    np.copyto(values, 0.0, where=~finite)
    return finite


def series_samples(
    structure: ModelStructure, levels: FloatArray | Window, origins: ORIGINS
) -> tuple[SeriesSamples, FloatArray, NDArray[np.bool_]]:
    """Samples of every series at these origins, the window's changes and where those are
    finite. A sample is complete when its own lags, the exog's lags and its target are
    known, so a gap in one series drops that series' sample only."""
    n_series = len(structure.series)
    window = Window.of(levels, structure.lags)
    changes, finite = window.changes
    target = (
        rows_at(window.levels, origins, structure.horizon)[:, :n_series]
        - rows_at(window.levels, origins, 0)[:, :n_series]
    )
    complete = _zero_missing(target)
    own = []
    shared = np.empty((len(origins), len(structure.exog) * structure.lags))
    for lag in range(structure.lags):
        complete &= rows_at(finite, origins, -lag)[:, :n_series]
        block = rows_at(changes, origins, -lag)
        own.append(block[:, :n_series])
        shared[:, lag :: structure.lags] = block[:, n_series:]
        complete &= rows_at(finite, origins, -lag)[:, n_series:].all(axis=1, keepdims=True)
    return SeriesSamples(own, shared, target, complete), changes, finite


def sample_moments(
    samples: SeriesSamples,
    weights: FloatArray,
    per_series: bool,
    inverse_scale: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray, IntArray]:
    """X'WX, X'WY, Y'WY and counts of the complete samples, per series (stacked on axis
    0) or summed over all series (one pooled regression).

    Features are ``[1, own columns, shared columns]``. With ``inverse_scale`` (origins x
    series, zero where incomplete) the own columns and the target are divided by the
    scale, by folding its powers into the weights (w/s for one scaled factor, w/s^2 for
    two) instead of copying columns.
    Each own-own entry is one fused multiply-reduce, the shared blocks are GEMMs.
    """
    complete = samples.complete
    w0 = np.where(complete, weights[:, None], 0.0)
    if inverse_scale is None:
        w1 = w2 = w0
    else:
        w1 = w0 * inverse_scale
        w2 = w1 * inverse_scale
    own, target, shared = samples.own, samples.target, samples.shared
    n_own, n_shared = 1 + len(own), shared.shape[1]
    lead = (target.shape[1],) if per_series else ()
    reduce = "nv,nv->v" if per_series else "nv,nv->"

    def dot(a: FloatArray, b: FloatArray) -> FloatArray:
        return np.asarray(np.einsum(reduce, a, b))

    def against_shared(a: FloatArray) -> FloatArray:
        return np.asarray(a.T @ shared if per_series else a.sum(axis=1) @ shared)

    xtx = np.empty((*lead, n_own + n_shared, n_own + n_shared))
    xty = np.empty((*lead, n_own + n_shared))
    xtx[..., 0, 0] = w0.sum(axis=0) if per_series else w0.sum()
    xty[..., 0] = dot(w1, target)
    buffer = np.empty_like(w0)
    for i, column in enumerate(own, start=1):
        xtx[..., 0, i] = xtx[..., i, 0] = dot(w1, column)
        np.multiply(w2, column, out=buffer)
        for j in range(i, n_own):
            xtx[..., i, j] = xtx[..., j, i] = dot(buffer, own[j - 1])
        xty[..., i] = dot(buffer, target)
        if n_shared:
            np.multiply(w1, column, out=buffer)
            xtx[..., i, n_own:] = against_shared(buffer)
            xtx[..., n_own:, i] = xtx[..., i, n_own:]
    if n_shared:
        xtx[..., 0, n_own:] = against_shared(w0)
        xtx[..., n_own:, 0] = xtx[..., 0, n_own:]
        pairs = (shared[:, :, None] * shared[:, None, :]).reshape(len(shared), -1)
        gram = w0.T @ pairs if per_series else w0.sum(axis=1) @ pairs
        xtx[..., n_own:, n_own:] = gram.reshape(*lead, n_shared, n_shared)
        np.multiply(w1, target, out=buffer)
        xty[..., n_own:] = against_shared(buffer)
    np.multiply(w2, target, out=buffer)
    yty = dot(buffer, target)
    n = complete.sum(axis=0) if per_series else complete.sum()
    return xtx, xty, np.atleast_1d(yty), np.atleast_1d(n).astype(np.int64)


def predict_columns(
    coefficients: FloatArray, samples: SeriesSamples, scale: FloatArray | None = None
) -> FloatArray:
    """``[1, own / scale, shared] @ coefficients * scale`` per sample (origins x series),
    NaN where a sample is incomplete; coefficients are one row per series (series x q)
    or one row for all (q,)."""
    rows = np.atleast_2d(coefficients)
    own = samples.own
    base = rows[:, 0] + samples.shared @ rows[:, 1 + len(own) :].T  # (origins x 1|series)
    predicted = base * scale if scale is not None else np.broadcast_to(base, samples.target.shape)
    predicted = predicted + own[0] * rows[:, 1] if own else predicted.copy()
    for k, column in enumerate(own[1:], start=2):
        predicted += column * rows[:, k]
    predicted[~samples.complete] = np.nan
    return predicted
