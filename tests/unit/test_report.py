"""The PNG/HTML report of a real (small, in-process) run: files, page content, failures."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from recursive_training.config import TrainingConfig
from recursive_training.exceptions import OutputError
from recursive_training.report import render_report
from recursive_training.results import build_document, metrics_table
from recursive_training.stages import TrainingPipeline

SMALL = "builtin:synthetic?n_variables=3&years=3"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Run = tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]
"""The results document, the per-series metrics table and the predictions of a run."""


def train(output_dir: Path, batch_size_days: int) -> Run:
    """The results document, metrics and predictions of a serial run on small synthetic data."""
    config = TrainingConfig.build(
        input_data=SMALL, batch_size_days=batch_size_days, output_dir=str(output_dir)
    )
    result = TrainingPipeline().execute(config)
    return build_document(result), metrics_table(result).to_pandas(), result.predictions_frame()


def renamed(run: Run, old: str, new: str) -> Run:
    """The same run with variable ``old`` called ``new`` everywhere."""
    document, series, predictions = run
    text = json.dumps(document).replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])
    predictions = predictions.assign(
        variable=predictions["variable"].cat.rename_categories({old: new})
    )
    return json.loads(text), series.replace({"series": {old: new}}), predictions


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A run with several evaluated batches."""
    return train(tmp_path_factory.mktemp("run"), batch_size_days=180)


@pytest.fixture(scope="module")
def pages(run: Run, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The report of ``run``, rendered into a folder that does not exist yet."""
    return render_report(*run, str(tmp_path_factory.mktemp("out") / "nested" / "report"))


def page_text(pages: list[Path]) -> str:
    """The HTML page of a report."""
    return pages[-1].read_text(encoding="utf-8")


def test_report_writes_readable_pngs_and_the_page_last(run: Run, pages: list[Path]) -> None:
    document, _, _ = run
    variables = document["data"]["variables"]
    assert pages[-1].name == "index.html"
    assert {p.name for p in pages[:-1]} == {
        *(f"variable_{i:02d}_{v}.png" for i, v in enumerate(variables, start=1)),
        "skill_heatmap.png",
        "skill_by_batch.png",
        "rule_trust.png",
    }
    for png in pages[:-1]:
        assert png.read_bytes().startswith(PNG_SIGNATURE)
        height, width, _channels = matplotlib.image.imread(png).shape
        assert 300 <= height <= 3000 and 600 <= width <= 3000, (png.name, width, height)
    assert not [p for p in pages[-1].parent.iterdir() if p.name.endswith(".tmp")]


def test_page_is_self_contained_and_embeds_every_png(pages: list[Path]) -> None:
    text = page_text(pages)
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert [base64.b64decode(e) for e in embedded] == [p.read_bytes() for p in pages[:-1]]
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert re.search(r'<link|src="(?!data:)', text) is None


def test_page_names_every_variable_and_rule(run: Run, pages: list[Path]) -> None:
    document, _, _ = run
    text = page_text(pages)
    for variable in document["data"]["variables"]:
        assert f"<td>{variable}</td>" in text
        assert f"<strong>{variable}</strong>" in text
    for rule in {r["rule"] for r in document["rules"]}:
        assert rule in text
    headline = document["metrics"]["headline"]
    assert f"{headline['rules_validated']} of {headline['rules_total']} rules" in text


def test_page_shows_skill_computed_from_the_predictions(run: Run, pages: list[Path]) -> None:
    _, _, predictions = run
    text = page_text(pages)
    for variable, frame in predictions.groupby("variable", observed=True):
        error = np.sum((frame["predicted"] - frame["actual"]) ** 2)
        skill = 1.0 - error / np.sum(frame["actual"] ** 2)
        assert f"<td>{variable}</td><td>{len(frame)}</td>" in text
        assert f">{skill:.4g}</td><td>" in text  # skill, then MASE and sMAPE


def test_variable_names_are_escaped_in_the_page(run: Run, tmp_path: Path) -> None:
    name = r"<b>x&y</b> $\frac$"
    pages = render_report(*renamed(run, run[0]["data"]["variables"][0], name), str(tmp_path))
    text = page_text(pages)
    assert "&lt;b&gt;x&amp;y&lt;/b&gt;" in text
    assert "<b>" not in text
    assert pages[0].name == "variable_01_b-x-y-b-frac.png"


def test_many_rules_show_the_most_and_least_trusted(run: Run, tmp_path: Path) -> None:
    document = copy.deepcopy(run[0])
    extra = [
        {
            "rule": f"cross(r{i}->t)",
            "target": "t",
            "hits": i,
            "misses": 100 - i,
            "trust_mean": (i + 1) / 102,
            "trust_lower": i / 102,
            "trust_upper": (i + 2) / 102,
            "p_value": 0.5,
            "q_value": 0.5,
            "validated": i > 55,
            "interval_above_half": i > 50,
        }
        for i in range(100)
    ]
    document["rules"] = extra
    document["metrics"]["headline"].update(
        rules_validated=44, rules_validated_by_interval=49, rules_total=100, fdr=0.05
    )
    text = page_text(render_report(document, *run[1:], str(tmp_path)))
    assert "44 of 100 rules are validated" in text
    assert "at false discovery rate 0.05" in text and "above 0.5 for 49 rules" in text
    assert "Left out of the chart, in the middle: 60 rules" in text


def test_run_without_evaluated_batches_still_renders(tmp_path: Path) -> None:
    document, series, predictions = train(tmp_path / "run", batch_size_days=5000)
    assert predictions.empty
    pages = render_report(document, series, predictions, str(tmp_path / "report"))
    assert [p.name for p in pages] == ["rule_trust.png", "index.html"]
    text = page_text(pages)
    assert "No batch was evaluated" in text
    assert "n/a" in text


def test_unwritable_folder_raises_output_error_naming_it(run: Run, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=re.escape(str(blocker / "report"))):
        render_report(*run, str(blocker / "report"))


def test_remote_folder_is_refused_before_anything_is_drawn(run: Run) -> None:
    with pytest.raises(OutputError, match="s3://bucket/report"):
        render_report(*run, "s3://bucket/report")
    assert not Path("s3:").exists()


def test_unwritable_page_raises_output_error_and_leaves_no_temporary(
    run: Run, tmp_path: Path
) -> None:
    (tmp_path / "index.html").mkdir()
    with pytest.raises(OutputError, match=re.escape(str(tmp_path / "index.html"))):
        render_report(*run, str(tmp_path))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
