"""Walk-forward conformal prediction intervals.

The interval of a prediction in batch k is the prediction plus or minus the split-conformal
quantile of the absolute residuals of the same series' earlier predictions, counting only
those realized (origin + horizon) before batch k starts: the (ceil((n + 1) q))-th smallest
of those n residuals, which covers a new residual with probability at least q when the
residuals are exchangeable. Before a series has ``min_residuals(q)`` of them that rank
exceeds n and the series has no interval (NaN).

Quantiles come from a sketch, not a sorted buffer of every residual: each residual is
counted in the bucket (g^(i-1), g^i] of g = BUCKET_GROWTH, and the quantile is the upper
edge of the bucket that holds the conformal rank. So the half-width is never below the
exact conformal quantile Q and below g * Q: at most 1% wider, and the coverage guarantee
holds as for the exact one. Why a sketch: a sorted buffer holds 8 bytes per prediction of
the whole history in the driver (2 GB at 100,000 series x 10 years of days), which the
pipeline otherwise never holds; the sketch holds one (key, count) per occupied bucket, at
most 232 buckets per decade of a series' residuals whatever the history's length. Its
counts are integers keyed by (series, bucket), so merging them in any order gives the
same sketch: intervals do not depend on batching into shards, on task order or on the
engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from recursive_training.arrays import FloatArray

BUCKET_GROWTH: Final = 1.01
"""Ratio of a sketch bucket's upper to its lower edge: the half-width's bound above the
exact conformal quantile."""
_LOG_GROWTH: Final = math.log(BUCKET_GROWTH)
# Bucket indices of positive float64 values at growth 1.01 lie within +-75,000 (subnormals
# included); exact zeros get a bucket of their own below all of them.
_BUCKET_OFFSET: Final = 2**17
_ZERO_BUCKET: Final = -_BUCKET_OFFSET
_BUCKETS_PER_SERIES: Final = 2**18
IntArray = NDArray[np.int64]


def level_label(level: float) -> str:
    """The suffix of a level's columns and keys: 0.8 -> "80", 0.975 -> "97_5"."""
    return f"{level * 100:.6g}".replace(".", "_")


def _fraction(level: float) -> Fraction:
    """The level as the decimal it was written as (0.95 is 19/20, not the nearest double),
    so conformal ranks are exact integers."""
    return Fraction(repr(level)).limit_denominator(10**9)


def conformal_rank(n: IntArray, level: float) -> IntArray:
    """ceil((n + 1) level): the rank, among n residuals, of the conformal quantile."""
    fraction = _fraction(level)
    numerator, denominator = fraction.numerator, fraction.denominator
    return ((n + 1) * numerator + denominator - 1) // denominator


def min_residuals(level: float) -> int:
    """Residuals a series needs before it gets an interval at ``level``: the least n with
    ceil((n + 1) level) <= n (4 at 0.8, 19 at 0.95, 99 at 0.99)."""
    fraction = _fraction(level)
    return math.ceil(fraction / (1 - fraction))


def bucket_of(residual: FloatArray) -> IntArray:
    """Each absolute residual's bucket: the least i with BUCKET_GROWTH ** i >= it (exact
    zeros: _ZERO_BUCKET). The logarithm's rounding is corrected against the power itself,
    so bucket_value(bucket_of(x)) >= x always holds."""
    positive = residual > 0
    safe = np.where(positive, residual, 1.0)
    index = np.ceil(np.log(safe) / _LOG_GROWTH)
    index += np.power(BUCKET_GROWTH, index) < safe
    index -= np.power(BUCKET_GROWTH, index - 1) >= safe
    return np.where(positive, index, _ZERO_BUCKET).astype(np.int64)


def bucket_value(bucket: IntArray) -> FloatArray:
    """The upper edge of each bucket (0 for the zeros' bucket)."""
    value: FloatArray = np.where(
        bucket == _ZERO_BUCKET, 0.0, np.power(BUCKET_GROWTH, bucket.astype(np.float64))
    )
    return value


@dataclass(frozen=True)
class SketchCounts:
    """Residual counts by (series, bucket): sorted unique keys and their counts."""

    keys: IntArray
    counts: IntArray

    @classmethod
    def of(cls, series: NDArray[np.intp], residual: FloatArray) -> SketchCounts:
        """The counts of absolute residuals ``residual`` of the series at ``series``."""
        return cls.of_keys(residual_keys(series, residual))

    @classmethod
    def of_keys(cls, keys: IntArray) -> SketchCounts:
        """The counts of residuals given by their ``residual_keys``."""
        unique, counts = np.unique(keys, return_counts=True)
        return cls(unique, counts.astype(np.int64))


def residual_keys(series: NDArray[np.intp], residual: FloatArray) -> IntArray:
    """Each absolute residual's sketch key: its series' block, then its bucket."""
    keys: IntArray = (
        series.astype(np.int64) * _BUCKETS_PER_SERIES + bucket_of(residual) + _BUCKET_OFFSET
    )
    return keys


class ResidualSketch:
    """Every series' absolute residuals known so far, as bucket counts."""

    def __init__(self, n_series: int) -> None:
        self.keys: IntArray = np.empty(0, dtype=np.int64)
        self.counts: IntArray = np.empty(0, dtype=np.int64)
        self.totals: IntArray = np.zeros(n_series, dtype=np.int64)

    def add(self, new: SketchCounts) -> None:
        """Count more residuals (in place: the existing buckets' counts grow, new buckets
        are inserted in order)."""
        if not len(new.keys):
            return
        position = np.searchsorted(self.keys, new.keys)
        inside = position < len(self.keys)
        found = np.zeros(len(new.keys), dtype=bool)
        found[inside] = self.keys[position[inside]] == new.keys[inside]
        self.counts[position[found]] += new.counts[found]
        self.keys = np.insert(self.keys, position[~found], new.keys[~found])
        self.counts = np.insert(self.counts, position[~found], new.counts[~found])
        np.add.at(self.totals, new.keys // _BUCKETS_PER_SERIES, new.counts)

    def quantiles(self, levels: Sequence[float]) -> FloatArray:
        """Each series' conformal quantile at each of ``levels`` (levels x series): the upper
        edge of the bucket holding its conformal rank, NaN for a series with fewer than
        min_residuals(level)."""
        quantiles = np.full((len(levels), len(self.totals)), np.nan)
        before = np.cumsum(self.totals) - self.totals  # residuals of the earlier series
        running = np.cumsum(self.counts)
        for quantile, level in zip(quantiles, levels, strict=True):
            rank = conformal_rank(self.totals, level)
            defined = rank <= self.totals
            position = np.searchsorted(running, (before + rank)[defined])
            bucket = self.keys[position] % _BUCKETS_PER_SERIES - _BUCKET_OFFSET
            quantile[defined] = bucket_value(bucket)
        return quantiles

    @property
    def nbytes(self) -> int:
        """Memory the sketch holds."""
        return int(self.keys.nbytes + self.counts.nbytes + self.totals.nbytes)

    def compact(self) -> CompactSketch:
        """The same counts in the form the state file keeps (about a third of the bytes)."""
        series = self.keys // _BUCKETS_PER_SERIES
        largest = int(self.counts.max()) if len(self.counts) else 0
        return CompactSketch(
            occupied=np.bincount(series, minlength=len(self.totals)).astype(np.int32),
            buckets=(self.keys % _BUCKETS_PER_SERIES - _BUCKET_OFFSET).astype(np.int32),
            counts=self.counts.astype(np.min_scalar_type(largest)),
        )


@dataclass(frozen=True)
class CompactSketch:
    """A residual sketch as the state file keeps it: per series the number of occupied
    buckets, then every occupied bucket (int32) and its count (the narrowest unsigned type
    that holds the largest), in (series, bucket) order. 5 to 8 bytes per occupied bucket
    instead of the 16 a ResidualSketch holds, so a resumed run holds the carried sketch
    beside its own at a third of the cost."""

    occupied: NDArray[np.int32]
    buckets: NDArray[np.int32]
    counts: NDArray[np.unsignedinteger[Any]]

    def __post_init__(self) -> None:
        if int(self.occupied.sum()) != len(self.buckets) or len(self.buckets) != len(
            self.counts
        ):
            raise ValueError("the residual sketch's arrays do not fit together")

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (and so, about, of them in the state file)."""
        return int(self.occupied.nbytes + self.buckets.nbytes + self.counts.nbytes)

    def expand(self) -> ResidualSketch:
        """A new ResidualSketch with these counts."""
        occupied = self.occupied.astype(np.int64)
        counts = self.counts.astype(np.int64)
        sketch = ResidualSketch(len(occupied))
        series = np.repeat(np.arange(len(occupied), dtype=np.int64), occupied)
        sketch.keys = series * _BUCKETS_PER_SERIES + self.buckets + _BUCKET_OFFSET
        sketch.counts = counts
        running = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)])
        ends = np.cumsum(occupied)
        sketch.totals = running[ends] - running[ends - occupied]
        return sketch


@dataclass(frozen=True)
class IntervalSums:
    """Per level and series (levels x series) sums over predictions that had an interval:
    additive over batches, like ErrorSums."""

    n: FloatArray
    covered: FloatArray
    width: FloatArray
    winkler: FloatArray

    @classmethod
    def zeros(cls, n_levels: int, n_series: int) -> IntervalSums:
        """The sums of no predictions."""
        zero = np.zeros((n_levels, n_series))
        return cls(zero, zero, zero, zero)

    def __add__(self, other: IntervalSums) -> IntervalSums:
        return IntervalSums(
            self.n + other.n,
            self.covered + other.covered,
            self.width + other.width,
            self.winkler + other.winkler,
        )

    def metrics(self, axis: int | None = None) -> dict[str, FloatArray]:
        """n, coverage, mean width and mean Winkler score, summed over ``axis`` first (None:
        per level and series; 1: per level over all series). NaN where n is 0."""
        n, covered, width, winkler = (
            a if axis is None else a.sum(axis=axis)
            for a in (self.n, self.covered, self.width, self.winkler)
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            return {
                "n": n,
                "coverage": np.where(n > 0, covered / n, np.nan),
                "mean_width": np.where(n > 0, width / n, np.nan),
                "winkler": np.where(n > 0, winkler / n, np.nan),
            }


Entry = dict[str, float | int | None]


def pooled_metrics(levels: Sequence[float], sums: IntervalSums) -> dict[str, Entry]:
    """n, coverage, mean width and Winkler score over all series, by level label."""
    metrics = sums.metrics(axis=1)
    return {level_label(q): _entry(metrics, i) for i, q in enumerate(levels)}


def series_metrics(
    levels: Sequence[float], sums: IntervalSums, variables: Sequence[str]
) -> dict[str, dict[str, Entry]]:
    """The same per series: {series: {level label: metrics}}."""
    metrics = sums.metrics()
    return {
        name: {level_label(q): _entry(metrics, i, j) for i, q in enumerate(levels)}
        for j, name in enumerate(variables)
    }


def _entry(metrics: dict[str, FloatArray], *index: int) -> Entry:
    values = {name: metrics[name][index] for name in metrics}
    return {"n": int(values.pop("n"))} | {
        name: None if np.isnan(value) else float(value) for name, value in values.items()
    }


def winkler_score(
    lower: FloatArray, upper: FloatArray, actual: FloatArray, level: float
) -> FloatArray:
    """The interval score of a central interval at ``level``: its width plus 2 / (1 - level)
    times the distance by which the actual value falls outside it."""
    penalty = 2.0 / (1.0 - level)
    below = np.maximum(lower - actual, 0.0)
    above = np.maximum(actual - upper, 0.0)
    score: FloatArray = (upper - lower) + penalty * (below + above)
    return score


def interval_columns(levels: Sequence[float]) -> list[str]:
    """The predictions file's interval columns: lower_<label>, upper_<label> per level."""
    return [f"{side}_{level_label(q)}" for q in levels for side in ("lower", "upper")]


class IntervalScan:
    """Gives each evaluated batch's predictions their intervals, in batch order, as the
    evaluations arrive in any order.

    Batch k's quantiles come from the residuals realized before batch k starts. Those come
    only from batches before k, so batch k is handled once every earlier evaluated batch
    has been; later batches wait (their tables with them) until then. A batch's residuals
    are counted into the sketch at the start of the first batch after their realization.
    ``release`` receives each table with its interval columns, in batch order. A resumed
    run starts from the ``initial`` sketch its state carries (every residual of the runs
    before, all realized before this run starts).
    """

    def __init__(
        self,
        levels: Sequence[float],
        starts: Sequence[np.datetime64],
        evaluated: Sequence[int],
        n_series: int,
        release: Callable[[pa.Table], None],
        initial: CompactSketch | None = None,
    ) -> None:
        self.levels = tuple(levels)
        self.sketch = ResidualSketch(n_series) if initial is None else initial.expand()
        self.sums: dict[int, IntervalSums] = {}
        self._starts = np.asarray(starts, dtype="datetime64[ns]")
        self._order = list(evaluated)  # evaluated batches' positions, ascending
        self._expected = set(self._order)
        self._next = 0
        self._waiting: dict[int, pa.Table] = {}
        # keys of residuals not yet counted, by the position of the batch they are known at
        self._known_from: dict[int, list[IntArray]] = {}
        self._n_series = n_series
        self._release = release

    def __call__(self, position: int, predictions: pa.Table) -> None:
        """Take the predictions of the batch at ``position``; handle every batch now ready."""
        self._waiting[position] = predictions
        while self._next < len(self._order) and self._order[self._next] in self._waiting:
            ready = self._order[self._next]
            self._next += 1
            self._release(self._handle(ready, self._waiting.pop(ready)))

    def expects(self, position: int) -> bool:
        """True when the batch at ``position`` is one this scan handles (evaluated)."""
        return position in self._expected

    @property
    def complete(self) -> bool:
        """True once every evaluated batch has been handled."""
        return self._next == len(self._order)

    def final_sketch(self) -> ResidualSketch:
        """The sketch of every residual of the run (and of the runs it resumed), for the
        state: all are realized before the run's end, so a resumed run knows them all."""
        assert self.complete, "the sketch is final once every batch is handled"
        pending = [keys for k in sorted(self._known_from) for keys in self._known_from.pop(k)]
        if pending:
            self.sketch.add(SketchCounts.of_keys(np.concatenate(pending)))
        return self.sketch

    def _handle(self, position: int, table: pa.Table) -> pa.Table:
        if not self.levels:
            return table
        known = [c for k in [k for k in self._known_from if k <= position]
                 for c in self._known_from.pop(k)]  # fmt: skip
        if known:
            self.sketch.add(SketchCounts.of_keys(np.concatenate(known)))
        series = table.column("variable").combine_chunks().indices.to_numpy(zero_copy_only=False)
        predicted = table.column("predicted").to_numpy()
        actual = table.column("actual").to_numpy()
        per_level: list[list[FloatArray]] = []
        for level, quantiles in zip(self.levels, self.sketch.quantiles(self.levels), strict=True):
            half_width = quantiles[series]
            lower, upper = predicted - half_width, predicted + half_width
            table = table.append_column(f"lower_{level_label(level)}", pa.array(lower))
            table = table.append_column(f"upper_{level_label(level)}", pa.array(upper))
            has = ~np.isnan(half_width)
            per_level.append(
                [
                    np.bincount(series, weights=values, minlength=self._n_series).astype(np.float64)
                    for values in (
                        has.astype(np.float64),
                        (has & (lower <= actual) & (actual <= upper)).astype(np.float64),
                        np.where(has, upper - lower, 0.0),
                        np.where(has, winkler_score(lower, upper, actual, level), 0.0),
                    )
                ]
            )
        self.sums[position] = IntervalSums(*(np.array([p[j] for p in per_level]) for j in range(4)))
        realized = table.column("realized").to_numpy().astype("datetime64[ns]")
        first_use = np.searchsorted(self._starts, realized, side="right")
        keys = residual_keys(series, np.abs(actual - predicted))
        for use in np.unique(first_use):  # len(starts): after the run (for final_sketch)
            self._known_from.setdefault(int(use), []).append(keys[first_use == use])
        return table
