"""Several horizons in one run: each horizon is what a run of that horizon alone gives.

The reference for a horizon is the one-horizon run itself, through the whole CLI: its
predictions, metrics, rules, state and results document are compared with that
horizon's part of the multi-horizon run's files. Data with gaps and forgetting, so the
horizons' samples differ at the batch edges and in which samples are complete.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recursive_training.config import TrainingConfig
from recursive_training.exceptions import ConfigError
from recursive_training.run_training import main
from recursive_training.state import TrainingState
from tests.unit.test_models import make_panel

pytestmark = pytest.mark.unit

HORIZONS = (1, 5, 20)
TOLERANCE = 1e-12


def write_panel(frame: pd.DataFrame) -> str:
    index = pd.bdate_range("2011-01-03", periods=len(frame), name="timestamp")
    path = Path(tempfile.mkdtemp(prefix="pulse-horizons-")) / "panel.parquet"
    frame.set_axis(index).to_parquet(path)
    return str(path)


def run_cli(data: str, horizons: str, *extra: str) -> Path:
    """Run the CLI; return its output folder."""
    out = Path(tempfile.mkdtemp(prefix="pulse-horizons-out-"))
    flag = ["--horizons", horizons] if "," in horizons else ["--horizon", horizons]
    argv = [
        "--input-data", data, *flag, "--lags", "3", "--batch-size-days", "60",
        "--half-life-days", "200", "--fill-limit", "1", "--min-train-samples", "40",
        "--rules", "momentum(4),mean_reversion(6),model", "--output-dir", str(out), *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def files(out: Path) -> dict[str, Any]:
    document = json.loads((out / "results.json").read_text())
    named = {role: out / name for role, name in document["files"].items()}
    return {
        "document": document,
        "predictions": pd.read_parquet(named["predictions"]),
        "metrics": pd.read_parquet(named["metrics"]),
        "rules": pd.read_parquet(named["rules"]),
        "state": TrainingState.from_bytes(named["state"].read_bytes(), "state"),
    }


def assert_close(a: Any, b: Any, where: str) -> None:
    """Numbers within TOLERANCE (relative to the larger magnitude), anything else equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b)), (where, a, b)
    else:
        assert a == b, (where, a, b)


def frame_close(mine: pd.DataFrame, alone: pd.DataFrame) -> None:
    mine, alone = mine.reset_index(drop=True), alone.reset_index(drop=True)
    assert list(mine.columns) == list(alone.columns)
    assert len(mine) == len(alone) > 0
    for column in mine.columns:
        if pd.api.types.is_float_dtype(mine[column]):
            np.testing.assert_allclose(
                mine[column], alone[column], rtol=TOLERANCE, atol=TOLERANCE, err_msg=column
            )
        else:
            assert (mine[column].astype(str) == alone[column].astype(str)).all(), column


UNCHANGED_BY_TIME = ("seconds", "workers")


def strip_times(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in b.items() if k not in UNCHANGED_BY_TIME} for b in batches]


@pytest.mark.parametrize(
    "model, extra",
    [("var", ()), ("ar", ("--exog", "x0")), ("pooled", ("--exog", "x0", "--scale-window", "8"))],
)
def test_each_horizon_equals_its_run_alone(model: str, extra: tuple[str, ...]) -> None:
    """--horizons 1,5,20 equals three one-horizon runs: predictions, metrics, rules,
    state and the results document's sections, to 1e-12."""
    panel = make_panel(seed=3, n_series=4, rows=700, n_exog=1, missing=0.01)
    if model == "var":
        panel = panel.drop(columns="x0")
    data = write_panel(panel)
    options = ("--model", model, *extra)
    together = files(run_cli(data, ",".join(map(str, HORIZONS)), *options))
    document = together["document"]
    assert document["horizons"] == list(HORIZONS)
    assert [b["horizon"] for b in document["by_horizon"]] == list(HORIZONS)
    assert list(together["predictions"]["horizon"].unique()) == list(HORIZONS)
    for index, horizon in enumerate(HORIZONS):
        alone = files(run_cli(data, str(horizon), *options))
        mine_predictions = together["predictions"]
        frame_close(mine_predictions[mine_predictions["horizon"] == horizon], alone["predictions"])
        for table in ("metrics", "rules"):
            mine = together[table]
            frame_close(mine[mine["horizon"] == horizon], alone[table])
        section = document["by_horizon"][index]
        for key in ("metrics", "model", "rule_extremes", "rules"):
            assert_close(section[key], alone["document"][key], f"h{horizon}.{key}")
        assert_close(
            strip_times(section["batches"]), strip_times(alone["document"]["batches"]), "batches"
        )
        mine_state, alone_state = together["state"], alone["state"]
        assert alone_state.horizons == (horizon,)
        for name in ("xtx", "xty", "yty", "n"):
            np.testing.assert_allclose(
                getattr(mine_state.stats[index].moments, name),
                getattr(alone_state.stats[0].moments, name),
                rtol=TOLERANCE,
                atol=TOLERANCE,
            )
        for name in ("model_hits", "model_misses"):
            np.testing.assert_allclose(
                getattr(mine_state, name)[index], getattr(alone_state, name)[0], rtol=TOLERANCE
            )
        np.testing.assert_allclose(
            mine_state.stats[index].rule_hits, alone_state.stats[0].rule_hits, rtol=TOLERANCE
        )


def test_horizon_and_horizons_together_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"--horizon.*--horizons.*both given"):
        TrainingConfig.build(horizon=5, horizons=(1, 5))
    with pytest.raises(ConfigError, match="increasing"):
        TrainingConfig.build(horizons=(5, 1))
    with pytest.raises(ConfigError, match="increasing"):
        TrainingConfig.build(horizons=(1, 1))
    with pytest.raises(ConfigError, match="at least 1"):
        TrainingConfig.build(horizons=(0, 2))
    assert TrainingConfig.build(horizons=("1", "5")).forecast_horizons == (1, 5)
    assert TrainingConfig.build(horizon=3).forecast_horizons == (3,)


def test_resume_with_other_horizons_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """One clear line naming both horizon lists; nothing written."""
    panel = make_panel(seed=4, n_series=2, rows=400, n_exog=0, missing=0.0)
    data = write_panel(panel)
    first = run_cli(data, "1,5", "--end-date", "2012-01-01")
    state = next(first.glob("state-*.npz"))
    out = Path(tempfile.mkdtemp(prefix="pulse-horizons-resume-"))
    capsys.readouterr()
    argv = ["--input-data", data, "--horizons", "1,5,20", "--lags", "3",
            "--batch-size-days", "60", "--half-life-days", "200", "--fill-limit", "1",
            "--min-train-samples", "40", "--rules", "momentum(4),mean_reversion(6),model",
            "--resume-from", str(state), "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "horizons=1,5 but this run has horizons=1,5,20" in error[0]
    assert not any(out.iterdir())
    # the same horizons resume
    assert main([*argv[:3], "1,5", *argv[4:]]) == 0


def test_mase_and_smape_equal_a_numpy_computation_from_the_data() -> None:
    """MASE (scale: persistence MAE over the samples realized before the batch) and sMAPE
    (samples with positive levels) of every series and horizon, recomputed here from the
    raw levels and the predictions file."""
    panel = make_panel(seed=8, n_series=4, rows=600, n_exog=0, missing=0.02)
    panel["s0"] = panel["s0"] - panel["s0"].min() + 1.0  # positive throughout
    panel["s1"] = panel["s1"] - panel["s1"].median()  # crosses zero: sMAPE on part of it
    data = write_panel(panel)
    lags = 3
    out = Path(tempfile.mkdtemp(prefix="pulse-horizons-mase-"))
    argv = ["--input-data", data, "--horizons", "1,5", "--lags", str(lags), "--model", "ar",
            "--batch-size-days", "60", "--fill-limit", "0", "--min-train-samples", "30",
            "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    got = files(out)
    stamps = pd.bdate_range("2011-01-03", periods=len(panel))
    levels = panel.to_numpy()
    batch_start = {b["batch_id"]: pd.Timestamp(b["start"]) for b in got["document"]["batches"]}
    predictions = got["predictions"]
    metrics = got["metrics"].set_index(["horizon", "series"])
    checked = 0
    for h in (1, 5):
        realized = np.arange(lags + h, len(panel))
        for j, name in enumerate(panel.columns):
            change = np.abs(levels[realized, j] - levels[realized - h, j])
            known = np.isfinite(change)
            mine = predictions[(predictions["horizon"] == h) & (predictions["variable"] == name)]
            scaled = []
            for batch_id, rows in mine.groupby("batch_id"):
                before = known & (stamps[realized] < batch_start[int(batch_id)])
                if before.any() and change[before].mean() > 0:
                    error = np.abs(rows["predicted"] - rows["actual"]).to_numpy()
                    scaled.append(error / change[before].mean())
            mase = np.concatenate(scaled).mean() if scaled else np.nan
            origin = levels[stamps.get_indexer(mine["origin"]), j]
            real = levels[stamps.get_indexer(mine["realized"]), j]
            positive = (origin > 0) & (real > 0)
            forecast = origin + mine["predicted"].to_numpy()
            terms = 2 * np.abs(forecast - real) / (np.abs(forecast) + np.abs(real))
            smape = terms[positive].mean() if positive.any() else np.nan
            row = metrics.loc[(h, name)]
            np.testing.assert_allclose(row["mase"], mase, rtol=1e-12)
            if np.isnan(smape):
                assert pd.isna(row["smape"])
            else:
                np.testing.assert_allclose(row["smape"], smape, rtol=1e-12)
                checked += 1
            assert row["n_smape"] == positive.sum()
    assert checked >= 4  # s0 everywhere, s1 partly, at both horizons


def test_report_shows_each_horizon(tmp_path: Path) -> None:
    """A per-horizon table and the by-horizon chart, then one panel per horizon (the first
    open) with that horizon's walk-forward, coverage and penalty charts, each titled with
    its horizon, embedded from the horizon's own folder, captioned with its own numbers."""
    data = write_panel(make_panel(seed=5, n_series=2, rows=400, n_exog=0, missing=0.0))
    report = tmp_path / "report"
    out = run_cli(
        data, "1,5,20", "--intervals", "0.8,0.95", "--ridge-alpha", "auto",
        "--report", str(report),
    )  # fmt: skip
    document = json.loads((out / "results.json").read_text())
    page = (report / "index.html").read_text()
    table = page.split("<h2>Per horizon</h2>")[1].split("</table>")[0]
    assert [row.split("</td>")[0] for row in table.split("<tr><td>")[1:]] == ["1", "5", "20"]
    assert (report / "metrics_by_horizon.png").stat().st_size > 0
    assert "MASE" in page and "sMAPE" in page
    panels = page.split('<details class="horizon" ')[1:]
    assert [p.split(">")[0] for p in panels] == ['id="horizon-1" open', 'id="horizon-5"',
                                                 'id="horizon-20"']  # fmt: skip
    charts: dict[str, set[bytes]] = {}
    for horizon, panel, section in zip((1, 5, 20), panels, document["by_horizon"], strict=True):
        assert f"<summary><h2>Horizon {horizon}</h2>" in panel
        for heading, title, file in (
            ("Walk-forward predictions", "s0", "variable_01_s0.png"),
            ("Prediction intervals", "Coverage against nominal", "interval_coverage.png"),
            ("Ridge penalty chosen walk-forward", "Chosen ridge penalty by batch",
             "penalty_by_batch.png"),
        ):  # fmt: skip
            assert f"<h2>{heading}, horizon {horizon}</h2>" in panel
            png = (report / f"horizon-{horizon}" / file).read_bytes()
            embedded = f'src="data:image/png;base64,{base64.b64encode(png).decode()}" '
            assert f'{embedded}alt="{title}, horizon {horizon}"' in panel
            charts.setdefault(file, set()).add(png)
        coverage = section["metrics"]["intervals"]["levels"]["80"]
        assert f"0.8: {coverage['coverage']:.1%} of {coverage['n']}," in panel
        n = section["metrics"]["overall"]["s0"]["n"]
        assert f"over {n} predictions" in panel.split(f"s0, horizon {horizon}</strong>")[1]
        other = [h for h in (1, 5, 20) if h != horizon]
        assert not any(f"horizon {h}<" in panel or f"horizon {h}\"" in panel for h in other)
    assert all(len(pngs) == 3 for pngs in charts.values()), "each horizon draws its own"


def test_horizons_from_a_yaml_file(tmp_path: Path) -> None:
    """The YAML form is a list; flags still override it."""
    from recursive_training.run_training import create_config_from_args, parse_args

    settings = tmp_path / "run.yaml"
    settings.write_text("horizons: [1, 5, 20]\nlags: 3\n")
    config = create_config_from_args(parse_args(["--config", str(settings)]))
    assert config.forecast_horizons == (1, 5, 20)
    flags = create_config_from_args(parse_args(["--config", str(settings), "--horizons", "2,4"]))
    assert flags.forecast_horizons == (2, 4)
    with pytest.raises(ConfigError, match="both given"):
        create_config_from_args(parse_args(["--config", str(settings), "--horizon", "2"]))
