"""The tasks' spec: what the workers read, and what keys their checkpointed results."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recursive_training.config import TrainingConfig
from recursive_training.s3_location import S3Settings
from recursive_training.stages import TrainingPipeline
from recursive_training.stages.tasks import TaskSpec

# A value different from the defaults for every field the tasks' results depend on.
CHANGED: dict[str, Any] = {
    "input_data": "other.csv",
    "input_format": "parquet",
    "lags": 3,
    "horizons": (1, 2),
    "fill_limit": 0,
    "half_life_days": 90.0,
    "rules": ("model",),
    "model": "ar",
    "exog": ("spx",),
    "pooled_scale": "none",
    "scale_window": 20,
    "evaluation_samples": True,
    "shard_series": 7,
}


def test_spec_carries_the_config_values_the_tasks_read() -> None:
    config = TrainingConfig(
        input_data="prices.csv",
        input_format="csv",
        lags=2,
        horizon=4,
        fill_limit=1,
        half_life_days=30,
        rules=("cross",),
        s3_endpoint_url="http://minio:9000",
    )
    spec = TaskSpec.from_config(config)
    assert spec == TaskSpec(
        "prices.csv",
        "csv",
        2,
        (4,),
        1,
        30.0,
        ("cross",),
        "var",
        (),
        "rms",
        52,
        False,
        0,
        S3Settings(),
    )
    assert spec.s3.endpoint_url == "http://minio:9000"


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_every_field_the_results_depend_on_changes_the_fingerprint(name: str) -> None:
    spec = TaskSpec.from_config(TrainingConfig())
    assert dataclasses.replace(spec, **{name: CHANGED[name]}).fingerprint() != spec.fingerprint()


def test_the_fingerprint_covers_every_compared_field_and_ignores_how_s3_is_reached() -> None:
    compared = {f.name for f in dataclasses.fields(TaskSpec) if f.compare}
    assert compared == set(CHANGED), "a new TaskSpec field needs an entry in CHANGED"
    spec = TaskSpec.from_config(TrainingConfig())
    slower = dataclasses.replace(spec, s3=S3Settings(read_timeout=300.0, max_attempts=9))
    assert slower.fingerprint() == spec.fingerprint()


def test_checkpoints_are_reused_only_while_what_the_tasks_read_is_unchanged(
    tmp_path: Path,
) -> None:
    """input_format was once left out of the checkpoint key; now no spec field can be."""
    rng = np.random.default_rng(3)
    index = pd.date_range("2001-01-01", periods=400, freq="D", name="timestamp")
    panel = pd.DataFrame(np.cumsum(rng.standard_normal((400, 2)), axis=0), index, ["a", "b"])
    data = tmp_path / "panel.csv"
    panel.to_csv(data)
    config = TrainingConfig(
        input_data=str(data), batch_size_days=60, checkpoint_dir=str(tmp_path / "checkpoints")
    )
    calls: list[tuple[str, int, int]] = []

    def first_progress(new: TrainingConfig) -> tuple[str, int, int]:
        calls.clear()
        TrainingPipeline(progress=lambda *call: calls.append(call)).execute(new)
        return calls[0]

    total = first_progress(config)[2]
    assert first_progress(config) == ("statistics", total, total), "nothing was restored"
    as_csv = config.model_copy(update={"input_format": "csv"})
    assert first_progress(as_csv) == ("statistics", 0, total), "input_format reused checkpoints"
    slower = config.model_copy(update={"s3_read_timeout": 300.0})
    assert first_progress(slower) == ("statistics", total, total)
