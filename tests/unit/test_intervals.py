"""Walk-forward conformal intervals (--intervals) against references written here.

The bounds are checked against the conformal quantile computed from the run's own
predictions file with numpy (sort, take rank ceil((n + 1) q)), counting only residuals
realized before each batch starts; calibration on the synthetic VAR, whose Gaussian noise
is known; no residual realized at or after a batch's start may move its intervals; and
the sketch behind the quantiles against sorted arrays.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from fractions import Fraction
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from recursive_training.config import TrainingConfig
from recursive_training.data.builtin import SyntheticSpec, synthetic_process
from recursive_training.exceptions import ConfigError
from recursive_training.intervals import (
    BUCKET_GROWTH,
    CompactSketch,
    ResidualSketch,
    SketchCounts,
    min_residuals,
)
from recursive_training.run_training import main
from recursive_training.stages import TrainingPipeline, TrainingResult
from recursive_training.state import TrainingState
from tests.unit.test_models import make_panel
from tests.unit.test_models_pipeline import assert_same_run, split_tasks, write_panel

pytestmark = pytest.mark.unit

LEVELS = (0.8, 0.95)


def conformal_quantile(residuals: np.ndarray, level: float) -> float:
    """The finite-sample conformal quantile: the ceil((n+1) q)-th smallest residual, or NaN
    when that rank exceeds n."""
    n = len(residuals)
    rank = math.ceil((n + 1) * Fraction(str(level)))
    return float(np.sort(residuals)[rank - 1]) if rank <= n else math.nan


def bucket_edge(value: float) -> float:
    """The least power of BUCKET_GROWTH at or above ``value`` (0 for 0), found by stepping."""
    if value == 0:
        return 0.0
    exponent = math.floor(math.log(value, BUCKET_GROWTH)) - 2
    while BUCKET_GROWTH**exponent < value:
        exponent += 1
    return float(BUCKET_GROWTH**exponent)


def expected_half_widths(result: TrainingResult, level: float) -> pd.Series:
    """Per prediction, the half-width the intervals must have: from the residuals of the
    same series realized strictly before the prediction's batch starts."""
    frame = result.predictions_frame()
    frame["residual"] = (frame["actual"] - frame["predicted"]).abs()
    starts = {b.batch_id: b.start for b in result.batches}
    expected = pd.Series(np.nan, index=frame.index)
    for (batch_id, name), rows in frame.groupby(["batch_id", "variable"], observed=True):
        known = frame[(frame["variable"] == name) & (frame["realized"] < starts[batch_id])]
        quantile = conformal_quantile(known["residual"].to_numpy(), level)
        expected[rows.index] = math.nan if math.isnan(quantile) else bucket_edge(quantile)
    return expected


def test_bounds_equal_the_conformal_quantile_of_residuals_realized_before_the_batch() -> None:
    """With horizon 5 and 30-day batches, the last predictions of a batch are realized in
    the next one and must not count for it: each bound is the prediction -+ the numpy
    conformal quantile of the earlier residuals, rounded up to its sketch bucket, never
    below the exact quantile and less than 1% above it."""
    path = write_panel(make_panel(seed=5, n_series=3, rows=420, n_exog=0, missing=0.02))
    config = TrainingConfig.build(
        input_data=path, model="ar", lags=2, horizon=5, batch_size_days=30,
        min_train_samples=20, rules=["model"], intervals=list(LEVELS),
    )  # fmt: skip
    result = TrainingPipeline().execute(config)
    frame = result.predictions_frame()
    late = frame["realized"] >= frame["batch_id"].map({b.batch_id: b.end for b in result.batches})
    assert late.sum() > 100, "some predictions must be realized after their batch ends"
    for level in LEVELS:
        label = f"{level * 100:g}"
        expected = expected_half_widths(result, level)
        assert expected.notna().sum() > 800 and expected.isna().sum() > 0
        lower, upper = frame[f"lower_{label}"], frame[f"upper_{label}"]
        pd.testing.assert_series_equal(lower.isna(), expected.isna(), check_names=False)
        np.testing.assert_allclose(upper - frame["predicted"], expected, rtol=1e-9)
        np.testing.assert_allclose(frame["predicted"] - lower, expected, rtol=1e-9)


def test_the_first_interval_comes_with_the_minimum_count_of_residuals() -> None:
    """A series gets an interval at q once it has min_residuals(q) residuals: the least n
    with ceil((n + 1) q) <= n, checked by counting."""
    for level in (0.5, 0.8, 0.9, 0.95, 0.975, 0.99):
        least = next(n for n in range(1, 10_000) if math.ceil((n + 1) * Fraction(str(level))) <= n)
        assert min_residuals(level) == least
    sketch = ResidualSketch(1)
    residuals = np.arange(1.0, 20.0)
    for n, value in enumerate(residuals, start=1):
        sketch.add(SketchCounts.of(np.zeros(1, dtype=np.intp), np.array([value])))
        got = sketch.quantiles([0.95])[0, 0]
        assert np.isnan(got) == (n < 19)
    assert sketch.quantiles([0.95])[0, 0] == bucket_edge(19.0)


def test_the_sketch_quantile_brackets_the_exact_one_for_any_merge_order() -> None:
    """Residuals over 8 decades, with zeros and ties, added in 5 random orders of random
    chunks: every series' quantile is the bucket edge of numpy's exact conformal quantile,
    and the sketches are identical."""
    rng = np.random.default_rng(3)
    n_series = 7
    series = rng.integers(0, n_series, 5000)
    residual = np.abs(rng.standard_normal(5000)) * 10.0 ** rng.uniform(-4, 4, 5000)
    residual[rng.random(5000) < 0.01] = 0.0
    residual[:50] = 2.5  # ties
    sketches = []
    for _ in range(5):
        order = rng.permutation(5000)
        sketch = ResidualSketch(n_series)
        for chunk in np.array_split(order, rng.integers(1, 30)):
            sketch.add(SketchCounts.of(series[chunk], residual[chunk]))
        sketches.append(sketch)
    for other in sketches[1:]:
        np.testing.assert_array_equal(other.keys, sketches[0].keys)
        np.testing.assert_array_equal(other.counts, sketches[0].counts)
    levels = (0.5, 0.8, 0.95, 0.999)
    for level, got in zip(levels, sketches[0].quantiles(levels), strict=True):
        for s in range(n_series):
            exact = conformal_quantile(residual[series == s], level)
            if math.isnan(exact):
                assert np.isnan(got[s])
                continue
            assert got[s] == bucket_edge(exact)
            assert exact <= got[s] < exact * BUCKET_GROWTH


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_coverage_on_the_synthetic_var_is_nominal_within_binomial_tolerance(level: float) -> None:
    """The synthetic VAR(2) has Gaussian noise of known scale: over about 19,000 walk-forward
    predictions, coverage is within 3 binomial standard deviations of nominal (0.9: also
    within the issue's 2 points), and the late half-widths are near the Gaussian quantile
    of the noise (the intervals are not merely wide)."""
    config = TrainingConfig.build(
        input_data="builtin:synthetic?n_variables=4&years=20&seed=11", lags=2,
        batch_size_days=182, rules=["model"], intervals=[level],
    )  # fmt: skip
    result = TrainingPipeline().execute(config)
    frame = result.predictions_frame()
    label = f"{level * 100:g}"
    has = frame[f"lower_{label}"].notna()
    covered = (frame["actual"] >= frame[f"lower_{label}"]) & (
        frame["actual"] <= frame[f"upper_{label}"]
    )
    n = int(has.sum())
    coverage = covered[has].mean()
    assert n > 18_000
    assert abs(coverage - level) < 3 * math.sqrt(level * (1 - level) / n)
    assert abs(coverage - level) < 0.02
    noise = synthetic_process(SyntheticSpec(n_variables=4, years=20, seed=11)).scale
    z = NormalDist().inv_cdf((1 + level) / 2)
    late = frame[has & (frame["batch_id"] >= result.batches[-1].batch_id - 10)]
    half = (late[f"upper_{label}"] - late["predicted"]).groupby(late["variable"], observed=True)
    ratio = half.mean().to_numpy() / (z * noise)
    np.testing.assert_allclose(ratio, 1.0, atol=0.08)


def test_values_realized_after_a_batch_starts_do_not_move_its_intervals() -> None:
    """Replace every value from a batch's start on with wild noise: the intervals of that
    batch and of every earlier one keep their half-widths, and the later ones change (so
    the check can see a change)."""
    panel = make_panel(seed=8, n_series=3, rows=400, n_exog=0, missing=0.0)
    config = dict(
        model="ar", lags=2, horizon=3, batch_size_days=30, min_train_samples=20,
        rules=["model"], intervals=list(LEVELS),
    )  # fmt: skip
    original = TrainingPipeline().execute(
        TrainingConfig.build(input_data=write_panel(panel), **config)
    )
    batch = original.batches[8]
    index = pd.bdate_range("2010-01-04", periods=len(panel))
    changed = panel.copy()
    after = index >= batch.start
    changed.loc[after] = np.random.default_rng(1).standard_normal((after.sum(), 3)) * 1e4
    perturbed = TrainingPipeline().execute(
        TrainingConfig.build(input_data=write_panel(changed), **config)
    )
    mine, theirs = original.predictions_frame(), perturbed.predictions_frame()
    for level in LEVELS:
        label = f"{level * 100:g}"
        half = mine[f"upper_{label}"] - mine["predicted"]
        other = theirs[f"upper_{label}"] - theirs["predicted"]
        up_to = (mine["batch_id"] <= batch.batch_id).to_numpy()
        assert half[up_to].notna().sum() > 100
        np.testing.assert_allclose(other[up_to], half[up_to], rtol=1e-12)
        assert not np.allclose(other[~up_to], half[~up_to], rtol=1e-3)


def test_intervals_do_not_depend_on_series_shards() -> None:
    """(batch x 3-series shard) tasks give the intervals of one task per batch."""
    path = write_panel(make_panel(seed=31, n_series=10, rows=240, n_exog=1, missing=0.03))
    config = TrainingConfig.build(
        input_data=path, model="ar", exog=["x0"], lags=3, batch_size_days=40,
        rules=["model"], min_train_samples=10, intervals=list(LEVELS),
    )  # fmt: skip
    whole = TrainingPipeline().execute(config)
    with pytest.MonkeyPatch.context() as patch:
        split_tasks(patch, 3)
        sharded = TrainingPipeline().execute(config)
    assert_same_run(sharded, whole)
    assert "lower_95" in sharded.predictions_frame()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("0.8,1", "levels must lie strictly between 0 and 1"),
        ("0.95,0.8", "list each level once, in increasing order"),
        ("0.8,eighty", "expected levels such as 0.8,0.95"),
    ],
)
def test_bad_levels_are_refused_in_one_line(
    flag: str, message: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    assert main(["--intervals", flag, "--output-dir", str(tmp_path / "out")]) == 1
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert message in line and "--intervals" in line and "\n" not in line
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError):
        TrainingConfig.build(intervals=[0.0])


def test_the_results_and_metrics_files_report_coverage_width_and_winkler_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """results.json (overall, per batch, per series) and metrics.parquet agree with pandas
    on the predictions file: coverage, mean width and the Winkler score; the report has
    its coverage chart and the terminal summary its line."""
    out = tmp_path / "out"
    assert main(
        ["--input-data", "builtin:synthetic?years=6", "--batch-size-days", "365",
         "--intervals", "0.8,0.95", "--output-dir", str(out), "--rules", "model",
         "--report", str(tmp_path / "report")]
    ) == 0  # fmt: skip
    assert "Intervals: 80% covered" in capsys.readouterr().out
    page = (tmp_path / "report" / "index.html").read_text()
    assert (tmp_path / "report" / "interval_coverage.png").stat().st_size > 10_000
    assert "Prediction intervals" in page and "Winkler score" in page
    document = json.loads((out / "results.json").read_text())
    predictions = pd.read_parquet(out / document["files"]["predictions"])
    metrics = pd.read_parquet(out / document["files"]["metrics"]).set_index("series")
    intervals = document["metrics"]["intervals"]
    for level in LEVELS:
        label = f"{level * 100:g}"
        frame = predictions[predictions[f"lower_{label}"].notna()].copy()
        lower, upper, actual = frame[f"lower_{label}"], frame[f"upper_{label}"], frame["actual"]
        frame["covered"] = (lower <= actual) & (actual <= upper)
        frame["width"] = upper - lower
        outside = (lower - actual).clip(lower=0) + (actual - upper).clip(lower=0)
        frame["winkler"] = frame["width"] + 2 / (1 - level) * outside
        pooled = intervals["levels"][label]
        assert pooled["level"] == level and pooled["min_residuals"] == min_residuals(level)
        assert pooled["n"] == len(frame)
        assert pooled["coverage"] == pytest.approx(frame["covered"].mean(), rel=1e-12)
        assert pooled["mean_width"] == pytest.approx(frame["width"].mean(), rel=1e-12)
        assert pooled["winkler"] == pytest.approx(frame["winkler"].mean(), rel=1e-12)
        by_batch = frame.groupby("batch_id")["covered"].mean()
        for record in document["batches"]:
            if record["batch_id"] in by_batch.index:
                got = record["intervals"][label]["coverage"]
                assert got == pytest.approx(by_batch[record["batch_id"]], rel=1e-12)
        by_series = frame.groupby("variable", observed=True)[["covered", "width", "winkler"]]
        expected = by_series.mean()
        np.testing.assert_allclose(metrics[f"coverage_{label}"], expected["covered"], rtol=1e-12)
        np.testing.assert_allclose(metrics[f"mean_width_{label}"], expected["width"], rtol=1e-12)
        np.testing.assert_allclose(metrics[f"winkler_{label}"], expected["winkler"], rtol=1e-12)
        for name, row in expected.iterrows():
            assert intervals["series"][name][label]["coverage"] == pytest.approx(row["covered"])


def test_each_horizon_has_the_intervals_of_a_run_of_it_alone() -> None:
    """Intervals are keyed by (series, horizon): in a run of horizons 1 and 5, each
    horizon's bounds are those of a one-horizon run (whose residuals are realized h steps
    after their origin)."""
    path = write_panel(make_panel(seed=12, n_series=4, rows=360, n_exog=0, missing=0.0))
    settings = dict(
        input_data=path, model="ar", lags=2, batch_size_days=40, min_train_samples=20,
        rules=["model"], intervals=list(LEVELS),
    )  # fmt: skip
    both = TrainingPipeline().execute(TrainingConfig.build(**settings, horizons=[1, 5]))
    frame = both.predictions_frame()
    for horizon in (1, 5):
        alone = TrainingPipeline().execute(TrainingConfig.build(**settings, horizon=horizon))
        expected = alone.predictions_frame()
        got = frame[frame["horizon"] == horizon].reset_index(drop=True)
        assert got["lower_95"].notna().sum() > 500
        pd.testing.assert_frame_equal(got, expected, rtol=1e-12)


def test_the_sketch_round_trips_through_its_compact_state_arrays() -> None:
    """The state file stores a sketch as occupied buckets per series, int32 buckets and the
    narrowest unsigned counts: read back from a state file it is identical (zeros, a
    series without residuals and a count past 65,535 included), in about a third of the
    bytes the driver holds."""
    rng = np.random.default_rng(8)
    series = rng.integers(0, 50, 40_000)
    series[series == 7] = 8  # a series without residuals
    residual = np.abs(rng.standard_normal(40_000)) * 10.0 ** rng.uniform(-3, 3, 40_000)
    residual[::97] = 0.0
    sketch = ResidualSketch(50)
    sketch.add(SketchCounts.of(series, residual))
    sketch.add(SketchCounts.of(np.full(70_000, 3, dtype=np.intp), np.full(70_000, 1.5)))
    compact = sketch.compact()
    assert compact.buckets.dtype == np.int32 and compact.counts.dtype == np.uint32
    assert compact.nbytes <= 0.6 * sketch.nbytes
    state = TrainingState.from_bytes(state_with(compact), "state.npz").sketch(0)
    assert state is not None
    again = state.expand()
    np.testing.assert_array_equal(again.keys, sketch.keys)
    np.testing.assert_array_equal(again.counts, sketch.counts)
    np.testing.assert_array_equal(again.totals, sketch.totals)
    assert again.totals[7] == 0 and again.totals[3] >= 70_000
    np.testing.assert_array_equal(again.quantiles(LEVELS), sketch.quantiles(LEVELS))


def state_with(sketch: CompactSketch) -> bytes:
    """A real run's state file, carrying ``sketch`` for its one horizon."""
    path = write_panel(make_panel(seed=5, n_series=3, rows=120, n_exog=0, missing=0.0))
    run = TrainingPipeline().execute(
        TrainingConfig.build(input_data=path, lags=2, batch_size_days=60, rules=["model"])
    )
    return dataclasses.replace(run.state, sketches=(sketch,)).to_bytes()


RESUMED = dict(
    model="ar", lags=2, horizon=5, batch_size_days=30, min_train_samples=20,
    rules=["model"], intervals=list(LEVELS),
)  # fmt: skip


def test_a_resumed_run_takes_its_quantiles_from_the_residuals_of_the_runs_before() -> None:
    """Each bound of a run resumed from a state is the prediction -+ the numpy conformal
    quantile of the series' residuals of both runs realized before the batch starts (the
    first run's from its predictions file): its first evaluated batch has intervals."""
    path = write_panel(make_panel(seed=5, n_series=3, rows=420, n_exog=0, missing=0.02))
    middle = pd.bdate_range("2010-01-04", periods=420)[200]
    first = TrainingPipeline().execute(
        TrainingConfig.build(input_data=path, end_date=middle, **RESUMED)
    )
    state = TrainingState.from_bytes(first.state.to_bytes(), "state.npz")
    second = TrainingPipeline().execute(
        TrainingConfig.build(input_data=path, resume_from="state.npz", **RESUMED), state
    )
    earlier = first.predictions_frame()
    earlier["residual"] = (earlier["actual"] - earlier["predicted"]).abs()
    frame = second.predictions_frame()
    frame["residual"] = (frame["actual"] - frame["predicted"]).abs()
    starts = {b.batch_id: b.start for b in second.batches}
    for level in LEVELS:
        label = f"{level * 100:g}"
        expected = pd.Series(np.nan, index=frame.index)
        for (batch_id, name), rows in frame.groupby(["batch_id", "variable"], observed=True):
            known = np.concatenate(
                [
                    earlier.loc[earlier["variable"] == name, "residual"].to_numpy(),
                    frame.loc[
                        (frame["variable"] == name) & (frame["realized"] < starts[batch_id]),
                        "residual",
                    ].to_numpy(),
                ]
            )
            quantile = conformal_quantile(known, level)
            expected[rows.index] = bucket_edge(quantile) if not math.isnan(quantile) else np.nan
        first_batch = frame["batch_id"] == frame["batch_id"].min()
        assert expected[first_batch].notna().all(), "the first run's residuals are known"
        np.testing.assert_allclose(frame[f"upper_{label}"] - frame["predicted"], expected)
        np.testing.assert_allclose(frame["predicted"] - frame[f"lower_{label}"], expected)


def test_a_state_without_a_sketch_resumes_with_intervals_afresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A version 2 state (written before states carried the sketch), or one of a run without
    --intervals, still resumes: the intervals start afresh, as a fresh run's, with a
    warning saying so."""
    path = write_panel(make_panel(seed=5, n_series=3, rows=420, n_exog=0, missing=0.02))
    middle = pd.bdate_range("2010-01-04", periods=420)[200]
    no_intervals = {**RESUMED, "intervals": []}
    first = TrainingPipeline().execute(
        TrainingConfig.build(input_data=path, end_date=middle, **no_intervals)
    )
    assert first.state.sketch(0) is None
    with_sketch = TrainingPipeline().execute(
        TrainingConfig.build(input_data=path, end_date=middle, **RESUMED)
    )
    version_2 = version_2_file(with_sketch.state.to_bytes())
    for data in (first.state.to_bytes(), version_2):
        state = TrainingState.from_bytes(data, "state.npz")
        assert state.sketch(0) is None
        caplog.clear()
        second = TrainingPipeline().execute(
            TrainingConfig.build(input_data=path, resume_from="state.npz", **RESUMED), state
        )
        assert "carries no residual sketch" in caplog.text
        frame = second.predictions_frame()
        first_batch = frame["batch_id"] == frame["batch_id"].min()
        assert frame.loc[first_batch, "lower_80"].isna().all()
        assert frame["lower_80"].notna().sum() > 100
        assert second.state.sketch(0) is not None, "the new state carries one again"


def version_2_file(data: bytes) -> bytes:
    """A state file as version 2 wrote it: the same arrays without the sketch and penalty
    errors, and a header of version 2 without the keys version 3 added."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        kept = {
            name: arrays[name]
            for name in arrays.files
            if not name.partition(".")[2].startswith(("sketch_", "penalty_"))
        }
    header = json.loads(str(kept["header"]))
    header = {k: v for k, v in header.items() if k not in ("interval_sketch", "penalty_grid")}
    kept["header"] = np.array(json.dumps(header | {"schema_version": 2}))
    buffer = io.BytesIO()
    np.savez(buffer, **kept)
    return buffer.getvalue()


def test_the_cli_resumes_intervals_from_the_state_its_results_name(tmp_path: Path) -> None:
    """Through the CLI and its files: a run resumed with --resume-from results.json gives
    its first evaluated batch intervals (the state file it wrote carries the sketch), and
    its state's sketch holds every residual of both runs' predictions files."""
    flags = ["--input-data", "builtin:synthetic?years=6", "--batch-size-days", "182",
             "--intervals", "0.8", "--rules", "model"]  # fmt: skip
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*flags, "--end-date", "2003-01-01", "--output-dir", str(first)]) == 0
    resume = ["--resume-from", str(first / "results.json"), "--output-dir", str(second)]
    assert main([*flags, *resume]) == 0
    counted = 0
    for out in (first, second):
        document = json.loads((out / "results.json").read_text())
        predictions = pd.read_parquet(out / document["files"]["predictions"])
        counted += len(predictions)
    first_batch = next(b for b in document["batches"] if b["evaluated"])
    in_it = predictions["batch_id"] == first_batch["batch_id"]
    assert first_batch["intervals"]["80"]["n"] == in_it.sum() > 0
    assert predictions["lower_80"].notna().all()
    state = TrainingState.from_bytes((second / document["files"]["state"]).read_bytes(), "s")
    sketch = state.sketch(0)
    assert sketch is not None and int(sketch.counts.sum()) == counted
