"""The pipeline with the ar and pooled structures against independent walk-forward refits,
and the settings around them (resume, memory guard, rules at scale).

References come from tests/unit/test_models.py (pandas shifts, rolling windows, lstsq).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recursive_training.config import TrainingConfig
from recursive_training.data import open_source
from recursive_training.data.common import InMemorySource
from recursive_training.data.long import LongParquetSource
from recursive_training.data.panel import PanelSpec
from recursive_training.data.panel import write_panel as write_long_panel
from recursive_training.exceptions import ConfigError, DataError, StateError
from recursive_training.metrics import ErrorSums
from recursive_training.models import build_structure
from recursive_training.parallel_trainer import SeriesShard
from recursive_training.run_training import main
from recursive_training.stages import TrainingPipeline, TrainingResult, training_stages
from recursive_training.stages.tasks import (
    BatchEvaluation,
    compute_batch_statistics,
    evaluate_batch,
    merge_evaluations,
    prediction_table,
)
from recursive_training.stages.training_stages import prepare
from recursive_training.state import TrainingState
from tests.reference import ridge_lstsq
from tests.unit.test_models import HORIZON, LAGS, WINDOW, make_panel, own_design, pooled_frame

HALF_LIFE = 60.0
ALPHA = 0.05
MIN_SAMPLES = 25


def write_panel(frame: pd.DataFrame) -> str:
    """The panel on a business-day calendar, as a Parquet file the pipeline reads."""
    index = pd.bdate_range("2010-01-04", periods=len(frame), name="timestamp")
    path = Path(tempfile.mkdtemp(prefix="pulse-models-")) / "panel.parquet"
    frame.set_axis(index).to_parquet(path)
    return str(path)


def train(path: str, **fields: object) -> TrainingResult:
    settings = {
        "input_data": path,
        "lags": LAGS,
        "horizon": HORIZON,
        "ridge_alpha": ALPHA,
        "half_life_days": HALF_LIFE,
        "fill_limit": 0,
        "batch_size_days": 45,
        "min_train_samples": MIN_SAMPLES,
        "scale_window": WINDOW,
        "rules": ["momentum(3)", "model"],
        **fields,
    }
    return TrainingPipeline().execute(TrainingConfig.build(**settings))


def refit_before(
    frame: pd.DataFrame, stamps: pd.DatetimeIndex, start: pd.Timestamp
) -> np.ndarray | None:
    """Forgetting-weighted ridge on the complete samples realized before ``start``."""
    realized = stamps[np.minimum(frame["realized"].to_numpy(), len(stamps) - 1)]
    used = frame[(frame["realized"].to_numpy() < len(stamps)) & (realized < start)].dropna()
    if len(used) < MIN_SAMPLES:
        return None
    at = stamps[used["realized"].to_numpy()]
    age = (start - at).total_seconds().to_numpy() / 86_400
    x = used.drop(columns=["target", "realized", "scale"], errors="ignore")
    return ridge_lstsq(x, used[["target"]], ALPHA, 0.5 ** (age / HALF_LIFE))[:, 0]


def predictions_of(result: TrainingResult, batch_id: int, name: str) -> pd.Series:
    frame = result.predictions_frame()
    mine = frame[(frame["batch_id"] == batch_id) & (frame["variable"] == name)]
    return mine.set_index("origin")["predicted"]


def split_tasks(monkeypatch: pytest.MonkeyPatch, series_per_task: int) -> None:
    """Make the plan split every batch into tasks of ``series_per_task`` series (the memory
    budget would give one task per batch at these sizes)."""
    monkeypatch.setattr(training_stages, "series_per_shard", lambda rows: series_per_task)


@pytest.mark.parametrize("series_per_task", [0, 3])
def test_ar_walk_forward_predictions_equal_per_series_refits_on_earlier_samples(
    monkeypatch: pytest.MonkeyPatch, series_per_task: int
) -> None:
    """Whether a batch is one task or seven (of 3 series), predictions equal the refits."""
    if series_per_task:
        split_tasks(monkeypatch, series_per_task)
    panel = make_panel(seed=21, n_series=20, rows=260, n_exog=1, missing=0.02)
    result = train(write_panel(panel), model="ar", exog=["x0"])
    stamps = pd.bdate_range("2010-01-04", periods=len(panel))
    checked = 0
    for name in np.random.default_rng(5).choice(result.variables, 6, replace=False):
        frame = own_design(panel, name, ["x0"])
        x = frame.drop(columns=["target", "realized"]).to_numpy()
        for batch in result.batches:
            got = predictions_of(result, batch.batch_id, name)
            coefficients = refit_before(frame, stamps, batch.start)
            if coefficients is None:
                assert got.empty
                continue
            inside = (stamps >= batch.start) & (stamps < batch.end)
            expected = pd.Series(x[inside] @ coefficients, index=stamps[inside])
            known = expected.notna() & frame["target"][inside].notna().to_numpy()
            expected = expected[known & (frame["realized"][inside] < len(stamps)).to_numpy()]
            assert list(got.index) == list(expected.index)
            np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-8, atol=1e-12)
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize(("scale", "series_per_task"), [("rms", 0), ("none", 0), ("rms", 5)])
def test_pooled_walk_forward_predictions_equal_a_stacked_refit(
    monkeypatch: pytest.MonkeyPatch, scale: str, series_per_task: int
) -> None:
    """Whether a batch is one task or three (of <= 5 series), predictions equal the refit."""
    if series_per_task:
        split_tasks(monkeypatch, series_per_task)
    panel = make_panel(seed=22, n_series=12, rows=220, n_exog=1, missing=0.02)
    series = [f"s{i}" for i in range(12)]
    result = train(write_panel(panel), model="pooled", exog=["x0"], pooled_scale=scale)
    stamps = pd.bdate_range("2010-01-04", periods=len(panel))
    stacked = pooled_frame(panel, series, ["x0"], scaled=scale == "rms")
    x = stacked.drop(columns=["target", "realized", "scale"]).to_numpy()
    evaluated = 0
    for batch in result.batches:
        coefficients = refit_before(stacked, stamps, batch.start)
        got = result.predictions_frame()
        got = got[got["batch_id"] == batch.batch_id]
        if coefficients is None:
            assert got.empty
            continue
        expected = (x @ coefficients * stacked["scale"].to_numpy()).reshape(12, -1)
        for v, name in enumerate(series):
            mine = got[got["variable"] == name].set_index("origin")["predicted"]
            rows = stamps.get_indexer(mine.index)
            np.testing.assert_allclose(mine.to_numpy(), expected[v, rows], rtol=1e-8, atol=1e-12)
        evaluated += 1
    assert evaluated >= 5


def test_resuming_with_another_structure_is_refused_by_name() -> None:
    path = write_panel(make_panel(seed=23, n_series=4, rows=200, n_exog=0, missing=0.0))
    first = train(path, model="ar", end_date="2010-06-01")
    state = TrainingState.from_bytes(first.state.to_bytes(), "state.npz")
    assert state.structure == {"model": "ar", "exog": []}
    config = TrainingConfig.build(
        input_data=path,
        lags=LAGS,
        horizon=HORIZON,
        half_life_days=HALF_LIFE,
        rules=["momentum(3)", "model"],
        model="pooled",
        resume_from="state.npz",
    )
    with pytest.raises(StateError, match="trained with model=ar but this run has model=pooled"):
        TrainingPipeline().execute(config, state)


def test_var_over_the_memory_budget_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(
        [
            "--input-data",
            "builtin:synthetic?n_variables=40&years=2&seed=1",
            "--max-memory",
            "1MB",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "--model var with 40 variables and 5 lags needs about" in lines[-1]
    assert "--model ar" in lines[-1] and "--model pooled" in lines[-1]
    assert not (tmp_path / "out").exists()


def test_cross_over_more_than_a_hundred_series_is_refused() -> None:
    path = write_panel(make_panel(seed=24, n_series=101, rows=40, n_exog=0, missing=0.0))
    with pytest.raises(
        ConfigError, match=r"cross over 101 series would count 10,100 ordered pairs"
    ):
        train(path, model="ar", rules=["cross"])
    train(path, model="ar", rules=["cross(s0->s1)"], batch_size_days=400)


def test_exog_missing_from_the_data_is_named() -> None:
    path = write_panel(make_panel(seed=25, n_series=3, rows=60, n_exog=0, missing=0.0))
    with pytest.raises(DataError, match="market"):
        train(path, model="ar", exog=["market"])


@pytest.mark.parametrize("model", ["ar", "pooled"])
def test_tasks_give_the_same_numbers_whatever_the_shards_of_series(model: str) -> None:
    """A task processes its series shard by shard to bound its memory; the shard size
    (set by the plan) changes nothing beyond rounding."""
    path = write_panel(make_panel(seed=26, n_series=11, rows=150, n_exog=1, missing=0.03))
    config = TrainingConfig.build(
        input_data=path,
        lags=LAGS,
        horizons=(HORIZON, HORIZON + 3),
        model=model,
        exog=["x0"],
        batch_size_days=60,
        scale_window=WINDOW,
        rules=["momentum(3)"],
        fill_limit=0,
    )
    plan = prepare(config, None)
    assert plan.spec.shard_series >= 11
    sharded = dataclasses.replace(plan.spec, shard_series=3)
    structure = plan.structure
    rows, q = len(structure.series), structure.n_features
    coefficients = np.random.default_rng(1).standard_normal((rows, q) if model == "ar" else q)
    models = (coefficients, coefficients * 0.5)
    for batch in plan.batches:
        whole_task, parts_task = (
            compute_batch_statistics(batch, plan.spec),
            compute_batch_statistics(batch, sharded),
        )
        for whole, parts in zip(whole_task.by_horizon, parts_task.by_horizon, strict=True):
            for name in ("xtx", "xty", "yty", "n"):
                np.testing.assert_allclose(
                    getattr(parts.stats.moments, name),
                    getattr(whole.stats.moments, name),
                    rtol=1e-9,
                )
            np.testing.assert_array_equal(parts.stats.rule_hits, whole.stats.rule_hits)
            assert parts.dropped_missing == whole.dropped_missing
        if any(a < b for a, b in batch.eval_rows):
            one_task, many_task = (
                evaluate_batch(batch, plan.spec, models),
                evaluate_batch(batch, sharded, models),
            )
            for one, many in zip(one_task.by_horizon, many_task.by_horizon, strict=True):
                pd.testing.assert_frame_equal(
                    many.predictions.to_pandas(), one.predictions.to_pandas(), rtol=1e-12
                )
                np.testing.assert_allclose(many.errors.sq_error, one.errors.sq_error, rtol=1e-12)


def assert_same_run(got: TrainingResult, expected: TrainingResult) -> None:
    """Same model, rule counts, error sums, state and predictions (to 1e-9)."""
    np.testing.assert_allclose(got.coefficients, expected.coefficients, rtol=1e-9, atol=1e-12)
    assert [r[:2] for r in got.rule_table] == [r[:2] for r in expected.rule_table]
    np.testing.assert_allclose(
        [r[2:] for r in got.rule_table], [r[2:] for r in expected.rule_table], rtol=1e-9
    )
    for field in dataclasses.fields(got.errors):
        np.testing.assert_allclose(
            getattr(got.errors, field.name), getattr(expected.errors, field.name), rtol=1e-9
        )
    for name in ("xtx", "xty", "yty", "n"):
        np.testing.assert_allclose(
            getattr(got.state.stats[0].moments, name),
            getattr(expected.state.stats[0].moments, name),
            rtol=1e-9,
            atol=1e-12,
        )
    assert sorted(got.statistics) == sorted(expected.statistics)
    for k, stats in got.statistics.items():
        other = expected.statistics[k]
        assert (stats.dropped_missing, stats.candidates) == (
            other.dropped_missing,
            other.candidates,
        )
        np.testing.assert_array_equal(stats.usable, other.usable)
    pd.testing.assert_frame_equal(
        got.predictions_frame(), expected.predictions_frame(), rtol=1e-9, atol=1e-12
    )
    assert_same_walk_forward_choices(got, expected)


def assert_same_walk_forward_choices(got: TrainingResult, expected: TrainingResult) -> None:
    """Same interval sums and chosen penalties per batch, and the same residual sketch and
    penalty-grid errors in the state (what a later resumed run continues from)."""
    assert got.intervals.keys() == expected.intervals.keys()
    for batch_id, sums in got.intervals.items():
        for field in dataclasses.fields(sums):
            np.testing.assert_allclose(
                getattr(sums, field.name),
                getattr(expected.intervals[batch_id], field.name),
                rtol=1e-9,
            )
    assert (got.penalties is None) == (expected.penalties is None)
    if got.penalties is not None and expected.penalties is not None:
        assert got.penalties.chosen.keys() == expected.penalties.chosen.keys()
        for batch_id, alphas in got.penalties.chosen.items():
            np.testing.assert_array_equal(alphas, expected.penalties.chosen[batch_id])
    for index in range(len(got.state.horizons)):
        sketch, other = got.state.sketch(index), expected.state.sketch(index)
        assert (sketch is None) == (other is None)
        if sketch is not None and other is not None:
            for name in ("occupied", "buckets", "counts"):
                np.testing.assert_array_equal(getattr(sketch, name), getattr(other, name))
        errors, others = got.state.penalty(index), expected.state.penalty(index)
        assert (errors is None) == (others is None)
        if errors is not None and others is not None:
            np.testing.assert_allclose(errors.totals, others.totals, rtol=1e-9)
            np.testing.assert_array_equal(errors.seen, others.seen)


@pytest.mark.parametrize("model", ["ar", "pooled"])
def test_batch_by_shard_tasks_equal_one_task_per_batch_and_load_only_their_series(
    monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """Tasks of (batch x 4 series) give the run of one task per batch, and each task reads
    only its own series and the exog from the source."""
    panel = make_panel(seed=27, n_series=11, rows=200, n_exog=1, missing=0.03)
    path = write_panel(panel)
    whole = train(
        path, model=model, exog=["x0"], rules=["momentum(3)", "mean_reversion(4)", "model"]
    )
    loaded: list[tuple[str, ...]] = []

    def recording(load: Any) -> Any:
        def recorded(self: InMemorySource, variables: object, *window: object) -> object:
            loaded.append(tuple(variables))  # type: ignore[arg-type]
            return load(self, variables, *window)

        return recorded

    # the two ways a task reads: a planned window, or a date range
    for method in ("load_window", "load_array"):
        monkeypatch.setattr(InMemorySource, method, recording(getattr(InMemorySource, method)))
    split_tasks(monkeypatch, 4)
    split = train(
        path, model=model, exog=["x0"], rules=["momentum(3)", "mean_reversion(4)", "model"]
    )
    assert_same_run(split, whole)
    series = [f"s{i}" for i in range(11)]
    shards = [(*series[i : i + 4], "x0") for i in range(0, 11, 4)]
    assert set(loaded) == set(shards), "each task loads its 4 series and the exog, no more"
    statistics_tasks = len(whole.batches) * 3
    assert len(loaded) > statistics_tasks


@pytest.mark.parametrize(
    "walk_forward",
    [
        {"ridge_alpha": ALPHA},
        {"ridge_alpha": "auto", "alpha_grid": [0.01, 1.0, 100.0], "intervals": [0.8, 0.95]},
    ],
    ids=["fixed", "auto-intervals"],
)
def test_a_run_of_shard_tasks_resumed_from_its_checkpoints_equals_one_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, walk_forward: dict[str, object]
) -> None:
    """A crash mid-evaluation keeps every finished (batch, shard) task; the restarted run
    runs only the others and ends where one uninterrupted run ends, its intervals and
    chosen penalties included (the driver rebuilds them from the restored results)."""
    path = write_panel(make_panel(seed=28, n_series=10, rows=200, n_exog=1, missing=0.02))
    split_tasks(monkeypatch, 4)
    fields = {"model": "ar", "exog": ["x0"], "checkpoint_dir": str(tmp_path), **walk_forward}

    def crash_in_evaluation(stage: str, done: int, total: int) -> None:
        if stage == "evaluation" and done == 2:
            raise KeyboardInterrupt

    settings = {
        "input_data": path, "lags": LAGS, "horizon": HORIZON,
        "fill_limit": 0, "batch_size_days": 45, "min_train_samples": MIN_SAMPLES,
        "rules": ["momentum(3)", "model"], **fields,
    }  # fmt: skip
    config = TrainingConfig.build(**settings)
    with pytest.raises(KeyboardInterrupt):
        TrainingPipeline(progress=crash_in_evaluation).execute(config)
    batches = len(prepare(config, None).batches)
    assert len(list((tmp_path / "statistics").iterdir())) == 3 * batches, "one file per task"
    evaluated = {p.name for p in (tmp_path / "evaluation").iterdir()}
    assert len(evaluated) >= 6
    calls: list[tuple[str, int, int]] = []
    resumed = TrainingPipeline(progress=lambda *call: calls.append(call)).execute(config)
    assert calls[0] == ("statistics", batches, batches), "statistics were recomputed"
    assert {p.name for p in (tmp_path / "evaluation").iterdir()} >= evaluated
    settings.pop("checkpoint_dir")
    assert_same_run(resumed, TrainingPipeline().execute(TrainingConfig.build(**settings)))


def test_tasks_on_a_long_parquet_panel_never_scan_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process (a fresh source) runs a planned batch's shard task from the
    timestamps the batch carries: it never scans the panel for its time index, and
    computes what the driver's source computes."""
    panel = write_long_panel(PanelSpec(n_series=30, years=3, seed=2), tmp_path / "p.parquet")
    config = TrainingConfig.build(
        input_data=str(panel), model="ar", exog=["market"], lags=3, batch_size_days=365,
        rules=["momentum(3)"],
    )  # fmt: skip
    plan = prepare(config, None)
    shard = SeriesShard(10, 20)
    expected = [compute_batch_statistics(b, plan.spec, shard) for b in plan.batches]
    open_source.cache_clear()  # what a worker process starts with

    def no_scan(self: LongParquetSource) -> None:
        raise AssertionError("a task scanned the panel for its time index")

    monkeypatch.setattr(LongParquetSource, "_scan", no_scan)
    for batch, known in zip(plan.batches, expected, strict=True):
        got = compute_batch_statistics(batch, plan.spec, shard)
        np.testing.assert_array_equal(
            got.by_horizon[0].stats.moments.xtx, known.by_horizon[0].stats.moments.xtx
        )
        np.testing.assert_array_equal(
            got.by_horizon[0].stats.rule_hits, known.by_horizon[0].stats.rule_hits
        )
    open_source.cache_clear()


def test_shard_predictions_merge_in_origin_then_series_order() -> None:
    """A batch's shard tasks' predictions, ragged (a series missing at some origins, an
    origin only some shards predict), merge into the rows one task over all series writes:
    checked against pandas sorting the concatenated rows by origin and global series."""
    rng = np.random.default_rng(5)
    names = [f"s{i}" for i in range(7)]
    structure = build_structure("ar", names, LAGS, HORIZON, (), "rms", 52)
    stamps = pd.date_range("2020-01-01", periods=6, freq="D").to_numpy()
    parts, frames = [], []
    for first, stop in ((0, 3), (3, 5), (5, 7)):
        complete = rng.random((len(stamps), stop - first)) > 0.3
        complete[2] = first == 3  # origin 2: only the middle shard predicts
        rows, columns = np.nonzero(complete)
        predicted = rng.normal(size=len(rows))
        table = prediction_table(
            stamps[rows], stamps[rows] + 1, 4, HORIZON, columns, names[first:stop],
            predicted, predicted + 1,
        )  # fmt: skip
        zeros = np.zeros(stop - first)
        errors = ErrorSums(*(zeros for _ in dataclasses.fields(ErrorSums)))
        parts.append(BatchEvaluation(4, first, errors, zeros, zeros, table, 0, 0.0, "w"))
        frames.append(table.to_pandas().assign(variable=[names[first + c] for c in columns]))
    merged = merge_evaluations(structure, parts).predictions.to_pandas()
    expected = pd.concat(frames).sort_values(
        ["origin", "variable"], key=lambda c: c.map(names.index) if c.name == "variable" else c
    )
    assert list(merged["variable"].cat.categories) == names
    assert merged["variable"].astype(str).tolist() == expected["variable"].tolist()
    for column in ("origin", "realized", "predicted", "actual", "batch_id", "horizon"):
        np.testing.assert_array_equal(merged[column].to_numpy(), expected[column].to_numpy())
    nothing = [dataclasses.replace(p, predictions=p.predictions.slice(0, 0)) for p in parts]
    empty = merge_evaluations(structure, nothing).predictions
    assert empty.num_rows == 0
    assert empty.schema == parts[0].predictions.schema
