"""Parallel equals serial: the same run on local Dask clusters of 1 and 2 worker processes
gives the serial engine's model, rule counts and metrics to 1e-9 relative, and the same
predictions and prediction intervals."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recursive_training.config import TrainingConfig
from recursive_training.engines import DaskEngine
from recursive_training.stages import TrainingPipeline, TrainingResult
from recursive_training.stages.training_stages import prepare
from tests.unit.test_models import make_panel
from tests.unit.test_models_pipeline import assert_same_run, split_tasks, write_panel
from tests.unit.test_properties import panels, structure, structures, write

pytestmark = [
    pytest.mark.timeout(900),
    # The in-process Dask scheduler draws from the global `random` in its own thread while
    # hypothesis generates data; our strategies never use `random`, so the examples stay
    # reproducible and the warning does not apply.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[int, DaskEngine]]:
    """Local Dask clusters with 1 and 2 single-threaded worker processes."""
    engines = {n: DaskEngine.local(n) for n in (1, 2)}
    yield engines
    for engine in engines.values():
        engine.close()


def assert_same(parallel: TrainingResult, serial: TrainingResult) -> None:
    """Every learned and measured number agrees to 1e-9 relative."""
    np.testing.assert_allclose(parallel.coefficients, serial.coefficients, rtol=1e-9, atol=1e-12)
    for a, b in zip(parallel.rule_table, serial.rule_table, strict=True):
        assert a[:2] == b[:2]
        np.testing.assert_allclose(a[2:], b[2:], rtol=1e-9)
    mine, theirs = parallel.errors.table(parallel.variables), serial.errors.table(serial.variables)
    for name, metrics in theirs.items():
        for key, value in metrics.items():
            assert mine[name][key] == (value if value is None else pytest.approx(value, rel=1e-9))
    assert parallel.predictions_frame().equals(serial.predictions_frame())


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    panel=panels,
    size=st.integers(3, 200),
    workers=st.sampled_from([1, 2]),
    half_life=st.sampled_from([None, 60.0]),
    model=structures,
)
def test_dask_engine_equals_serial_engine(
    clusters: dict[int, DaskEngine],
    panel: pd.DataFrame,
    size: int,
    workers: int,
    half_life: float | None,
    model: str,
) -> None:
    config = TrainingConfig.build(
        **structure(model, panel),
        input_data=write(panel),
        batch_size_days=size,
        lags=2,
        half_life_days=half_life,
        rules=["momentum(3)", "mean_reversion(5)", "cross", "model"],
        min_train_samples=10,
        intervals=[0.8, 0.95],
    )
    serial = TrainingPipeline().execute(config)
    parallel = TrainingPipeline(engine=clusters[workers]).execute(config)
    assert_same(parallel, serial)


@pytest.mark.parametrize("model", ["ar", "pooled"])
def test_batch_by_shard_tasks_on_dask_equal_one_serial_task_per_batch(
    clusters: dict[int, DaskEngine], monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    """(batch x 3-series shard) tasks spread over 2 worker processes give the serial run of
    one task per batch, prediction intervals included."""
    path = write_panel(make_panel(seed=31, n_series=10, rows=240, n_exog=1, missing=0.03))
    config = TrainingConfig.build(
        input_data=path,
        model=model,
        exog=["x0"],
        lags=3,
        batch_size_days=40,
        half_life_days=90.0,
        rules=["momentum(3)", "mean_reversion(5)", "model"],
        min_train_samples=10,
        intervals=[0.8, 0.95],
    )
    serial = TrainingPipeline().execute(config)
    assert serial.predictions_frame()["lower_95"].notna().sum() > 500
    split_tasks(monkeypatch, 3)
    assert len(prepare(config, None).shards) == 4
    assert_same_run(TrainingPipeline(engine=clusters[2]).execute(config), serial)
