"""The synthetic panel generator: seeded, the same in memory and on file, and its ground
truth is what least squares (numpy lstsq, written here) recovers from its data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recursive_training.config import TrainingConfig
from recursive_training.data import open_source
from recursive_training.data.panel import (
    BLOCK_SERIES,
    MARKET,
    PanelSpec,
    panel_ground_truth,
    panel_truth,
    simulate_panel,
    write_panel,
)
from recursive_training.exceptions import DataError
from recursive_training.stages import TrainingPipeline

pytestmark = pytest.mark.unit


def test_the_file_holds_the_simulated_panel_sorted_by_series_then_time(tmp_path: Path) -> None:
    spec = PanelSpec(n_series=BLOCK_SERIES + 30, years=0.5, seed=5)  # two random blocks
    path = write_panel(spec, tmp_path / "panel.parquet", rows_per_group=1000 * spec.n_rows)
    rows = pq.read_table(path).to_pandas()
    assert list(rows.columns) == ["unique_id", "ds", "y"]
    ids = rows["unique_id"].astype(str)
    order = pd.MultiIndex.from_arrays([ids, rows["ds"]])
    assert order.is_monotonic_increasing and order.is_unique
    wide = rows.assign(unique_id=ids).pivot(index="ds", columns="unique_id", values="y")
    np.testing.assert_array_equal(wide[spec.names].to_numpy(), simulate_panel(spec))
    metadata = pq.ParquetFile(path).metadata
    # the market alone, then up to 1000 series a group, a block never shared by two groups
    assert [metadata.row_group(g).num_rows // spec.n_rows for g in range(7)] == [
        1,
        1000,
        1000,
        1000,
        1000,
        96,
        30,
    ]
    source = open_source(f"builtin:panel?n_series={BLOCK_SERIES + 30}&years=0.5&seed=5")
    some = ["market", "s00007", f"s{BLOCK_SERIES + 3:05d}"]
    window = source.load(some, spec.timestamps[10], spec.timestamps[40])
    np.testing.assert_array_equal(window.to_numpy(), wide.loc[window.index, some].to_numpy())


def test_seeded_and_scales_over_orders_of_magnitude() -> None:
    spec = PanelSpec(n_series=300, years=1, seed=9)
    np.testing.assert_array_equal(simulate_panel(spec), simulate_panel(spec))
    assert not np.array_equal(simulate_panel(spec), simulate_panel(PanelSpec(300, 1, seed=10)))
    scale = panel_truth(spec).scale
    assert scale.min() < 0.1 and scale.max() > 100


def test_least_squares_recovers_the_ground_truth() -> None:
    """Per series: lstsq of the next change on [1, own lags, market lags] over 30 years."""
    spec = PanelSpec(n_series=6, years=30, seed=2, lags=3)
    lags = 4  # one more than the truth: its coefficients must come out near zero
    levels = simulate_panel(spec)
    changes = np.diff(levels, axis=0)
    truth = panel_ground_truth(spec, lags)
    market = changes[:, spec.names.index(MARKET)]
    origins = np.arange(lags, len(changes) - 1)
    market_lags = np.column_stack([market[origins - lag] for lag in range(lags)])
    for position, name in enumerate(spec.names):
        own = changes[:, position]
        design = np.column_stack(
            [np.ones(len(origins)), *(own[origins - lag] for lag in range(lags))]
            + ([] if name == MARKET else [market_lags])
        )
        fitted, *_ = np.linalg.lstsq(design, own[origins + 1], rcond=None)
        expected = truth.loc[name].to_numpy()[: design.shape[1]]
        error = np.abs(fitted - expected)
        scale = own.std()
        assert error[0] < 0.05 * scale, name  # the intercept, in the series' units
        assert np.all(error[1 : 1 + lags] < 0.05), (name, fitted, expected)  # unitless
        # market effects in the series' units per market unit: compare in standard deviations
        assert np.all(error[1 + lags :] * market.std() / scale < 0.05), (name, fitted, expected)


def test_bad_options_are_one_clear_line() -> None:
    with pytest.raises(DataError, match="unknown option 'series'; options are n_series"):
        open_source("builtin:panel?series=3")
    with pytest.raises(DataError, match="n_series >= 1"):
        open_source("builtin:panel?n_series=0")


def test_an_ar_run_with_the_market_as_exog_recovers_the_ground_truth() -> None:
    """The panel's truth is named like the ``ar`` model's features, and a run learns it."""
    spec = PanelSpec(n_series=12, years=30, seed=6, lags=2)
    config = TrainingConfig.build(
        input_data="builtin:panel?n_series=12&years=30&seed=6&lags=2",
        lags=3,
        batch_size_days=3650,
        ridge_alpha=0.0,
        rules=["model"],
        model="ar",
        exog=[MARKET],
    )
    result = TrainingPipeline().execute(config)
    truth = panel_ground_truth(spec, lags=3).loc[list(result.variables)]
    assert list(truth.columns) == list(result.features)
    error = np.abs(np.asarray(result.coefficients) - truth.to_numpy())
    scale = panel_truth(spec).scale[:, None]
    own = [c.startswith("own.") for c in truth.columns]
    market = [c.startswith(f"{MARKET}.") for c in truth.columns]
    assert np.all(error[:, own] < 0.05)
    assert np.all(error[:, market] / scale < 0.05)  # in noise units per unit of market change
    assert np.all(error[:, 0] / scale[:, 0] < 0.05)
