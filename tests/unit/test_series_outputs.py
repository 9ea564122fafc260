"""Outputs at any number of series: metrics.parquet, the summary in results.json, the
terminal summary and the report, checked against pandas/numpy computations of their own.

Runs are small and real (serial pipeline, files written by write_outputs); the "many
series" shape is reached by lowering SERIES_DETAIL_LIMIT, which is the only switch
between the two shapes of the document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recursive_training import results
from recursive_training.config import TrainingConfig
from recursive_training.constants import SERIES_DETAIL_LIMIT
from recursive_training.progress import ProgressFile
from recursive_training.report import render_report
from recursive_training.series_metrics import EXTREME_SERIES, QUANTILES
from recursive_training.stages import TrainingPipeline
from trainingrun_operator.driver import status_patch

TWELVE = "builtin:synthetic?n_variables=12&years=3&seed=11"


def write_run(output_dir: Path, input_data: str = TWELVE, **settings: Any) -> dict[str, Any]:
    """Train serially on ``input_data`` and write every output file into ``output_dir``."""
    config = TrainingConfig.build(
        input_data=input_data, batch_size_days=180, lags=2, output_dir=str(output_dir), **settings
    )
    result = TrainingPipeline().execute(config)
    document = results.build_document(result)
    results.write_outputs(result, config, document)
    return document


def pandas_metrics(predictions: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Walk-forward metrics per group, straight from the predictions."""
    error = predictions["predicted"] - predictions["actual"]
    agree = np.sign(predictions["predicted"]) * np.sign(predictions["actual"])
    frame = predictions.assign(
        abs_error=error.abs(),
        sq_error=error**2,
        sq_actual=predictions["actual"] ** 2,
        hit=(agree > 0).astype(int),
        miss=(agree < 0).astype(int),
    )
    sums = frame.groupby(by, observed=True)[
        ["abs_error", "sq_error", "sq_actual", "hit", "miss"]
    ].agg(["sum", "count"])
    n = sums[("abs_error", "count")]
    return pd.DataFrame(
        {
            "n": n,
            "mae": sums[("abs_error", "sum")] / n,
            "rmse": np.sqrt(sums[("sq_error", "sum")] / n),
            "directional_accuracy": sums[("hit", "sum")]
            / (sums[("hit", "sum")] + sums[("miss", "sum")]),
            "skill_vs_persistence": 1 - sums[("sq_error", "sum")] / sums[("sq_actual", "sum")],
            "rms_change": np.sqrt(sums[("sq_actual", "sum")] / n),
            "hits": sums[("hit", "sum")],
            "misses": sums[("miss", "sum")],
            "sse": sums[("sq_error", "sum")],
            "sse_persistence": sums[("sq_actual", "sum")],
        }
    )


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a 12-series run."""
    folder = tmp_path_factory.mktemp("twelve")
    write_run(folder)
    return folder


def read(folder: Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """results.json and the metrics and predictions files it names."""
    document = json.loads((folder / "results.json").read_text())
    return (
        document,
        pd.read_parquet(folder / document["files"]["metrics"]),
        pd.read_parquet(folder / document["files"]["predictions"]),
    )


def table(folder: Path, role: str) -> Path:
    """The file of ``role`` (metrics, rules, predictions) that a run's results.json names."""
    return folder / json.loads((folder / "results.json").read_text())["files"][role]


def test_metrics_parquet_equals_pandas_on_the_predictions(outputs: Path) -> None:
    document, metrics, predictions = read(outputs)
    expected = pandas_metrics(predictions.astype({"variable": str}), ["variable"])
    assert metrics["series"].tolist() == document["data"]["variables"]
    got = metrics.set_index("series").loc[expected.index, expected.columns]
    pd.testing.assert_frame_equal(
        got, expected, check_dtype=False, check_names=False, check_index_type=False, rtol=1e-12
    )
    assert (metrics["dropped_missing"] == 0).all()
    metadata = pq.read_schema(table(outputs, "metrics")).metadata
    assert metadata[b"pulse.dev/run-id"].decode() == document["run_id"]
    assert document["files"]["metrics"] == f"metrics-{document['run_id']}.parquet"


def test_summary_quantiles_mean_share_and_extremes_equal_numpys(outputs: Path) -> None:
    document, metrics, _ = read(outputs)
    across = document["metrics"]["across_series"]
    skill = metrics["skill_vs_persistence"].to_numpy()
    want = np.quantile(skill, list(QUANTILES.values()))
    assert [across["skill_vs_persistence"][name] for name in QUANTILES] == want.tolist()
    assert across["skill_vs_persistence"]["mean"] == pytest.approx(skill.mean(), rel=1e-15)
    assert across["skill_vs_persistence"]["share_positive"] == (skill > 0).sum() / len(skill)
    accuracy = metrics["directional_accuracy"].to_numpy()
    assert [across["directional_accuracy"][name] for name in QUANTILES] == (
        np.quantile(accuracy, list(QUANTILES.values())).tolist()
    )
    ranked = metrics.sort_values("skill_vs_persistence", ascending=False)["series"].tolist()
    assert [m["series"] for m in across["best"]] == ranked[:EXTREME_SERIES]
    assert [m["series"] for m in across["worst"]] == ranked[::-1][:EXTREME_SERIES]
    headline = document["metrics"]["headline"]
    assert headline["median_skill_vs_persistence"] == float(np.median(skill))
    assert headline["series"] == len(metrics) == across["count"] == across["evaluated"]


def test_skill_across_series_per_batch_equals_pandas(outputs: Path) -> None:
    document, _, predictions = read(outputs)
    skill = pandas_metrics(predictions, ["batch_id", "variable"])["skill_vs_persistence"]
    evaluated = [b for b in document["batches"] if b["evaluated"]]
    assert len(evaluated) >= 3
    for batch in evaluated:
        want = np.quantile(skill.loc[batch["batch_id"]].to_numpy(), [0.25, 0.5, 0.75])
        spread = batch["skill_across_series"]
        assert [spread["p25"], spread["p50"], spread["p75"]] == pytest.approx(want, rel=1e-12)
        assert spread["count"] == 12


def test_dropped_missing_counts_the_samples_each_series_lost(tmp_path: Path) -> None:
    """The same panel with holes: each series loses exactly the samples the file counts."""
    index = pd.bdate_range("2015-01-01", periods=700)
    rng = np.random.default_rng(3)
    panel = pd.DataFrame(
        np.cumsum(rng.standard_normal((700, 3)), axis=0), index=index, columns=["a", "b", "c"]
    ).rename_axis("date")
    panel.to_csv(tmp_path / "clean.csv")
    holes = panel.copy()
    holes.iloc[rng.choice(np.arange(300, 690), size=12, replace=False), 1] = np.nan
    holes.to_csv(tmp_path / "holes.csv")
    write_run(tmp_path / "clean", str(tmp_path / "clean.csv"), fill_limit=0)
    write_run(tmp_path / "holes", str(tmp_path / "holes.csv"), fill_limit=0)
    clean = pd.read_parquet(table(tmp_path / "clean", "metrics")).set_index("series")
    gappy = pd.read_parquet(table(tmp_path / "holes", "metrics")).set_index("series")
    assert (gappy["dropped_missing"] > 0).all()
    assert (gappy["n"] + gappy["dropped_missing"] == clean["n"]).all()


@pytest.fixture
def many_series(monkeypatch: pytest.MonkeyPatch) -> int:
    """Treat runs of more than 4 series as 'many' (the shape of 100,000 series)."""
    monkeypatch.setattr(results, "SERIES_DETAIL_LIMIT", 4)
    return 4


def test_many_series_keep_only_the_summary_in_results_json(
    many_series: int, tmp_path: Path
) -> None:
    document = write_run(tmp_path)
    assert SERIES_DETAIL_LIMIT >= 100, "the documented limit keeps today's detail for VAR runs"
    assert document["series_detail"] == {"listed": False, "limit": many_series}
    assert "overall" not in document["metrics"] and "rules" not in document
    assert "coefficients" not in document["model"] and "variables" not in document["data"]
    assert document["data"]["series"] == 12
    assert all("metrics" not in b for b in document["batches"])
    assert len(document["metrics"]["across_series"]["best"]) == EXTREME_SERIES
    rules = pd.read_parquet(table(tmp_path, "rules"))
    assert len(rules) == document["metrics"]["headline"]["rules_total"] == 3 * 12
    most = rules.sort_values("trust_mean", ascending=False, kind="stable").head(20)
    assert [r["target"] for r in document["rule_extremes"]["most_trusted"]] == most[
        "target"
    ].tolist()
    assert json.loads((tmp_path / "results.json").read_text()) == document


def test_terminal_summary_stays_short_at_many_series(many_series: int, tmp_path: Path) -> None:
    text = results.summary(write_run(tmp_path))
    lines = text.splitlines()
    assert len(lines) <= 5 + results.SUMMARY_ROWS + 1
    assert max(map(len, lines)) <= 160
    assert "metrics.parquet" in text and "of series above 0" in text


def test_status_headline_has_the_same_fields_at_any_size(many_series: int, tmp_path: Path) -> None:
    small = write_run(tmp_path / "small", "builtin:synthetic?n_variables=3&years=3")
    large = write_run(tmp_path / "large")
    assert small["metrics"]["headline"].keys() == large["metrics"]["headline"].keys()
    reporter = ProgressFile(str(tmp_path / "progress"))
    reporter.results("r", large["metrics"]["headline"])
    reporter.close()
    record = json.loads((tmp_path / "progress").read_text())
    assert len(json.dumps(record)) < 400
    fields = status_patch(record)
    assert fields is not None
    assert fields["results"]["meanSkillVsPersistence"] == pytest.approx(
        large["metrics"]["across_series"]["skill_vs_persistence"]["mean"]
    )


def test_report_of_many_series_draws_distributions_and_the_extremes_only(
    many_series: int, tmp_path: Path
) -> None:
    """Reading the predictions file itself; 12 and 24 series give the same charts."""
    counts = []
    for n in (12, 24):
        folder = tmp_path / str(n)
        document = write_run(folder, f"builtin:synthetic?n_variables={n}&years=3&seed=11")
        metrics = pd.read_parquet(table(folder, "metrics"))
        pages = render_report(
            document, metrics, table(folder, "predictions"), str(folder / "report")
        )
        names = [p.name for p in pages]
        best = [m["series"] for m in document["metrics"]["across_series"]["best"][:3]]
        worst = [m["series"] for m in document["metrics"]["across_series"]["worst"][:3]]
        charted = [name for name in names if name.startswith("variable_")]
        assert [name.split("_", 2)[2][:-4] for name in charted] == [*best, *worst[::-1]]
        assert {"skill_histogram.png", "skill_vs_scale.png", "skill_by_batch.png"} <= set(names)
        assert "skill_heatmap.png" not in names
        text = pages[-1].read_text()
        across = document["metrics"]["across_series"]
        tabled = {m["series"] for m in [*across["best"], *across["worst"]]}
        assert {v for v in metrics["series"] if f"<td>{v}</td>" in text} == tabled
        assert "metrics.parquet" in text and "rules.parquet" in text
        counts.append(len(pages))
    assert counts[0] == counts[1] == 11


@pytest.mark.parametrize("model", ["ar", "pooled"])
def test_every_model_structure_writes_the_same_tables(
    model: str, many_series: int, tmp_path: Path
) -> None:
    """Per-series metrics and their summary come from the error sums whatever the structure;
    a pooled model's one row of coefficients stays in the document at any size."""
    document = write_run(tmp_path, model=model)
    _, metrics, predictions = read(tmp_path)
    expected = pandas_metrics(predictions.astype({"variable": str}), ["variable"])
    got = metrics.set_index("series").loc[expected.index, expected.columns]
    pd.testing.assert_frame_equal(
        got, expected, check_dtype=False, check_names=False, check_index_type=False, rtol=1e-12
    )
    skill = metrics["skill_vs_persistence"].to_numpy()
    assert document["metrics"]["across_series"]["skill_vs_persistence"]["p50"] == float(
        np.median(skill)
    )
    assert document["data"]["samples_evaluated"] == metrics["n"].sum()
    assert ("coefficients" in document["model"]) == (model == "pooled")
