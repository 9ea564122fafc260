"""The CLI's --progress-file channel: JSON lines a program (the Kubernetes driver) can follow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recursive_training.exceptions import ConfigError
from recursive_training.progress import ProgressFile


def test_progress_and_results_are_whole_json_lines(tmp_path: Path) -> None:
    """One flushed line per update, then one results line."""
    path = tmp_path / "progress.jsonl"
    reporter = ProgressFile(str(path))
    reporter("statistics", 1, 2)
    assert json.loads(path.read_text()) == {
        "event": "progress",
        "stage": "statistics",
        "done": 1,
        "total": 2,
    }
    reporter.results("out/results.json", {"rules_total": 3})
    reporter.close()
    last = json.loads(path.read_text().splitlines()[-1])
    assert last == {"event": "results", "uri": "out/results.json", "headline": {"rules_total": 3}}


def test_an_unwritable_progress_file_is_a_config_error(tmp_path: Path) -> None:
    """The CLI reports it in one line (exit 1) instead of a traceback."""
    with pytest.raises(ConfigError, match="cannot write --progress-file"):
        ProgressFile(str(tmp_path / "missing" / "progress.jsonl"))
