"""The same long Parquet file feeds mlforecast and Pulse, and both see the same series.

mlforecast is what users of panels would otherwise pick; it is an optional dependency
(the benchmarks' comparison), so without it this module is skipped, with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recursive_training.data import open_source
from recursive_training.data.panel import PanelSpec, write_panel

INSTALL_BENCH = "pip install -e '.[bench]'"
mlforecast = pytest.importorskip(
    "mlforecast", reason=f"mlforecast is not installed: {INSTALL_BENCH}"
)
linear_model = pytest.importorskip(
    "sklearn.linear_model", reason=f"scikit-learn is not installed: {INSTALL_BENCH}"
)

pytestmark = pytest.mark.integration


def test_mlforecast_lags_equal_pulse_levels_from_the_same_file(tmp_path: Path) -> None:
    spec = PanelSpec(n_series=30, years=2, seed=8)
    path = write_panel(spec, tmp_path / "panel.parquet", rows_per_group=5 * spec.n_rows)
    forecaster = mlforecast.MLForecast(
        models=[linear_model.LinearRegression()], freq="B", lags=[1, 2]
    )
    features = forecaster.preprocess(pd.read_parquet(path), dropna=True)
    open_source.cache_clear()
    source = open_source(str(path))
    assert set(source.variables()) == set(features["unique_id"].astype(str))
    levels = source.load(list(source.variables()), pd.Timestamp.min, pd.Timestamp.max)
    position = levels.index.get_indexer(pd.DatetimeIndex(features["ds"]))
    column = levels.columns.get_indexer(features["unique_id"].astype(str))
    values = levels.to_numpy()
    np.testing.assert_array_equal(features["y"].to_numpy(), values[position, column])
    np.testing.assert_array_equal(features["lag1"].to_numpy(), values[position - 1, column])
    np.testing.assert_array_equal(features["lag2"].to_numpy(), values[position - 2, column])
