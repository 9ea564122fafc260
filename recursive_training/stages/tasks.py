"""The per-batch tasks of the map stages, and the narrow spec they read.

Tasks run on workers and are pure functions of (batch, spec, ...): ``TaskSpec`` holds
exactly the settings they read, so what a worker receives is small, and a checkpointed
result is keyed by the spec's fingerprint, which cannot miss a setting the tasks use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray

from recursive_training import features as feats
from recursive_training.arrays import FloatArray
from recursive_training.config import TrainingConfig
from recursive_training.data import open_source
from recursive_training.engines import current_worker
from recursive_training.exceptions import DataError
from recursive_training.metrics import ErrorSums
from recursive_training.models import ModelStructure, build_structure
from recursive_training.models.base import Forecast, Window
from recursive_training.parallel_trainer import SeriesShard, TrainingBatch, series_shards
from recursive_training.penalty import EvaluationSamples
from recursive_training.rules import (
    fixed_rule_counts,
    fixed_rules,
    parse_rules,
    rule_entries,
    sign_hits_misses,
)
from recursive_training.s3_location import S3Settings
from recursive_training.statistics import Moments, SufficientStats, forgetting_weights

_Result = TypeVar("_Result")


@dataclass(frozen=True)
class TaskSpec:
    """The settings the map-stage tasks read, and nothing else.

    A setting a task starts to read belongs here (and in ``from_config``); the checkpoint
    key then covers it without further bookkeeping.
    """

    input_data: str
    input_format: str
    lags: int
    horizons: tuple[int, ...]
    fill_limit: int
    half_life_days: float | None
    rules: tuple[str, ...]
    model: str
    exog: tuple[str, ...]
    pooled_scale: str
    scale_window: int
    # With --ridge-alpha auto: also the evaluation samples (their moments, or a VAR's rows),
    # from which the scan computes every grid value's walk-forward errors.
    evaluation_samples: bool
    # Series a task processes at once, set by the plan so a shard's derived arrays stay
    # within models.memory.SHARD_BYTES (0: all at once).
    shard_series: int
    # How to reach the data, not what it is: specs differing only here compute the same.
    s3: S3Settings = dataclasses.field(compare=False)

    @classmethod
    def from_config(cls, config: TrainingConfig) -> TaskSpec:
        """The tasks' share of a run's config."""
        return cls(
            input_data=config.input_data,
            input_format=config.input_format,
            lags=config.lags,
            horizons=config.forecast_horizons,
            fill_limit=config.fill_limit,
            half_life_days=config.half_life_days,
            rules=tuple(config.rules),
            model=config.model,
            exog=tuple(config.exog),
            pooled_scale=config.pooled_scale,
            scale_window=config.scale_window,
            evaluation_samples=config.ridge_alpha == "auto",
            shard_series=0,
            s3=config.s3_settings,
        )

    def structure(self, columns: Sequence[str], horizon: int) -> ModelStructure:
        """The model structure of one horizon over a batch's columns: the series, then the
        exog."""
        return build_structure(
            self.model,
            [c for c in columns if c not in self.exog],
            self.lags,
            horizon,
            self.exog,
            self.pooled_scale,
            self.scale_window,
        )

    def task_structures(
        self, batch: TrainingBatch, shard: SeriesShard | None
    ) -> tuple[ModelStructure, ...]:
        """The structures a task works on, one per horizon: the batch's, or one shard's."""
        structures = (self.structure(batch.variables, h) for h in self.horizons)
        return tuple(s if shard is None else s.shard(shard.start, shard.stop) for s in structures)

    def fingerprint(self) -> str:
        """Hash of every field that changes what the tasks compute (all but ``compare=False``)."""
        compared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        return hashlib.sha256(json.dumps(compared, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EvaluationPart:
    """Some of a batch's evaluation samples (unweighted), and when the last of them is
    realized: their errors may steer the penalty only after that (a part of no sample has
    no error and is known at once)."""

    samples: EvaluationSamples
    realized_by: pd.Timestamp


@dataclass(frozen=True)
class BatchStatistics:
    """Map-stage output of one horizon: the batch's training statistics, referenced at the
    batch end."""

    batch_id: int
    # Position of the task's first series among the batch's (0 for a whole batch): results
    # of one batch's shard tasks are told apart and merged in series order by it.
    first_series: int
    stats: SufficientStats
    dropped_missing: int
    seconds: float  # the task's, shared equally by its horizons (they share its work)
    worker: str
    candidates: int  # samples realized in the batch, complete or not
    usable: NDArray[np.int64]  # per variable, the samples with its own values all present
    # Per series, persistence's absolute errors (|h-step change|) summed over the samples
    # realized in the batch whose change is known, and their count: MASE's scale.
    persistence_abs: FloatArray
    persistence_n: FloatArray
    # With evaluation_samples: the evaluation samples realized inside the batch, then those
    # realized after it (each part present when it holds an origin).
    evaluation: tuple[EvaluationPart, ...] = ()


@dataclass(frozen=True)
class BatchEvaluation:
    """Evaluation output of one horizon: error sums, model-rule counts and the predictions
    themselves (``prediction_table``)."""

    batch_id: int
    first_series: int  # as in BatchStatistics
    errors: ErrorSums
    model_hits: FloatArray
    model_misses: FloatArray
    predictions: pa.Table
    dropped_missing: int
    seconds: float  # as in BatchStatistics
    worker: str


@dataclass(frozen=True)
class StatisticsTask:
    """What one statistics task returns: its batch (and shard) at every horizon of the
    run, in the order of ``TaskSpec.horizons``."""

    batch_id: int
    first_series: int
    by_horizon: tuple[BatchStatistics, ...]


@dataclass(frozen=True)
class EvaluationTask:
    """What one evaluation task returns: its batch (and shard) at every horizon of the run
    (a horizon without a model yet has an empty evaluation)."""

    batch_id: int
    first_series: int
    by_horizon: tuple[BatchEvaluation, ...]


def load_window(
    batch: TrainingBatch, spec: TaskSpec, columns: Sequence[str] | None = None
) -> tuple[FloatArray, NDArray[np.datetime64]]:
    """The batch's rows of ``columns`` (default: all its variables) as levels (rows x
    columns), forward-filled up to the limit, and their timestamps (so a worker never
    needs the source's whole time index)."""
    source = open_source(spec.input_data, spec.input_format, spec.s3)
    variables = batch.variables if columns is None else columns
    expected = batch.window_rows[1] - batch.window_rows[0]
    if len(batch.window_stamps) == expected:  # planned batches carry their timestamps
        levels, stamps = source.load_window(
            variables, batch.window_first, batch.window_last, batch.window_stamps
        )
    else:
        levels, stamps = source.load_array(variables, batch.window_first, batch.window_last)
    if len(levels) != expected:
        raise DataError(
            f"{batch}: expected {expected} rows between {batch.window_first} and "
            f"{batch.window_last} but the source returned {len(levels)}; did the data change "
            "while the run was planned?",
            source=source.uri,
        )
    return forward_fill(levels, spec.fill_limit), stamps


def forward_fill(levels: FloatArray, limit: int) -> FloatArray:
    """Each missing value replaced by the last value before it, if at most ``limit`` rows
    back (what pandas' ``ffill(limit=...)`` does, without building a frame)."""
    missing = np.isnan(levels)
    if not limit or not missing.any():
        return levels
    rows = np.arange(len(levels))[:, None]
    last_seen = np.maximum.accumulate(np.where(missing, -1, rows), axis=0)
    fill = missing & (last_seen >= 0) & (rows - last_seen <= limit)
    filled = levels.copy()
    filled[fill] = levels[last_seen[fill], np.nonzero(fill)[1]]
    return filled


def compute_batch_statistics(
    batch: TrainingBatch, spec: TaskSpec, shard: SeriesShard | None = None
) -> StatisticsTask:
    """Model statistics and fixed-rule counts of the samples realized in the batch, at every
    horizon, over its series or, given a shard, over those series only (the only ones
    loaded). The window is loaded and filled, and each series shard's changes and features
    derived, once for all horizons."""
    began = time.perf_counter()
    structures = spec.task_structures(batch, shard)
    first_series = 0 if shard is None else shard.start
    if any(a < b for a, b in batch.train_rows):
        levels, stamps = load_window(batch, spec, structures[0].columns)
        samples = [
            _StatisticsSamples.of(batch, spec, structure, rows, eval_rows, stamps)
            for structure, rows, eval_rows in zip(
                structures, batch.train_rows, batch.eval_rows, strict=True
            )
        ]

        def shard_statistics(
            index: int, structure: ModelStructure, _: tuple[int, int], window: Window
        ) -> _ShardStatistics | None:
            mine = samples[index]
            if mine is None:
                return None
            moments, complete = structure.statistics(window, mine.origins, mine.weights)
            evaluation = tuple(structure.evaluation_samples(window, o) for o in mine.evaluation)
            return moments, complete, evaluation

        by_shard = _over_shards(structures, levels, spec, shard_statistics)
        parts = [
            _no_statistics(batch, spec, structure)
            if mine is None
            else _horizon_statistics(batch, spec, mine, shards, levels, stamps)
            for structure, mine, shards in zip(structures, samples, by_shard, strict=True)
        ]
    else:
        parts = [_no_statistics(batch, spec, structure) for structure in structures]
    seconds = (time.perf_counter() - began) / len(structures)
    return StatisticsTask(
        batch.batch_id,
        first_series,
        tuple(replace(p, first_series=first_series, seconds=seconds) for p in parts),
    )


# A horizon's statistics over one series shard: its moments, which samples were complete,
# and its evaluation samples (each part's, with which origins have a complete sample).
_ShardStatistics = tuple[
    Moments, NDArray[np.bool_], tuple[tuple[EvaluationSamples, NDArray[np.bool_]], ...]
]


@dataclass(frozen=True)
class _StatisticsSamples:
    """The samples of one horizon in a statistics task: the origins (window rows) of
    those realized in the batch and their forgetting weights; with
    ``spec.evaluation_samples`` the origins the evaluation stage predicts, split by
    realization inside the batch or after it (each part present when not empty)."""

    structure: ModelStructure
    origins: NDArray[np.intp]
    weights: FloatArray
    evaluation: tuple[NDArray[np.intp], ...]

    @classmethod
    def of(
        cls,
        batch: TrainingBatch,
        spec: TaskSpec,
        structure: ModelStructure,
        rows: tuple[int, int],
        eval_rows: tuple[int, int],
        stamps: NDArray[np.datetime64],
    ) -> _StatisticsSamples | None:
        """The horizon's samples (None when none is realized in the batch)."""
        first, stop = rows
        if first >= stop:
            return None
        horizon = structure.horizon
        origins = np.arange(first, stop) - horizon - batch.window_rows[0]
        weights = forgetting_weights(stamps[origins + horizon], batch.end, spec.half_life_days)
        evaluation: tuple[NDArray[np.intp], ...] = ()
        if spec.evaluation_samples:
            predicted = np.arange(*eval_rows) - batch.window_rows[0]
            inside = predicted + horizon < stop - batch.window_rows[0]
            split = (predicted[inside], predicted[~inside])
            evaluation = tuple(part for part in split if len(part))
        return cls(structure, origins, weights, evaluation)


def _no_statistics(
    batch: TrainingBatch, spec: TaskSpec, structure: ModelStructure
) -> BatchStatistics:
    """The statistics of a horizon with no sample realized in the batch."""
    n_entries = len(rule_entries(parse_rules(spec.rules), structure.series))
    none = np.zeros(len(structure.series))
    return BatchStatistics(
        batch.batch_id,
        0,
        SufficientStats(structure.zeros(), np.zeros(n_entries), np.zeros(n_entries)),
        0,
        0.0,
        current_worker(),
        0,
        np.zeros(len(structure.columns), dtype=np.int64),
        none,
        none,
    )


def _horizon_statistics(
    batch: TrainingBatch,
    spec: TaskSpec,
    samples: _StatisticsSamples,
    shards: Sequence[_ShardStatistics | None],
    levels: FloatArray,
    stamps: NDArray[np.datetime64],
) -> BatchStatistics:
    """One horizon's statistics, rule counts, dropped samples, candidates, usable counts,
    persistence error sums and evaluation parts, from its shards' statistics."""
    structure, origins, weights = samples.structure, samples.origins, samples.weights
    parts = [part for part in shards if part is not None]
    moments = structure.combine_shards([m for m, _, _ in parts])
    complete = np.concatenate([c for _, c, _ in parts], axis=1)
    # Rules count the samples the model learns from: whole rows for a VAR, series by series
    # for per-series structures (a missing outcome abstains).
    kept = complete.any(axis=1)
    horizon = structure.horizon
    series = levels[:, : len(structure.series)]
    change = np.abs(series[origins + horizon] - series[origins])
    known = np.isfinite(change)
    outcome = series[origins[kept] + horizon] - series[origins[kept]]
    hits, misses = fixed_rule_counts(
        series,
        origins[kept],
        np.where(complete[kept], outcome, np.nan),
        weights[kept],
        parse_rules(spec.rules),
        structure.series,
    )
    return BatchStatistics(
        batch.batch_id,
        0,
        SufficientStats(moments, hits, misses),
        _dropped(structure, len(origins), complete),
        0.0,
        current_worker(),
        len(origins),
        feats.usable_by_variable(levels, origins, spec.lags, horizon),
        np.where(known, change, 0.0).sum(axis=0),
        known.sum(axis=0).astype(float),
        _evaluation_parts(structure, samples.evaluation, [e for _, _, e in parts], stamps),
    )


def _evaluation_parts(
    structure: ModelStructure,
    origins: Sequence[NDArray[np.intp]],
    shards: Sequence[tuple[tuple[EvaluationSamples, NDArray[np.bool_]], ...]],
    stamps: NDArray[np.datetime64],
) -> tuple[EvaluationPart, ...]:
    """The samples the evaluation stage predicts (the same origins, the same complete
    samples, unit weights), by part (``_StatisticsSamples.evaluation``), each from its
    shards' samples.

    A part is known when its last complete sample is realized: an origin without one
    (a missing realization) has no error to wait for. Otherwise a gap after the data a
    run resumes from would hold the errors before it back in one long run, and not in
    the run that ended at the gap.
    """
    parts = []
    for k, part in enumerate(origins):
        pieces = [shard[k] for shard in shards]
        scored = part[np.logical_or.reduce([complete for _, complete in pieces])]
        last = scored[-1] if len(scored) else part[0]  # none: nothing to wait for
        samples = _combine_samples(structure, [s for s, _ in pieces])
        parts.append(EvaluationPart(samples, pd.Timestamp(stamps[last + structure.horizon])))
    return tuple(parts)


def prediction_table(
    origin: NDArray[np.datetime64],
    realized: NDArray[np.datetime64],
    batch_id: int,
    horizon: int,
    variable: NDArray[np.intp],
    variables: Sequence[str],
    predicted: FloatArray,
    actual: FloatArray,
) -> pa.Table:
    """The rows of the predictions file, one per (origin, variable), from flat arrays;
    ``variable`` holds positions in ``variables``.

    An Arrow table straight from the arrays: building a DataFrame per batch (and converting
    it for the Parquet file) cost more than the batch's arithmetic. ``variable`` becomes a
    dictionary column (a categorical in pandas) whose dictionary is ``variables``.
    """
    return pa.table(
        {
            "origin": origin,
            "realized": realized,
            "batch_id": pa.array(np.full(len(origin), batch_id, dtype=np.int32)),
            "horizon": pa.array(np.full(len(origin), horizon, dtype=np.int32)),
            "variable": pa.DictionaryArray.from_arrays(
                pa.array(variable, type=pa.int32()), pa.array(list(variables), type=pa.string())
            ),
            "predicted": predicted,
            "actual": actual,
        }
    )


def evaluate_batch(
    batch: TrainingBatch,
    spec: TaskSpec,
    coefficients: tuple[FloatArray | None, ...],
    shard: SeriesShard | None = None,
) -> EvaluationTask:
    """Predict the samples whose origin is in the batch with the models known at its start,
    one per horizon (None: that horizon has no model yet, and is not evaluated); given a
    shard, only its series, with its ``coefficients`` (``shard_coefficients``). The window
    and each series shard's features are made once for all horizons."""
    began = time.perf_counter()
    structures = spec.task_structures(batch, shard)
    first_series = 0 if shard is None else shard.start
    levels, stamps = load_window(batch, spec, structures[0].columns)
    origins = [
        np.arange(*rows) - batch.window_rows[0] if model is not None else np.arange(0)
        for rows, model in zip(batch.eval_rows, coefficients, strict=True)
    ]

    def shard_forecast(
        index: int, structure: ModelStructure, span: tuple[int, int], window: Window
    ) -> Forecast | None:
        model = coefficients[index]
        if model is None:
            return None
        return structure.predict(
            structures[index].shard_coefficients(model, *span), window, origins[index]
        )

    by_shard = _over_shards(structures, levels, spec, shard_forecast)
    parts = [
        _horizon_evaluation(batch, spec, structure, mine, forecasts, levels, stamps)
        for structure, mine, forecasts in zip(structures, origins, by_shard, strict=True)
    ]
    seconds = (time.perf_counter() - began) / len(structures)
    return EvaluationTask(
        batch.batch_id,
        first_series,
        tuple(replace(p, first_series=first_series, seconds=seconds) for p in parts),
    )


def _horizon_evaluation(
    batch: TrainingBatch,
    spec: TaskSpec,
    structure: ModelStructure,
    every_origin: NDArray[np.intp],
    forecasts: Sequence[Forecast | None],
    levels: FloatArray,
    stamps: NDArray[np.datetime64],
) -> BatchEvaluation:
    """One horizon's predictions of ``every_origin`` (window rows) from its shards'
    forecasts, its error sums and model-rule counts (all empty without a model)."""
    parts = [f for f in forecasts if f is not None]
    n_series = len(structure.series)
    if parts:
        every_complete = _side_by_side([f.complete for f in parts])
    else:
        every_complete = np.zeros((0, n_series), dtype=bool)
    kept = every_complete.any(axis=1)
    every = bool(kept.all())
    origins = every_origin if every else every_origin[kept]
    complete = every_complete if every else every_complete[kept]
    if parts:
        predicted, actual = (
            np.where(complete, joined if every else joined[kept], np.nan)
            for joined in (
                _side_by_side([f.predicted for f in parts]),
                _side_by_side([f.actual for f in parts]),
            )
        )
    else:
        predicted = actual = np.zeros((0, n_series))
    realized = stamps[origins + structure.horizon]
    weights = forgetting_weights(realized, batch.end, spec.half_life_days)
    hits, misses = sign_hits_misses(predicted, actual, weights)  # the model as a sign rule
    # The table's rows: every (origin, series) with a prediction, origin-major. Where all
    # are complete (no gap in the data) they are the arrays themselves, flattened.
    if complete.all():
        made, at_realized = np.repeat(stamps[origins], n_series), np.repeat(realized, n_series)
        columns = np.tile(np.arange(n_series), len(origins))
        chosen_predicted, chosen_actual = predicted.ravel(), actual.ravel()
    else:
        flat = np.flatnonzero(complete)
        rows_at, columns = np.divmod(flat, n_series)
        made, at_realized = stamps[origins][rows_at], realized[rows_at]
        chosen_predicted, chosen_actual = predicted.ravel()[flat], actual.ravel()[flat]
    predictions = prediction_table(
        made,
        at_realized,
        batch.batch_id,
        structure.horizon,
        columns,
        structure.series,
        chosen_predicted,
        chosen_actual,
    )
    return BatchEvaluation(
        batch.batch_id,
        0,
        ErrorSums.from_predictions(predicted, actual, levels[origins, :n_series]),
        hits,
        misses,
        predictions,
        _dropped(structure, len(every_origin), every_complete),
        0.0,
        current_worker(),
    )


def merge_statistics_tasks(
    structures: Sequence[ModelStructure], rules: Sequence[str], parts: Sequence[StatisticsTask]
) -> StatisticsTask:
    """One batch's statistics tasks (its shards, in series order) merged, horizon by
    horizon (``structures``: one per horizon)."""
    return StatisticsTask(
        parts[0].batch_id,
        0,
        tuple(
            merge_statistics(structure, rules, [p.by_horizon[i] for p in parts])
            for i, structure in enumerate(structures)
        ),
    )


def merge_evaluation_tasks(
    structures: Sequence[ModelStructure], parts: Sequence[EvaluationTask]
) -> EvaluationTask:
    """One batch's evaluation tasks (its shards, in series order) merged, horizon by
    horizon."""
    return EvaluationTask(
        parts[0].batch_id,
        0,
        tuple(
            merge_evaluations(structure, [p.by_horizon[i] for p in parts])
            for i, structure in enumerate(structures)
        ),
    )


def merge_statistics(
    structure: ModelStructure, rules: Sequence[str], parts: Sequence[BatchStatistics]
) -> BatchStatistics:
    """One batch's statistics from those of its shard tasks (in series order): what one
    task over all its series computes (the same shards, so the same numbers)."""
    if len(parts) == 1:
        return parts[0]
    widths = [len(p.usable) - len(structure.exog) for p in parts]
    n_fixed = len(fixed_rules(parse_rules(rules)))

    def entries(counts: list[FloatArray]) -> FloatArray:
        """Rule entries are rule-major over the series: interleave the shards per rule."""
        per_rule = [c.reshape(n_fixed, w) for c, w in zip(counts, widths, strict=True)]
        return np.concatenate(per_rule, axis=1).ravel()

    stats = SufficientStats(
        structure.combine_shards([p.stats.moments for p in parts]),
        entries([p.stats.rule_hits for p in parts]),
        entries([p.stats.rule_misses for p in parts]),
    )
    usable = [p.usable[:w] for p, w in zip(parts, widths, strict=True)]
    evaluation = tuple(
        EvaluationPart(
            _combine_samples(structure, [piece.samples for piece in pieces]),
            max(piece.realized_by for piece in pieces),
        )
        for pieces in zip(*(p.evaluation for p in parts), strict=True)
    )
    return BatchStatistics(
        parts[0].batch_id,
        0,
        stats,
        sum(p.dropped_missing for p in parts),
        sum(p.seconds for p in parts),
        _workers(p.worker for p in parts),
        parts[0].candidates,
        np.concatenate([*usable, parts[0].usable[widths[0] :]]),
        np.concatenate([p.persistence_abs for p in parts]),
        np.concatenate([p.persistence_n for p in parts]),
        evaluation,
    )


def merge_evaluations(
    structure: ModelStructure, parts: Sequence[BatchEvaluation]
) -> BatchEvaluation:
    """One batch's evaluation from those of its shard tasks (in series order), predictions
    in the order one task writes them (origin, then series)."""
    if len(parts) == 1:
        return parts[0]
    errors = ErrorSums(
        *(
            np.concatenate([getattr(p.errors, f.name) for p in parts])
            for f in dataclasses.fields(ErrorSums)
        )
    )
    return BatchEvaluation(
        parts[0].batch_id,
        0,
        errors,
        np.concatenate([p.model_hits for p in parts]),
        np.concatenate([p.model_misses for p in parts]),
        _interleave(structure, parts),
        sum(p.dropped_missing for p in parts),
        sum(p.seconds for p in parts),
        _workers(p.worker for p in parts),
    )


def _combine_samples(
    structure: ModelStructure, pieces: Sequence[EvaluationSamples]
) -> EvaluationSamples:
    """The evaluation samples of disjoint series shards as those of all their series (only
    per-series structures, which keep moments, are split into shards)."""
    if len(pieces) == 1:
        return pieces[0]
    return EvaluationSamples.of_moments(structure.combine_shards([p.moments for p in pieces]))


def _side_by_side(arrays: Sequence[NDArray[Any]]) -> NDArray[Any]:
    """The shards' (origins x series) arrays joined along the series (one: itself)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)


def _interleave(structure: ModelStructure, parts: Sequence[BatchEvaluation]) -> pa.Table:
    """The shard tasks' predictions (each in (origin, series) order, the parts in series
    order) as one table in (origin, series) order, labelled with the batch's series.

    Every part holds one contiguous run of rows per origin, so the result is those runs
    taken origin by origin, part by part: zero-copy slices (a few thousand per batch), not
    a sort and a gather of every row (26 M rows per batch at 100,000 series)."""
    dictionary = pa.array(list(structure.series), type=pa.string())
    field = parts[0].predictions.schema.field("variable")
    tables, origins = [], []
    for part in parts:
        table = part.predictions
        indices = table.column("variable").combine_chunks().indices.to_numpy(zero_copy_only=False)
        variable = pa.DictionaryArray.from_arrays(
            pa.array(indices + part.first_series, type=pa.int32()), dictionary
        )
        tables.append(table.set_column(table.schema.get_field_index("variable"), field, variable))
        origins.append(table.column("origin").combine_chunks().cast(pa.int64()).to_numpy())
    if not any(len(o) for o in origins):  # a horizon with no model yet predicts nothing
        return tables[0]
    every = np.unique(np.concatenate([o[np.r_[True, o[1:] != o[:-1]]] for o in origins if len(o)]))
    starts = [np.searchsorted(o, every, side="left") for o in origins]
    stops = [np.searchsorted(o, every, side="right") for o in origins]
    return pa.concat_tables(
        table.slice(a, z - a)
        for k in range(len(every))
        for table, first, last in zip(tables, starts, stops, strict=True)
        if (a := int(first[k])) < (z := int(last[k]))
    )


def _workers(names: Iterable[str]) -> str:
    """The workers that ran a batch's tasks, each once."""
    return ",".join(dict.fromkeys(names))


def _dropped(structure: ModelStructure, n_origins: int, complete: NDArray[np.bool_]) -> int:
    """Samples of these origins left out for a missing value."""
    whole = n_origins * structure.samples_per_origin()
    return whole - structure.sample_count(complete.sum(axis=0))


def _over_shards(
    structures: Sequence[ModelStructure],
    levels: FloatArray,
    spec: TaskSpec,
    work: Callable[[int, ModelStructure, tuple[int, int], Window], _Result],
) -> list[list[_Result]]:
    """``work(index, structure, span, window)`` of each horizon's structure (at ``index``)
    on each series shard of ``spec.shard_series`` series (the shard's structure and
    window, with the exog columns; ``span``: where its series sit), grouped by horizon,
    shards in series order. One shard's window, with what samples derive from it, is made
    at a time and shared by every horizon."""
    n = len(structures[0].series)
    by_horizon: list[list[_Result]] = [[] for _ in structures]
    for shard in series_shards(n, spec.shard_series):
        span = (shard.start, shard.stop)
        whole = span == (0, n)
        columns = None if whole else np.r_[shard.start : shard.stop, n : levels.shape[1]]
        window = Window(levels if columns is None else levels[:, columns], spec.lags)
        for index, structure in enumerate(structures):
            mine = structure if whole else structure.shard(*span)
            by_horizon[index].append(work(index, mine, span, window))
    return by_horizon
