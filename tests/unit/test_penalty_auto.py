"""``--ridge-alpha auto``: every grid value's walk-forward errors are those of a fixed run
with that value, and the chosen penalties are those of a brute-force choice written here
(one numpy least-squares refit per grid value, batch and series, errors counted once
their samples are realized)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recursive_training.config import TrainingConfig
from recursive_training.data import open_source
from recursive_training.penalty import PenaltyPath, TridiagonalReduction, ridge_path
from recursive_training.run_training import main
from recursive_training.stages import TrainingPipeline, TrainingResult
from recursive_training.state import TrainingState
from recursive_training.statistics import Moments, solve_ridge
from tests.reference import design_frame, ridge_lstsq
from tests.unit.test_intervals import version_2_file
from tests.unit.test_models import WINDOW, make_panel, rms_scale
from tests.unit.test_models_pipeline import split_tasks, write_panel

SMALL = "builtin:synthetic?n_variables=3&years=5&seed=5"
# 30 variables x 5 lags: 150 standardized features, a VAR path by tridiagonal reduction.
WIDE = "builtin:synthetic?n_variables=30&years=5&seed=5"
GRID = (0.003, 0.1, 3.0, 100.0)
MIN_SAMPLES = 60
LAGS, HORIZON = 2, 3
SETTINGS: dict[str, object] = {
    "input_data": SMALL,
    "batch_size_days": 90,
    "lags": LAGS,
    "horizon": HORIZON,
    "min_train_samples": MIN_SAMPLES,
    "rules": ["model"],
    "scale_window": WINDOW,
}


def train(**fields: object) -> TrainingResult:
    return TrainingPipeline().execute(TrainingConfig.build(**{**SETTINGS, **fields}))


def auto_run(
    monkeypatch: pytest.MonkeyPatch, **fields: object
) -> tuple[TrainingResult, dict[int, np.ndarray]]:
    """An auto run, and each batch's squared errors per grid value and target as the scan
    computed them (all parts of the batch added up)."""
    errors: dict[int, np.ndarray] = {}
    add = PenaltyPath.add

    def recording(self: PenaltyPath, batch_id: int, part: np.ndarray, *rest: object) -> None:
        errors[batch_id] = errors.get(batch_id, 0.0) + np.nan_to_num(part)
        add(self, batch_id, part, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(PenaltyPath, "add", recording)
    result = train(ridge_alpha="auto", alpha_grid=GRID, **fields)
    monkeypatch.undo()
    return result, errors


def levels_of(result: TrainingResult) -> pd.DataFrame:
    return open_source(result.config.input_data).load(
        result.variables, pd.Timestamp.min, pd.Timestamp.max
    )


def scaled_errors(run: TrainingResult, batch_id: int, levels: pd.DataFrame) -> float:
    """A pooled rms run's squared errors in scaled units: each divided by its series'
    RMS change over the WINDOW changes up to the origin (pandas rolling, not the code's)."""
    frame = run.predictions_frame()
    mine = frame[frame["batch_id"] == batch_id]
    total = 0.0
    for name, group in mine.groupby("variable", observed=True):
        scale = rms_scale(levels[str(name)]).loc[group["origin"]].to_numpy()
        total += float((((group["predicted"] - group["actual"]).to_numpy() / scale) ** 2).sum())
    return total


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "var"},
        {"model": "ar"},
        {"model": "pooled", "pooled_scale": "none"},
        {"model": "pooled", "pooled_scale": "rms"},
        {"model": "var", "half_life_days": 200.0},
        {"model": "var", "input_data": WIDE, "lags": 5, "half_life_days": 200.0},
    ],
    ids=["var", "ar", "pooled-none", "pooled-rms", "var-forgetting", "var-tridiagonal"],
)
def test_each_grid_values_errors_equal_a_fixed_run_with_that_value(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, object]
) -> None:
    auto, errors = auto_run(monkeypatch, **fields)
    levels = levels_of(auto)
    assert len(errors) >= 8
    for position, alpha in enumerate(GRID):
        fixed = train(ridge_alpha=alpha, **fields)
        assert sorted(fixed.evaluations) == sorted(errors)
        for batch_id, evaluation in fixed.evaluations.items():
            got = errors[batch_id][position]
            if fields["model"] != "pooled":
                expected = evaluation.errors.sq_error
            elif fields["pooled_scale"] == "none":
                expected = np.array([evaluation.errors.sq_error.sum()])
            else:
                expected = np.array([scaled_errors(fixed, batch_id, levels)])
            np.testing.assert_allclose(got, expected, rtol=1e-10)


def brute_force_choices(
    result: TrainingResult, designs: list[tuple[pd.DataFrame, pd.DataFrame, pd.Series]]
) -> dict[int, np.ndarray]:
    """The penalty of each evaluated batch and target: per grid value, refit on the samples
    realized before each batch (numpy lstsq), predict the batch's origins, and choose the
    value of least squared error over the predictions realized before the batch starts
    (ties: the larger value; none yet: the grid value nearest 0.01 in log)."""
    fallback = GRID[int(np.argmin([abs(np.log10(a) + 2) for a in GRID]))]
    choices: dict[int, list[float]] = {}
    for features, targets, realized in designs:
        errors = []  # per grid value: (squared error, realization time) of every prediction
        for alpha in GRID:
            made = []
            for batch in result.batches:
                known = (realized >= result.start) & (realized < batch.start)
                if known.sum() < MIN_SAMPLES:
                    continue
                coefficients = ridge_lstsq(features[known], targets[known], alpha)
                origins = (
                    (features.index >= batch.start)
                    & (features.index < batch.end)
                    & (realized < result.end).to_numpy()
                )
                error = features[origins].to_numpy() @ coefficients - targets[origins].to_numpy()
                made.append(pd.DataFrame({"sq": (error**2)[:, 0], "at": realized[origins]}))
            errors.append(pd.concat(made))
        for batch in result.batches:
            if batch.batch_id not in result.penalties.chosen:  # type: ignore[union-attr]
                continue
            known_errors = [e["sq"][e["at"] < batch.start].sum() for e in errors]
            seen = (errors[0]["at"] < batch.start).any()
            best = len(GRID) - 1 - int(np.argmin(known_errors[::-1]))
            choices.setdefault(batch.batch_id, []).append(GRID[best] if seen else fallback)
    return {k: np.array(v) for k, v in choices.items()}


@pytest.mark.parametrize("model", ["var", "ar"])
def test_chosen_penalties_equal_a_brute_force_choice(model: str) -> None:
    result = train(model=model, ridge_alpha="auto", alpha_grid=GRID)
    levels = levels_of(result)
    features, targets, realized = design_frame(levels, LAGS, HORIZON)
    if model == "var":
        designs = [(features, targets[[name]], realized) for name in result.variables]
    else:
        designs = [design_frame(levels[[name]], LAGS, HORIZON) for name in result.variables]
    expected = brute_force_choices(result, designs)
    assert result.penalties is not None
    chosen = result.penalties.chosen
    assert sorted(chosen) == sorted(expected)
    for batch_id, alphas in chosen.items():
        np.testing.assert_array_equal(alphas, expected[batch_id], err_msg=f"batch {batch_id}")
    path = np.array([chosen[k] for k in sorted(chosen)])
    assert len(np.unique(path)) >= 2, "the data should make the choice move"


def test_a_one_value_grid_predicts_as_a_fixed_run() -> None:
    auto = train(model="ar", ridge_alpha="auto", alpha_grid=[0.2])
    fixed = train(model="ar", ridge_alpha=0.2)
    a, f = auto.predictions_frame(), fixed.predictions_frame()
    np.testing.assert_allclose(a["predicted"], f["predicted"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(auto.coefficients, fixed.coefficients, rtol=1e-10, atol=1e-12)


def test_shard_tasks_give_the_choices_of_one_task_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Evaluation moments of (batch x series shard) tasks merge into the batch's."""
    path = write_panel(make_panel(seed=31, n_series=9, rows=400, n_exog=1, missing=0.02))
    fields = {"input_data": path, "model": "ar", "exog": ["x0"], "fill_limit": 0}
    whole = train(ridge_alpha="auto", alpha_grid=GRID, **fields)
    split_tasks(monkeypatch, 4)
    split = train(ridge_alpha="auto", alpha_grid=GRID, **fields)
    assert whole.penalties is not None and split.penalties is not None
    assert sorted(whole.penalties.chosen) == sorted(split.penalties.chosen)
    for batch_id, alphas in whole.penalties.chosen.items():
        np.testing.assert_array_equal(split.penalties.chosen[batch_id], alphas)
    np.testing.assert_allclose(split.coefficients, whole.coefficients, rtol=1e-9, atol=1e-12)


def test_ridge_path_equals_lstsq_per_alpha_on_ill_scaled_features() -> None:
    """Features six orders of magnitude apart, off-centre: every alpha's coefficients are
    the augmented least-squares solution's (as accurate as the fixed solve, which is
    about 3e-9 away from it here: the moments of this design lose that many digits)."""
    rng = np.random.default_rng(8)
    x = np.c_[np.ones(150), rng.standard_normal((150, 6)) * [1e-3, 1, 1e3, 1, 5, 1] + 2]
    y = x @ rng.standard_normal((7, 2)) + rng.standard_normal((150, 2))
    weights = rng.uniform(0.2, 1.0, 150)
    moments = Moments.from_samples(x, y, weights)
    ready = np.array([True])
    path = ridge_path(moments.xtx[None], moments.xty[None], (0.0, *GRID), ready).coefficients()
    for position, alpha in enumerate((0.0, *GRID)):
        expected = ridge_lstsq(pd.DataFrame(x), pd.DataFrame(y), alpha, weights)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(path[position, 0], expected, rtol=0, atol=1e-8 * scale)
        fixed = solve_ridge(moments.xtx, moments.xty, alpha)
        np.testing.assert_allclose(path[position, 0], fixed, rtol=0, atol=1e-8 * scale)


def test_a_wide_system_by_tridiagonal_reduction_gives_each_alphas_solution() -> None:
    """160 features four orders of magnitude apart, off-centre: every alpha's coefficients
    are the augmented least-squares solution's, as accurate as the fixed solve (both about
    1e-9 away from it here: the moments of this design lose that many digits), and its
    errors on sample rows those of predicting them with these coefficients. With 0 in the
    grid the eigendecomposition route (a pseudo-inverse) is taken instead."""
    rng = np.random.default_rng(9)
    spread = rng.choice([0.01, 1, 100], 160)
    x = np.c_[np.ones(600), rng.standard_normal((600, 160)) * spread + 2]
    y = x @ rng.standard_normal((161, 3)) + rng.standard_normal((600, 3))
    weights = rng.uniform(0.2, 1.0, 600)
    moments = Moments.from_samples(x, y, weights)
    rows, realized = x[:50] + rng.standard_normal((50, 161)) * 0.1, y[:50]
    rows[:, 0] = 1.0
    ready = np.array([True])
    for grid in (GRID, (0.0, *GRID)):
        path = ridge_path(moments.xtx[None], moments.xty[None], grid, ready)
        tridiagonal = grid[0] > 0
        assert isinstance(path.factorization, TridiagonalReduction) == tridiagonal
        (errors,) = path.row_errors([(rows, realized)])
        for position, alpha in enumerate(grid):
            expected = ridge_lstsq(pd.DataFrame(x), pd.DataFrame(y), alpha, weights)
            scale = np.abs(expected).max()
            coefficients = path.coefficients()[position, 0]
            np.testing.assert_allclose(coefficients, expected, rtol=0, atol=1e-8 * scale)
            fixed = solve_ridge(moments.xtx, moments.xty, alpha)
            np.testing.assert_allclose(coefficients, fixed, rtol=0, atol=1e-8 * scale)
            predicted = ((rows @ coefficients - realized) ** 2).sum(axis=0)
            np.testing.assert_allclose(errors[position], predicted, rtol=1e-10)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--ridge-alpha", "lots"], "ridge_alpha (--ridge-alpha): must be a number or auto"),
        (["--ridge-alpha", "-1"], "must be at least 0 (or auto)"),
        (["--alpha-grid", "0.1,x"], "alpha_grid (--alpha-grid): penalties must be numbers"),
    ],
)
def test_bad_penalties_are_one_error_line_and_exit_1(
    flags: list[str], message: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """(tests/integration/test_cli.py runs the CLI as a process for the stderr itself.)"""
    code = main(["--input-data", SMALL, "--output-dir", str(tmp_path / "out"), *flags])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 1
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_run_restored_from_checkpoints_chooses_the_same_penalties(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The evaluation moments (and when they are realized) survive a checkpoint."""
    fields = {"ridge_alpha": "auto", "alpha_grid": GRID, "checkpoint_dir": str(tmp_path)}
    first = train(**fields)
    saved = len(list((tmp_path / "statistics").glob("*.npz")))
    caplog.clear()
    with caplog.at_level("INFO"):
        again = train(**fields)
    messages = [r.getMessage() for r in caplog.records]
    assert f"Stage statistics: {saved} of {saved} tasks restored" in " ".join(messages)
    assert not any("Ignoring unreadable checkpoint" in m for m in messages)
    assert first.penalties is not None and again.penalties is not None
    assert sorted(first.penalties.chosen) == sorted(again.penalties.chosen)
    for batch_id, alphas in first.penalties.chosen.items():
        np.testing.assert_array_equal(again.penalties.chosen[batch_id], alphas)


def test_an_auto_run_writes_its_penalties_table_document_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "out"
    flags = ["--input-data", SMALL, "--batch-size-days", "90", "--lags", str(LAGS)]
    flags += ["--horizon", str(HORIZON), "--min-train-samples", str(MIN_SAMPLES)]
    flags += ["--ridge-alpha", "auto", "--alpha-grid", ",".join(map(str, GRID))]
    assert main([*flags, "--output-dir", str(out), "--report", str(tmp_path / "report")]) == 0
    document = json.loads((out / "results.json").read_text())
    table = pd.read_parquet(out / document["files"]["penalties"])
    again = train(ridge_alpha="auto", alpha_grid=GRID)  # the same run, in-process
    assert again.penalties is not None
    expected = [
        (batch_id, name, alpha)
        for batch_id, alphas in sorted(again.penalties.chosen.items())
        for name, alpha in zip(again.variables, alphas, strict=True)
    ]
    got = list(
        zip(table["batch_id"], table["target"].astype(str), table["ridge_alpha"], strict=True)
    )
    assert got == expected
    assert list(table.columns) == ["batch_id", "batch_start", "horizon", "target", "ridge_alpha"]
    assert (table["horizon"] == HORIZON).all()
    section = document["model"]["penalty"]
    assert section["grid"] == list(GRID) and section["fallback"] == 0.003
    assert sum(section["times_chosen"].values()) == len(table)
    for record in document["batches"]:
        by_target = record["ridge_alpha"].get("by_target")
        mine = table[table["batch_id"] == record["batch_id"]]
        assert record["evaluated"] == (len(mine) > 0)
        if len(mine):
            assert by_target == dict(
                zip(mine["target"].astype(str), mine["ridge_alpha"], strict=True)
            )
    assert (tmp_path / "report" / "penalty_by_batch.png").stat().st_size > 10_000
    assert "Chosen ridge penalty by batch" in (tmp_path / "report" / "index.html").read_text()


def test_a_fixed_run_writes_no_penalties(tmp_path: Path) -> None:
    assert main(["--input-data", SMALL, "--output-dir", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "results.json").read_text())
    assert "penalties" not in document["files"] and "penalty" not in document["model"]
    assert not list(tmp_path.glob("penalties-*"))


def test_ties_choose_the_larger_penalty_and_no_error_the_fallback() -> None:
    path = PenaltyPath((0.001, 0.01, 1.0), ("a", "b", "c"))
    errors = np.array([[2.0, 1.0, np.nan], [1.0, 1.0, np.nan], [1.0, 3.0, np.nan]])
    path.add(0, errors, pd.Timestamp("2020-01-10"))
    assert path.choice().tolist() == [1, 1, 1], "nothing is known before the 10th"
    path.release(pd.Timestamp("2020-01-11"))
    assert path.choice().tolist() == [2, 1, 1]


def test_each_horizon_chooses_as_a_run_of_it_alone() -> None:
    """Per target and horizon: a horizon's penalties are those of a one-horizon run."""
    settings = {k: v for k, v in SETTINGS.items() if k != "horizon"}
    config = TrainingConfig.build(
        **settings, ridge_alpha="auto", alpha_grid=GRID, horizons=[1, HORIZON], model="ar"
    )
    both = TrainingPipeline().execute(config)
    assert len(both.by_horizon) == 2
    for result in both.by_horizon:
        alone = train(
            ridge_alpha="auto", alpha_grid=GRID, horizon=result.structure.horizon, model="ar"
        )
        assert result.penalties is not None and alone.penalties is not None
        assert sorted(result.penalties.chosen) == sorted(alone.penalties.chosen)
        for batch_id, alphas in alone.penalties.chosen.items():
            np.testing.assert_array_equal(result.penalties.chosen[batch_id], alphas)


def test_a_resumed_auto_run_continues_the_choice_and_a_state_without_errors_restarts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The state carries each grid value's walk-forward errors: a resumed auto run's first
    batch chooses on the first run's errors (as the first run's final choice did). A state
    of a fixed-penalty run, of another grid, or of version 2 carries none for this grid:
    the choice starts at the fallback, with a warning."""
    start = pd.Timestamp("2003-01-01")
    auto = {"ridge_alpha": "auto", "alpha_grid": GRID}
    first = train(end_date=start, **auto)
    assert first.penalties is not None
    final = np.asarray(GRID)[first.penalties.final_choice()]
    assert (final != GRID[0]).any(), "the first run moved off the fallback"

    def resume(data: bytes) -> TrainingResult:
        state = TrainingState.from_bytes(data, "state.npz")
        config = TrainingConfig.build(**{**SETTINGS, **auto, "resume_from": "state.npz"})
        caplog.clear()
        return TrainingPipeline().execute(config, state)

    continued = resume(first.state.to_bytes())
    assert continued.penalties is not None and "penalty choice starts afresh" not in caplog.text
    chosen = continued.penalties.chosen
    np.testing.assert_array_equal(chosen[min(chosen)], final)
    for data in (
        train(end_date=start).state.to_bytes(),
        train(end_date=start, ridge_alpha="auto").state.to_bytes(),  # the default grid
        version_2_file(first.state.to_bytes()),
    ):
        afresh = resume(data)
        assert "penalty choice starts afresh" in caplog.text
        assert afresh.penalties is not None
        np.testing.assert_array_equal(
            afresh.penalties.chosen[min(afresh.penalties.chosen)], GRID[0]
        )
