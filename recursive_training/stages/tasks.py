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
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from recursive_training import features as feats
from recursive_training.arrays import FloatArray
from recursive_training.config import TrainingConfig
from recursive_training.data import open_source
from recursive_training.engines import current_worker
from recursive_training.exceptions import DataError
from recursive_training.metrics import ErrorSums
from recursive_training.parallel_trainer import TrainingBatch
from recursive_training.rules import fixed_rule_counts, parse_rules, rule_entries, sign_hits_misses
from recursive_training.s3_location import S3Settings
from recursive_training.statistics import SufficientStats, forgetting_weights


@dataclass(frozen=True)
class TaskSpec:
    """The settings the map-stage tasks read, and nothing else.

    A setting a task starts to read belongs here (and in ``from_config``); the checkpoint
    key then covers it without further bookkeeping.
    """

    input_data: str
    input_format: str
    lags: int
    horizon: int
    fill_limit: int
    half_life_days: float | None
    rules: tuple[str, ...]
    # How to reach the data, not what it is: specs differing only here compute the same.
    s3: S3Settings = dataclasses.field(compare=False)

    @classmethod
    def from_config(cls, config: TrainingConfig) -> TaskSpec:
        """The tasks' share of a run's config."""
        return cls(
            input_data=config.input_data,
            input_format=config.input_format,
            lags=config.lags,
            horizon=config.horizon,
            fill_limit=config.fill_limit,
            half_life_days=config.half_life_days,
            rules=tuple(config.rules),
            s3=config.s3_settings,
        )

    def fingerprint(self) -> str:
        """Hash of every field that changes what the tasks compute (all but ``compare=False``)."""
        compared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        return hashlib.sha256(json.dumps(compared, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BatchStatistics:
    """Map-stage output: the batch's training statistics, referenced at the batch end."""

    batch_id: int
    stats: SufficientStats
    dropped_missing: int
    seconds: float
    worker: str


@dataclass(frozen=True)
class BatchEvaluation:
    """Evaluation output: error sums, model-rule counts and the predictions themselves."""

    batch_id: int
    errors: ErrorSums
    model_hits: FloatArray
    model_misses: FloatArray
    predictions: pd.DataFrame
    dropped_missing: int
    seconds: float
    worker: str


def load_window(batch: TrainingBatch, spec: TaskSpec) -> tuple[FloatArray, NDArray[np.datetime64]]:
    """The batch's rows (levels, rows x variables), forward-filled up to the limit, and
    their timestamps (so a worker never needs the source's whole time index)."""
    source = open_source(spec.input_data, spec.input_format, spec.s3)
    frame = source.load(batch.variables, batch.window_first, batch.window_last)
    expected = batch.window_rows[1] - batch.window_rows[0]
    if len(frame) != expected:
        raise DataError(
            f"{batch}: expected {expected} rows between {batch.window_first} and "
            f"{batch.window_last} but the source returned {len(frame)}; did the data change "
            "while the run was planned?",
            source=source.uri,
        )
    if spec.fill_limit:
        frame = frame.ffill(limit=spec.fill_limit)
    return frame.to_numpy(dtype=np.float64), frame.index.to_numpy()


def compute_batch_statistics(batch: TrainingBatch, spec: TaskSpec) -> BatchStatistics:
    """Ridge sufficient statistics and fixed-rule counts of the samples realized in the batch."""
    began = time.perf_counter()
    rules = parse_rules(spec.rules)
    n_features = 1 + len(batch.variables) * spec.lags
    n_entries = len(rule_entries(rules, batch.variables))
    first, stop = batch.train_rows
    if first >= stop:
        empty = SufficientStats.zeros(n_features, len(batch.variables), n_entries)
        return BatchStatistics(
            batch.batch_id, empty, 0, time.perf_counter() - began, current_worker()
        )
    levels, stamps = load_window(batch, spec)
    offset = batch.window_rows[0]
    origins = np.arange(first, stop) - spec.horizon - offset
    x, y = feats.design(levels, origins, spec.lags, spec.horizon)
    complete = feats.complete_rows(x, y)
    weights = forgetting_weights(
        stamps[origins + spec.horizon][complete], batch.end, spec.half_life_days
    )
    hits, misses = fixed_rule_counts(
        levels, origins[complete], y[complete], weights, rules, batch.variables
    )
    stats = SufficientStats.from_samples(x[complete], y[complete], weights, hits, misses)
    return BatchStatistics(
        batch.batch_id, stats, int((~complete).sum()), time.perf_counter() - began, current_worker()
    )


def evaluate_batch(
    batch: TrainingBatch, spec: TaskSpec, coefficients: FloatArray
) -> BatchEvaluation:
    """Predict the samples whose origin is in the batch with the model known at its start."""
    began = time.perf_counter()
    levels, stamps = load_window(batch, spec)
    offset = batch.window_rows[0]
    origins = np.arange(*batch.eval_rows) - offset
    x, y = feats.design(levels, origins, spec.lags, spec.horizon)
    complete = feats.complete_rows(x, y)
    origins, x, y = origins[complete], x[complete], y[complete]
    predicted = x @ coefficients
    realized = stamps[origins + spec.horizon]
    weights = forgetting_weights(realized, batch.end, spec.half_life_days)
    variables = list(batch.variables)
    hits, misses = sign_hits_misses(predicted, y, weights)  # the model as a sign rule
    predictions = pd.DataFrame(
        {
            "origin": np.repeat(stamps[origins], len(variables)),
            "realized": np.repeat(realized, len(variables)),
            "batch_id": np.int32(batch.batch_id),
            "variable": pd.Categorical(np.tile(variables, len(origins)), categories=variables),
            "predicted": predicted.ravel(),
            "actual": y.ravel(),
        }
    )
    return BatchEvaluation(
        batch.batch_id,
        ErrorSums.from_predictions(predicted, y),
        hits,
        misses,
        predictions,
        int((~complete).sum()),
        time.perf_counter() - began,
        current_worker(),
    )
