"""The retrodiction pipeline: map (batch statistics), scan (prefix models), map
(walk-forward evaluation), reduce (final model, rule trust, metrics).

The two map stages are pure functions of (batch, task spec, ...) (``tasks.py``) so they
can run on any engine; the scan and reduce are cheap and run in the driver, which only ever
holds statistics (features x features), never the data.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from recursive_training.arrays import FloatArray
from recursive_training.checkpoint import Checkpoint, result_key, task_key
from recursive_training.config import TrainingConfig
from recursive_training.constants import MODEL_RULE
from recursive_training.data import DataSource, open_source
from recursive_training.engines import Engine, create_engine
from recursive_training.exceptions import DataError, StateError
from recursive_training.guards import check_batch_count, check_coverage
from recursive_training.intervals import (
    CompactSketch,
    IntervalScan,
    IntervalSums,
    interval_columns,
)
from recursive_training.metrics import ErrorSums
from recursive_training.models import (
    ModelStructure,
    VectorAutoRegressive,
    check_var_memory,
    default_memory_budget,
    series_per_shard,
)
from recursive_training.parallel_trainer import (
    SeriesShard,
    TrainingBatch,
    check_batch_size,
    plan_batches,
    series_shards,
)
from recursive_training.penalty import PenaltyErrors, PenaltyPath
from recursive_training.rules import (
    RuleSpec,
    check_rule_variables,
    parse_rules,
    rule_entries,
    rule_history,
)
from recursive_training.stages.tasks import (
    BatchEvaluation,
    BatchStatistics,
    EvaluationTask,
    StatisticsTask,
    TaskSpec,
    compute_batch_statistics,
    evaluate_batch,
    merge_evaluation_tasks,
    merge_statistics_tasks,
)
from recursive_training.state import TrainingState
from recursive_training.statistics import SufficientStats, decay_factor

log = logging.getLogger(__name__)
ProgressCallback = Callable[[str, int, int], None]  # (stage, batches done, batches in stage)


# --- the pipeline (runs in the driver) ---------------------------------------------------

StageResult = TypeVar("StageResult", StatisticsTask, EvaluationTask)


@dataclass
class TrainingResult:
    """What a run learned and measured; ``results.build_document`` turns it into JSON.

    The per-horizon fields (structure, statistics, evaluations, coefficients, rules,
    errors) are those of the run's first horizon; ``by_horizon`` holds one result per
    horizon (each as a run of that horizon alone would give it), and ``predictions`` every
    horizon's.
    """

    run_id: str
    config: TrainingConfig
    source: str
    variables: list[str]
    features: list[str]
    structure: ModelStructure
    start: pd.Timestamp
    end: pd.Timestamp
    n_rows: int
    batches: list[TrainingBatch]
    statistics: dict[int, BatchStatistics]
    evaluations: dict[int, BatchEvaluation]
    coefficients: FloatArray
    rule_table: list[tuple[str, str, float, float]]
    errors: ErrorSums
    state: TrainingState
    resumed_from: str | None
    engine: str
    seconds: float
    predictions: list[pa.Table] = field(default_factory=list)
    by_horizon: tuple[TrainingResult, ...] = ()
    penalties: PenaltyPath | None = None  # with --ridge-alpha auto: the chosen penalties

    @property
    def horizons(self) -> tuple[int, ...]:
        """The run's horizons, in order."""
        return tuple(r.structure.horizon for r in self.by_horizon or (self,))

    # Per evaluated batch id, the sums of its predictions' intervals (config.intervals).
    intervals: dict[int, IntervalSums] = field(default_factory=dict)

    def predictions_frame(self) -> pd.DataFrame:
        """Every walk-forward prediction, sorted by horizon, origin, then variable."""
        if not self.predictions:
            return pd.DataFrame(
                {
                    "origin": pd.Series(dtype="datetime64[ns]"),
                    "realized": pd.Series(dtype="datetime64[ns]"),
                    "batch_id": pd.Series(dtype="int32"),
                    "horizon": pd.Series(dtype="int32"),
                    "variable": pd.Categorical([], categories=self.variables),
                    "predicted": pd.Series(dtype="float64"),
                    "actual": pd.Series(dtype="float64"),
                }
                | {
                    name: pd.Series(dtype="float64")
                    for name in interval_columns(self.config.intervals)
                }
            )
        frame: pd.DataFrame = pa.concat_tables(self.predictions).to_pandas()
        return frame.sort_values(
            ["horizon", "origin", "variable"], kind="stable", ignore_index=True
        )


def resolve_range(
    config: TrainingConfig, timestamps: pd.DatetimeIndex, state: TrainingState | None, source: str
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The run's ``[start, end)``: from the config, else the resume state, else the data."""
    if len(timestamps) == 0:
        raise DataError("holds no rows", source=source)
    if config.start_date is not None:
        start = pd.Timestamp(config.start_date)
    else:
        start = state.end if state is not None else timestamps[0]
    end = (
        pd.Timestamp(config.end_date)
        if config.end_date is not None
        else (timestamps[-1] + pd.Timedelta(days=1)).normalize()
    )
    if start >= end:
        raise DataError(
            f"the range starts at {start} but ends at {end}; pass --end-date after the start"
        )
    inside = timestamps[(timestamps >= start) & (timestamps < end)]
    if len(inside) == 0:
        raise DataError(
            f"no rows between {start:%Y-%m-%d} and {end:%Y-%m-%d}; the data covers "
            f"{timestamps[0]:%Y-%m-%d} to {timestamps[-1]:%Y-%m-%d}",
            source=source,
        )
    if state is not None and start < state.end:
        raise StateError(
            f"the resume state already learned from samples realized before {state.end:%Y-%m-%d}; "
            f"start this run at or after that date (--start-date {state.end:%Y-%m-%d})"
        )
    if state is not None and start > state.end:
        log.warning(
            "Samples realized between %s and %s are learned by neither run", state.end, start
        )
    return start, end


@dataclass(frozen=True)
class RunPlan:
    """What preparation settles before any task runs: the data, range, batches, start state."""

    source: str
    variables: list[str]
    features: list[str]
    structures: tuple[ModelStructure, ...]  # one per horizon
    rules: tuple[RuleSpec, ...]
    start: pd.Timestamp
    end: pd.Timestamp
    n_rows: int
    batches: list[TrainingBatch]
    initial: tuple[SufficientStats, ...]  # one per horizon
    spec: TaskSpec
    # The series shards each batch is split into, one task per (batch, shard); (None,): one
    # task per batch (var, and rules crossing series, need all series in one task).
    shards: tuple[SeriesShard | None, ...] = (None,)
    # Per horizon, what the resume state carries of the walk-forward choices: the residual
    # sketch intervals start from and the penalty grid's errors (empty: a fresh run).
    initial_sketches: tuple[CompactSketch | None, ...] = ()
    initial_penalties: tuple[PenaltyErrors | None, ...] = ()

    @property
    def structure(self) -> ModelStructure:
        """The first horizon's structure (what does not depend on the horizon)."""
        return self.structures[0]

    def statistics_tasks(self) -> list[tuple[Any, ...]]:
        """The statistics stage's task arguments: every batch x shard."""
        return [_with_shard((b, self.spec), s) for b in self.batches for s in self.shards]

    def evaluation_tasks(
        self, models: dict[int, tuple[FloatArray | None, ...]]
    ) -> list[tuple[Any, ...]]:
        """The evaluation stage's task arguments: every batch with a model and origins at
        some horizon x shard, each with the coefficients its series predict with per
        horizon (None where that horizon has no model or no origin)."""
        tasks = []
        for b in self.batches:
            wanted = tuple(
                m if a < z else None
                for m, (a, z) in zip(models.get(b.batch_id, ()), b.eval_rows, strict=False)
            )
            if any(m is not None for m in wanted):
                tasks += [
                    _with_shard((b, self.spec, self._coefficients(wanted, s)), s)
                    for s in self.shards
                ]
        return tasks

    def _coefficients(
        self, models: tuple[FloatArray | None, ...], shard: SeriesShard | None
    ) -> tuple[FloatArray | None, ...]:
        if shard is None:
            return models
        return tuple(
            None if m is None else self.structure.shard_coefficients(m, shard.start, shard.stop)
            for m in models
        )


def _with_shard(arguments: tuple[Any, ...], shard: SeriesShard | None) -> tuple[Any, ...]:
    return arguments if shard is None else (*arguments, shard)


@dataclass(frozen=True)
class StageOutputs:
    """What the map and scan stages computed, before the reduction."""

    statistics: dict[int, StatisticsTask]
    evaluations: dict[int, EvaluationTask]
    scans: tuple[PrefixScan, ...]  # one per horizon, complete
    engine: str
    # Per horizon: the predictions (with their interval columns) in batch order, unless a
    # sink took them, and the interval sums by batch id.
    predictions: tuple[list[pa.Table], ...]
    intervals: tuple[dict[int, IntervalSums], ...]
    # Per horizon with --intervals, the sketch of every residual so far (for the state).
    sketches: tuple[CompactSketch | None, ...]


def prepare(config: TrainingConfig, resume_state: TrainingState | None) -> RunPlan:
    """Check the config against the data and the resume state, and plan the batches."""
    source = open_source(config.input_data, config.input_format, config.s3_settings)
    spec = TaskSpec.from_config(config)
    variables = [v for v in config.variables or source.variables() if v not in config.exog]
    source.check_variables([*variables, *config.exog])
    horizons = config.forecast_horizons
    structures = tuple(spec.structure([*variables, *config.exog], h) for h in horizons)
    structure = structures[0]
    rules = parse_rules(config.rules)
    check_rule_variables(rules, variables)
    features = structure.feature_names()
    if resume_state is not None:
        resume_state.check_compatible(
            config.resume_from or "the resume state",
            tuple(variables),
            config.lags,
            horizons,
            config.half_life_days,
            tuple(config.rules),
            structure.describe(),
        )
    timestamps = source.timestamps()
    start, end = resolve_range(config, timestamps, resume_state, source.uri)
    check_batch_size(timestamps[(timestamps >= start) & (timestamps < end)], config.batch_size_days)
    check_batch_count(start, end, config)
    batches = plan_batches(
        timestamps,
        start,
        end,
        config.batch_size_days,
        structure.columns,
        lags=config.lags,
        horizons=horizons,
        history=max(rule_history(rules), structure.history),
        fill_limit=config.fill_limit,
    )
    _require_samples(batches, source, config)
    window_rows = max(b.window_rows[1] - b.window_rows[0] for b in batches)
    if structure.name == VectorAutoRegressive.name:
        check_var_memory(
            len(variables), config.lags, window_rows, config.max_memory or default_memory_budget()
        )
    else:
        spec = replace(spec, shard_series=series_per_shard(window_rows))
    shards = _task_shards(structure, rules, spec.shard_series)
    log.info(
        "Planned %d batches of %d days over [%s, %s) for %d variables, model %s",
        len(batches),
        config.batch_size_days,
        f"{start:%Y-%m-%d}",
        f"{end:%Y-%m-%d}",
        len(variables),
        structure.name,
    )
    return RunPlan(
        source=source.uri,
        variables=variables,
        features=features,
        structures=structures,
        rules=rules,
        start=start,
        end=end,
        n_rows=int(((timestamps >= start) & (timestamps < end)).sum()),
        batches=batches,
        initial=tuple(
            _initial_prefix(resume_state, i, start, config, s, rules)
            for i, s in enumerate(structures)
        ),
        spec=spec,
        shards=shards,
        initial_sketches=_carried_sketches(resume_state, config),
        initial_penalties=tuple(
            _carried_penalty(resume_state, i, config, s) for i, s in enumerate(structures)
        ),
    )


def _carried_sketches(
    state: TrainingState | None, config: TrainingConfig
) -> tuple[CompactSketch | None, ...]:
    """Per horizon, the residual sketch a resumed run's intervals continue from; a state
    without one (an older file, or a run without --intervals) starts them afresh."""
    if state is None or not config.intervals:
        return ()
    sketches = tuple(state.sketch(i) for i in range(len(state.horizons)))
    if any(s is None for s in sketches):
        log.warning(
            "The resume state carries no residual sketch (it was written by a run without "
            "--intervals, or by an older version): intervals start afresh, so the first "
            "evaluated batch has none"
        )
        return ()
    return sketches


def _carried_penalty(
    state: TrainingState | None, index: int, config: TrainingConfig, structure: ModelStructure
) -> PenaltyErrors | None:
    """Horizon ``index``'s penalty-grid errors a resumed --ridge-alpha auto run continues
    from; without them (an older file, a fixed-penalty run, another grid) the choice starts
    afresh from the fallback."""
    if state is None or config.ridge_alpha != "auto":
        return None
    known = state.penalty(index)
    if known is None or not known.fits(config.alpha_grid, len(structure.penalty_targets())):
        if index == 0:
            log.warning(
                "The resume state carries no walk-forward errors for this --alpha-grid (it "
                "was written with a fixed --ridge-alpha, another grid, or by an older "
                "version): the penalty choice starts afresh"
            )
        return None
    return known


def _task_shards(
    structure: ModelStructure, rules: Sequence[RuleSpec], size: int
) -> tuple[SeriesShard | None, ...]:
    """How each batch is split over tasks: per-series structures by series shards of
    ``size`` (each task loads only its series), unless a rule crosses series."""
    if structure.name == VectorAutoRegressive.name or any(r.kind == "cross" for r in rules):
        return (None,)
    shards = series_shards(len(structure.series), size)
    return (None,) if len(shards) == 1 else tuple(shards)


def reduce_run(
    plan: RunPlan,
    outputs: StageOutputs,
    config: TrainingConfig,
    resume_state: TrainingState | None,
    began: float,
) -> TrainingResult:
    """The final models, rule trust and error sums of every horizon, and the state a later
    run resumes from."""
    horizons = range(len(plan.structures))
    persistence = [_persistence_scales(plan, outputs, resume_state, i) for i in horizons]
    evaluations = [
        _horizon_evaluations(plan, outputs, i, scales) for i, (scales, _) in enumerate(persistence)
    ]
    counts = [
        _model_rule_counts(
            resume_state, i, len(plan.variables), plan.batches, evaluations[i], plan.end, config
        )
        for i in horizons
    ]
    run_id = uuid.uuid4().hex[:12]
    state = TrainingState(
        end=plan.end,
        variables=tuple(plan.variables),
        features=tuple(plan.features),
        lags=config.lags,
        horizons=config.forecast_horizons,
        half_life_days=config.half_life_days,
        rules=tuple(config.rules),
        structure=plan.structure.describe(),
        stats=tuple(scan.prefix for scan in outputs.scans),
        model_hits=tuple(hits for hits, _ in counts),
        model_misses=tuple(misses for _, misses in counts),
        persistence=tuple(total for _, total in persistence),
        run_id=run_id,
        sketches=outputs.sketches,
        penalty_errors=tuple(
            None if scan.penalties is None else scan.penalties.known() for scan in outputs.scans
        ),
    )
    seconds = time.perf_counter() - began
    results = tuple(
        _horizon_result(plan, outputs, config, i, evaluations[i], counts[i], state, seconds)
        for i in horizons
    )
    return replace(
        results[0],
        by_horizon=results,
        predictions=[table for tables in outputs.predictions for table in tables],
    )


def _persistence_scales(
    plan: RunPlan, outputs: StageOutputs, state: TrainingState | None, index: int
) -> tuple[dict[int, FloatArray], FloatArray]:
    """MASE's scale of each batch at horizon ``index``: per series, the mean absolute error
    of persistence over the samples realized before the batch starts (NaN before any),
    and the sums (absolute errors; counts) of all of them, for the state."""
    n = len(plan.variables)
    total = np.zeros((2, n)) if state is None else state.persistence[index].copy()
    scales = {}
    for batch in plan.batches:
        with np.errstate(divide="ignore", invalid="ignore"):
            scales[batch.batch_id] = np.where(total[1] > 0, total[0] / total[1], np.nan)
        stats = outputs.statistics[batch.batch_id].by_horizon[index]
        total = total + np.stack([stats.persistence_abs, stats.persistence_n])
    return scales, total


def _horizon_evaluations(
    plan: RunPlan, outputs: StageOutputs, index: int, scales: dict[int, FloatArray]
) -> dict[int, BatchEvaluation]:
    """The evaluations of one horizon (the batches it had a model and origins for), with
    their MASE sums from the batch's persistence scale."""
    models = outputs.scans[index].models
    evaluations = {}
    for b in plan.batches:
        if (
            b.batch_id in outputs.evaluations
            and b.batch_id in models
            and b.eval_rows[index][0] < b.eval_rows[index][1]
        ):
            evaluation = outputs.evaluations[b.batch_id].by_horizon[index]
            errors = evaluation.errors.scaled(scales[b.batch_id])
            evaluations[b.batch_id] = replace(evaluation, errors=errors)
    return evaluations


def _horizon_result(
    plan: RunPlan,
    outputs: StageOutputs,
    config: TrainingConfig,
    index: int,
    evaluations: dict[int, BatchEvaluation],
    model_counts: tuple[FloatArray, FloatArray],
    state: TrainingState,
    seconds: float,
) -> TrainingResult:
    """One horizon's result: what a run of that horizon alone reduces to."""
    variables, structure = plan.variables, plan.structures[index]
    scan = outputs.scans[index]
    final = scan.prefix
    rule_table = [
        (rule, target, float(h), float(m))
        for (rule, target), h, m in zip(
            rule_entries(plan.rules, variables), final.rule_hits, final.rule_misses, strict=True
        )
    ]
    if any(r.kind == MODEL_RULE for r in plan.rules):
        rule_table += [
            (MODEL_RULE, v, float(h), float(m))
            for v, h, m in zip(variables, *model_counts, strict=True)
        ]
    return TrainingResult(
        run_id=state.run_id,
        config=config,
        source=plan.source,
        variables=variables,
        features=plan.features,
        structure=structure,
        start=plan.start,
        end=plan.end,
        n_rows=plan.n_rows,
        batches=plan.batches,
        statistics={k: task.by_horizon[index] for k, task in outputs.statistics.items()},
        evaluations=evaluations,
        coefficients=_final_model(structure, final, config.ridge_alpha, scan.penalties),
        penalties=scan.penalties,
        rule_table=rule_table,
        errors=sum((e.errors for e in evaluations.values()), ErrorSums.zeros(len(variables))),
        state=state,
        resumed_from=config.resume_from,
        engine=outputs.engine,
        seconds=seconds,
        predictions=outputs.predictions[index],
        intervals=outputs.intervals[index],
    )


class TrainingPipeline:
    """Runs the stages of a training run on an engine, reporting progress per batch."""

    def __init__(
        self,
        progress: ProgressCallback | None = None,
        engine: Engine | None = None,
        predictions_sink: Callable[[pa.Table], None] | None = None,
    ) -> None:
        self.progress = progress
        self.engine = engine
        # Given a sink, each batch's predictions go there as the batch finishes and are not
        # kept, so the driver's memory does not grow with the history.
        self.predictions_sink = predictions_sink

    def execute(
        self, config: TrainingConfig, resume_state: TrainingState | None = None
    ) -> TrainingResult:
        """Plan, map, scan, map, reduce; raises a TrainingError subclass on bad input."""
        began = time.perf_counter()
        plan = prepare(config, resume_state)
        outputs = self.run_stages(plan, config, began)
        return reduce_run(plan, outputs, config, resume_state, began)

    def run_stages(self, plan: RunPlan, config: TrainingConfig, began: float) -> StageOutputs:
        """The map, scan and map stages on the engine (started here unless one was given)."""
        engine = self.engine or create_engine(config, plan.batches, began)
        checkpoint = (
            Checkpoint(config.checkpoint_dir, config.output_s3_settings)
            if config.checkpoint_dir
            else None
        )
        with nullcontext(engine) if self.engine else engine:  # close only what we started
            log.info("Running on %s", engine.description)
            scans = tuple(
                PrefixScan(
                    plan.batches,
                    initial,
                    structure,
                    config,
                    plan.initial_penalties[i] if plan.initial_penalties else None,
                )
                for i, (initial, structure) in enumerate(
                    zip(plan.initial, plan.structures, strict=True)
                )
            )

            def fold(task: StatisticsTask) -> StatisticsTask:
                """Each horizon's statistics into that horizon's scan."""
                folded = (scan(s) for scan, s in zip(scans, task.by_horizon, strict=True))
                return replace(task, by_horizon=tuple(folded))

            statistics = self._collect(
                "statistics",
                engine,
                compute_batch_statistics,
                plan.statistics_tasks(),
                lambda parts: merge_statistics_tasks(plan.structures, config.rules, parts),
                checkpoint,
                on_result=fold,
            )
            assert all(s.complete for s in scans), "every batch's statistics must be folded"
            for i in range(len(scans)):
                check_coverage(
                    plan.batches[0].variables,
                    [task.by_horizon[i] for task in statistics.values()],
                    plan.source,
                )
            models = {
                b.batch_id: tuple(scan.models.get(b.batch_id) for scan in scans)
                for b in plan.batches
            }
            tasks = plan.evaluation_tasks(models)
            position = {b.batch_id: k for k, b in enumerate(plan.batches)}
            kept: tuple[list[pa.Table], ...] = tuple([] for _ in scans)
            intervals = tuple(
                IntervalScan(
                    config.intervals,
                    [b.start.to_datetime64() for b in plan.batches],
                    [
                        k
                        for k, b in enumerate(plan.batches)
                        if b.batch_id in scan.models and b.eval_rows[i][0] < b.eval_rows[i][1]
                    ],
                    len(plan.variables),
                    self.predictions_sink or mine.append,
                    plan.initial_sketches[i] if plan.initial_sketches else None,
                )
                for i, (scan, mine) in enumerate(zip(scans, kept, strict=True))
            )

            empty_tables: dict[pa.Schema, pa.Table] = {}

            def emptied(table: pa.Table) -> pa.Table:
                """An empty table of ``table``'s schema, made once per schema."""
                if table.schema not in empty_tables:
                    empty_tables[table.schema] = table.schema.empty_table()
                return empty_tables[table.schema]

            def hand_over(task: EvaluationTask) -> EvaluationTask:
                """Each horizon's predictions go to its interval scan, which releases them in
                batch order (to the sink, if any); the result keeps an empty table of their
                schema (a slice would keep the rows' buffers alive)."""
                for scan, evaluation in zip(intervals, task.by_horizon, strict=True):
                    if scan.expects(position[task.batch_id]):
                        scan(position[task.batch_id], evaluation.predictions)
                return replace(
                    task,
                    by_horizon=tuple(
                        replace(e, predictions=emptied(e.predictions)) for e in task.by_horizon
                    ),
                )

            evaluations = self._collect(
                "evaluation",
                engine,
                evaluate_batch,
                tasks,
                lambda parts: merge_evaluation_tasks(plan.structures, parts),
                checkpoint,
                on_result=hand_over,
            )
            assert all(s.complete for s in intervals), "every evaluation must be released"
        return StageOutputs(
            statistics,
            evaluations,
            scans,
            engine.description,
            kept,
            tuple(
                {plan.batches[k].batch_id: sums for k, sums in scan.sums.items()}
                for scan in intervals
            ),
            tuple(
                scan.final_sketch().compact() if config.intervals else None for scan in intervals
            ),
        )

    def _collect(
        self,
        stage: str,
        engine: Engine,
        task: Callable[..., StageResult],
        arguments: Sequence[tuple[Any, ...]],
        merge: Callable[[list[StageResult]], StageResult],
        checkpoint: Checkpoint | None = None,
        on_result: Callable[[StageResult], StageResult] | None = None,
    ) -> dict[int, StageResult]:
        """Run a map stage's tasks (one per batch, or per batch x series shard), keyed by
        batch id, reporting progress as batches finish.

        A batch's shard results are kept until all have arrived, then ``merge``d in series
        order into the batch's result. Tasks saved in ``checkpoint`` are restored instead of
        run; new ones are saved there. ``on_result`` sees every batch's result (restored or
        new) before it is kept.
        """
        keep = on_result or (lambda result: result)
        tasks_of: dict[int, int] = {}
        for args in arguments:
            batch_id = task_key(args)[0]
            tasks_of[batch_id] = tasks_of.get(batch_id, 0) + 1
        pending: dict[int, dict[int, StageResult]] = {}
        results: dict[int, StageResult] = {}

        def arrive(result: StageResult) -> None:
            batch_id, first_series = result_key(result)
            parts = pending.setdefault(batch_id, {})
            parts[first_series] = result
            if len(parts) == tasks_of[batch_id]:
                del pending[batch_id]
                results[batch_id] = keep(merge([parts[k] for k in sorted(parts)]))

        saved = checkpoint.stage(stage, task, arguments) if checkpoint else None
        for result in saved.restored.values() if saved else ():
            arrive(result)
        if self.progress:
            self.progress(stage, len(results), len(tasks_of))
        with closing(engine.map_unordered(task, saved.missing if saved else arguments)) as done:
            for result in done:
                if saved:
                    saved.save(result)
                arrive(result)
                if self.progress:
                    self.progress(stage, len(results), len(tasks_of))
        return results


def _require_samples(
    batches: Sequence[TrainingBatch], source: DataSource, config: TrainingConfig
) -> None:
    for i, horizon in enumerate(config.forecast_horizons):
        if not any(b.train_rows[i][0] < b.train_rows[i][1] for b in batches):
            raise DataError(
                f"the range holds no complete sample: each needs {config.lags} earlier rows "
                f"for its lags (or the longest rule window) and {horizon} later row(s) for "
                "its target; widen the date range or lower --lags/--horizon",
                source=source.uri,
            )


def _initial_prefix(
    state: TrainingState | None,
    index: int,
    start: pd.Timestamp,
    config: TrainingConfig,
    structure: ModelStructure,
    rules: Sequence[RuleSpec],
) -> SufficientStats:
    """The statistics of horizon ``index`` known before the first batch: the resume
    state's, aged to ``start``."""
    if state is None:
        entries = len(rule_entries(rules, structure.series))
        return SufficientStats(structure.zeros(), np.zeros(entries), np.zeros(entries))
    return state.stats[index].decayed(decay_factor(state.end, start, config.half_life_days))


def _final_model(
    structure: ModelStructure,
    final: SufficientStats,
    alpha: float | str,
    penalties: PenaltyPath | None,
) -> FloatArray:
    """The model of everything learned (every series that has a sample at all), with the
    penalty chosen on every walk-forward error of the run under ``auto``."""
    if penalties is None:
        assert alpha != "auto"
        coefficients = structure.solve(final.moments, float(alpha), min_samples=0)
    else:
        path = structure.solve_path(final.moments, penalties.grid, min_samples=0)
        coefficients = None if path is None else structure.pick(path, penalties.final_choice())
    assert coefficients is not None, "a threshold of zero samples is always met"
    return coefficients


class PrefixScan:
    """The walk-forward scan, fed batch statistics in any order as they finish.

    Batch k's model is fitted on the samples realized before batch k starts. Statistics
    are folded into the prefix in batch order as soon as every earlier batch has arrived,
    and their matrices are dropped then, so the driver holds only the batches still out
    of order, not one features x features matrix per batch of the history. With
    ``--ridge-alpha auto`` each batch's model takes, per target, the penalty of
    ``penalties`` (``penalty.PenaltyPath``), whose errors the batch's own evaluation
    moments then extend.
    """

    def __init__(
        self,
        batches: Sequence[TrainingBatch],
        initial: SufficientStats,
        structure: ModelStructure,
        config: TrainingConfig,
        known_errors: PenaltyErrors | None = None,
    ) -> None:
        self.batches = batches
        self.config = config
        self.structure = structure
        self.prefix = initial
        self.models: dict[int, FloatArray] = {}
        self.penalties = (
            PenaltyPath(config.alpha_grid, structure.penalty_targets())
            if config.ridge_alpha == "auto"
            else None
        )
        if self.penalties is not None and known_errors is not None:
            self.penalties.resume(known_errors)  # a resumed run's errors of the runs before
        self._position = 0
        self._waiting: dict[int, BatchStatistics] = {}
        self._threshold = config.evaluation_threshold(structure.n_features)

    def __call__(self, result: BatchStatistics) -> BatchStatistics:
        """Fold what can be folded; keep only the batch's sample count."""
        self._waiting[result.batch_id] = result
        while (
            self._position < len(self.batches)
            and self.batches[self._position].batch_id in self._waiting
        ):
            batch = self.batches[self._position]
            arrived = self._waiting.pop(batch.batch_id)
            model = self._model(batch, arrived)
            if model is not None:
                self.models[batch.batch_id] = model
            decay = decay_factor(batch.start, batch.end, self.config.half_life_days)
            self.prefix = self.prefix.decayed(decay) + arrived.stats
            self._position += 1
        return replace(result, stats=result.stats.count_only(), evaluation=())

    def _model(self, batch: TrainingBatch, arrived: BatchStatistics) -> FloatArray | None:
        """The prefix model batch ``batch`` predicts with (None: too few samples yet)."""
        moments, threshold = self.prefix.moments, self._threshold
        if self.penalties is None:
            alpha = self.config.ridge_alpha
            assert alpha != "auto"
            return self.structure.solve(moments, alpha, threshold)
        self.penalties.release(batch.start)
        path = self.structure.solve_path(moments, self.penalties.grid, threshold)
        if path is None:
            return None
        choice = self.penalties.choice()
        model = self.structure.pick(path, choice)
        predicted = np.isfinite(self.structure.to_systems(model)).all(axis=-2).ravel()
        self.penalties.record(batch.batch_id, choice, predicted)
        parts = arrived.evaluation
        errors = self.structure.path_errors(path, [part.samples for part in parts])
        for part, part_errors in zip(parts, errors, strict=True):
            self.penalties.add(batch.batch_id, part_errors, part.realized_by)
        return model

    @property
    def complete(self) -> bool:
        """True once every batch has been folded in."""
        return self._position == len(self.batches)


def _model_rule_counts(
    state: TrainingState | None,
    index: int,
    n: int,
    batches: Sequence[TrainingBatch],
    evaluations: dict[int, BatchEvaluation],
    end: pd.Timestamp,
    config: TrainingConfig,
) -> tuple[FloatArray, FloatArray]:
    """Walk-forward hits and misses of horizon ``index``'s model per series, aged to
    ``end`` like every other count."""
    hits, misses = np.zeros(n), np.zeros(n)
    if state is not None:
        factor = decay_factor(state.end, end, config.half_life_days)
        hits, misses = state.model_hits[index] * factor, state.model_misses[index] * factor
    for batch in batches:
        if batch.batch_id in evaluations:
            factor = decay_factor(batch.end, end, config.half_life_days)
            hits = hits + evaluations[batch.batch_id].model_hits * factor
            misses = misses + evaluations[batch.batch_id].model_misses * factor
    return hits, misses
