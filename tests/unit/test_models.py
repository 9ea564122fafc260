"""The model structures against independent refits, and their invariances.

References are written here with pandas shifts and rolling windows and solved with
numpy.linalg.lstsq (tests/reference.py), sharing no code with recursive_training.models.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recursive_training import features as feats
from recursive_training import sizes
from recursive_training.exceptions import ConfigError
from recursive_training.models import (
    AutoRegressive,
    Moments,
    Pooled,
    VectorAutoRegressive,
    build_structure,
    check_var_memory,
    memory,
)
from recursive_training.models.base import ModelStructure
from recursive_training.models.memory import var_memory_bytes
from recursive_training.statistics import solve_ridge
from tests.reference import ridge_lstsq

LAGS, HORIZON, WINDOW = 3, 2, 8
FORGETTING = 0.99  # per row, so weights multiply and batch statistics simply add


def make_panel(seed: int, n_series: int, rows: int, n_exog: int, missing: float) -> pd.DataFrame:
    """AR(1) changes with an exog effect, scales from 0.01 to 1000, scattered gaps."""
    rng = np.random.default_rng(seed)
    exog = rng.standard_normal((rows, n_exog))
    scale = 10 ** rng.uniform(-2, 3, n_series)
    phi, beta = rng.uniform(-0.6, 0.6, n_series), rng.uniform(-1, 1, (n_exog, n_series))
    changes = np.zeros((rows, n_series))
    for t in range(1, rows):
        changes[t] = phi * changes[t - 1] + exog[t - 1] @ beta + rng.standard_normal(n_series)
    levels = np.column_stack([np.cumsum(changes * scale, axis=0), np.cumsum(exog, axis=0)])
    levels[rng.random(levels.shape) < missing] = np.nan
    names = [f"s{i}" for i in range(n_series)] + [f"x{e}" for e in range(n_exog)]
    return pd.DataFrame(levels, columns=names)


def weight_of(realized: np.ndarray, rows: int) -> np.ndarray:
    return FORGETTING ** (rows - realized).astype(float)


def batch_moments(structure: ModelStructure, panel: pd.DataFrame, lo: int, hi: int) -> Moments:
    """Statistics of the samples realized in rows [lo, hi), from a window with margins."""
    first_origin = max(lo - HORIZON, structure.lags)
    origins = np.arange(first_origin, hi - HORIZON)
    start = max(0, first_origin - structure.history)
    levels = panel[list(structure.columns)].to_numpy()[start:hi]
    weights = weight_of(origins + HORIZON, len(panel))
    return structure.statistics(levels, origins - start, weights)[0]


def walk(structure: ModelStructure, panel: pd.DataFrame, cuts: list[int]) -> list[Moments]:
    """Prefix statistics after each batch of realization rows between consecutive cuts."""
    prefixes: list[Moments] = []
    total = structure.zeros()
    for lo, hi in itertools.pairwise(cuts):
        total = total + batch_moments(structure, panel, lo, hi)
        prefixes.append(total)
    return prefixes


def own_design(panel: pd.DataFrame, name: str, exog: list[str]) -> pd.DataFrame:
    """[const, own lagged changes, exog lagged changes] and the target, by pandas shifts."""
    columns = {"const": pd.Series(1.0, index=panel.index)}
    for source in [name, *exog]:
        change = panel[source].diff()
        for lag in range(LAGS):
            columns[f"{source}.{lag}"] = change.shift(lag)
    frame = pd.DataFrame(columns)
    frame["target"] = panel[name].shift(-HORIZON) - panel[name]
    frame["realized"] = np.arange(len(panel)) + HORIZON
    return frame


def reference_fit(frame: pd.DataFrame, before: int, alpha: float) -> np.ndarray:
    """Weighted ridge (lstsq) on the complete samples realized before row ``before``."""
    used = frame[frame["realized"] < before].dropna()
    x = used.drop(columns=["target", "realized"])
    w = weight_of(used["realized"].to_numpy(), int(frame["realized"].max()) - HORIZON + 1)
    return ridge_lstsq(x, used[["target"]], alpha, w)[:, 0]


def rms_scale(series: pd.Series) -> pd.Series:
    """RMS of the finite changes among the last WINDOW rows; NaN when none or zero."""
    squares = series.diff() ** 2
    rms = np.sqrt(squares.rolling(WINDOW, min_periods=1).mean())
    return rms.where(rms > 0)


def pooled_frame(
    panel: pd.DataFrame, series: list[str], exog: list[str], scaled: bool
) -> pd.DataFrame:
    """Every series' samples stacked, each divided by the scale at its origin when scaled."""
    parts = []
    for name in series:
        frame = own_design(panel, name, exog)
        if scaled:
            own = rms_scale(panel[name])
            for lag in range(LAGS):
                frame[f"{name}.{lag}"] /= own
                for e in exog:
                    frame[f"{e}.{lag}"] /= rms_scale(panel[e])
            frame["target"] /= own
            frame["scale"] = own
        else:
            frame["scale"] = 1.0
        parts.append(
            frame.set_axis(
                ["const", *(f"own.{k}" for k in range(LAGS)), *frame.columns[1 + LAGS :]], axis=1
            )
        )
    return pd.concat(parts, ignore_index=True)


CUTS = [0, 37, 60, 61, 95, 140, 170]


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_ar_equals_per_series_lstsq_refits_for_every_batch(alpha: float) -> None:
    panel = make_panel(seed=1, n_series=30, rows=170, n_exog=1, missing=0.03)
    series = [f"s{i}" for i in range(30)]
    structure = AutoRegressive(tuple(series), LAGS, HORIZON, ("x0",))
    prefixes = walk(structure, panel, CUTS)
    checked = np.random.default_rng(7).choice(30, 8, replace=False)
    for prefix, before in zip(prefixes, CUTS[1:], strict=True):
        coefficients = structure.solve(prefix, alpha, min_samples=10)
        assert coefficients is not None
        for v in checked:
            frame = own_design(panel, series[v], ["x0"])
            expected = reference_fit(frame, before, alpha)
            np.testing.assert_allclose(coefficients[v], expected, rtol=1e-8, atol=1e-10)


def test_ar_predictions_equal_features_times_the_refit() -> None:
    panel = make_panel(seed=2, n_series=12, rows=120, n_exog=2, missing=0.05)
    series = [f"s{i}" for i in range(12)]
    structure = AutoRegressive(tuple(series), LAGS, HORIZON, ("x0", "x1"))
    coefficients = structure.solve(walk(structure, panel, [0, 80])[-1], 0.01, 10)
    assert coefficients is not None
    origins = np.arange(80, 118)
    forecast = structure.predict(coefficients, panel[list(structure.columns)].to_numpy(), origins)
    for v, name in enumerate(series):
        frame = own_design(panel, name, ["x0", "x1"]).iloc[origins]
        x = frame.drop(columns=["target", "realized"]).to_numpy()
        expected = x @ reference_fit(own_design(panel, name, ["x0", "x1"]), 80, 0.01)
        known = np.isfinite(expected) & frame["target"].notna().to_numpy()
        np.testing.assert_array_equal(forecast.complete[:, v], known)
        np.testing.assert_allclose(forecast.predicted[known, v], expected[known], rtol=1e-8)
        np.testing.assert_array_equal(forecast.actual[known, v], frame["target"][known])


def test_ar_drops_a_missing_value_from_its_own_series_only() -> None:
    panel = make_panel(seed=3, n_series=3, rows=60, n_exog=0, missing=0.0)
    structure = AutoRegressive(("s0", "s1", "s2"), LAGS, HORIZON)
    full = batch_moments(structure, panel, 0, 60)
    panel.loc[30, "s1"] = np.nan  # one level: two changes and two targets of s1 only
    gapped = batch_moments(structure, panel, 0, 60)
    lost = 1 + LAGS + HORIZON - 1  # samples that read row 30 through a change or a target
    np.testing.assert_array_equal(full.n - gapped.n, [0, lost, 0])
    np.testing.assert_array_equal(gapped.xtx[[0, 2]], full.xtx[[0, 2]])


@pytest.mark.parametrize(("scale", "alpha"), [("rms", 0.0), ("rms", 0.1), ("none", 0.0)])
def test_pooled_equals_a_stacked_lstsq_refit(scale: str, alpha: float) -> None:
    panel = make_panel(seed=4, n_series=25, rows=150, n_exog=1, missing=0.03)
    series = [f"s{i}" for i in range(25)]
    structure = Pooled(tuple(series), LAGS, HORIZON, ("x0",), scale, WINDOW)
    stacked = pooled_frame(panel, series, ["x0"], scaled=scale == "rms")
    prefixes = walk(structure, panel, [0, 50, 90, 150])
    for prefix, before in zip(prefixes, [50, 90, 150], strict=True):
        coefficients = structure.solve(prefix, alpha, min_samples=10)
        expected = reference_fit(stacked.drop(columns=["scale"]), before, alpha)
        np.testing.assert_allclose(coefficients, expected, rtol=1e-8, atol=1e-12)
    assert coefficients is not None
    origins = np.arange(100, 148)
    forecast = structure.predict(coefficients, panel[list(structure.columns)].to_numpy(), origins)
    rows = stacked[stacked["realized"].isin(origins + HORIZON)]
    x = rows.drop(columns=["target", "realized", "scale"]).to_numpy()
    expected = (x @ coefficients * rows["scale"].to_numpy()).reshape(25, -1).T
    known = np.isfinite(expected) & np.isfinite(rows["target"].to_numpy().reshape(25, -1).T)
    np.testing.assert_array_equal(forecast.complete, known)
    np.testing.assert_allclose(forecast.predicted[known], expected[known], rtol=1e-8)


def test_pooled_rms_puts_series_of_any_scale_on_one_footing() -> None:
    """Multiplying one series by 1e6 changes nothing in the scaled pooled model, while the
    unscaled one then describes that series alone."""
    panel = make_panel(seed=5, n_series=6, rows=200, n_exog=0, missing=0.0)
    loud = panel.assign(s0=panel["s0"] * 1e6)
    fits = {}
    for scale in ("rms", "none"):
        structure = Pooled(tuple(f"s{i}" for i in range(6)), LAGS, HORIZON, (), scale, WINDOW)
        fits[scale] = [
            structure.solve(batch_moments(structure, p, 0, 200), 0.0, 10) for p in (panel, loud)
        ]
    np.testing.assert_allclose(fits["rms"][0], fits["rms"][1], rtol=1e-9)
    alone = Pooled(("s0",), LAGS, HORIZON, (), "none")
    own = alone.solve(batch_moments(alone, loud, 0, 200), 0.0, 10)
    assert own is not None and fits["none"][1] is not None
    np.testing.assert_allclose(fits["none"][1][1:], own[1:], rtol=1e-3)


STRUCTURES = [
    AutoRegressive(tuple(f"s{i}" for i in range(9)), LAGS, HORIZON, ("x0",)),
    Pooled(tuple(f"s{i}" for i in range(9)), LAGS, HORIZON, ("x0",), "rms", WINDOW),
    Pooled(tuple(f"s{i}" for i in range(9)), LAGS, HORIZON, ("x0",), "none"),
    VectorAutoRegressive(tuple(f"s{i}" for i in range(9)), LAGS, HORIZON),
]


def assert_moments_close(left: Moments, right: Moments) -> None:
    np.testing.assert_array_equal(left.n, right.n)
    for name in ("xtx", "xty", "yty"):
        a, b = getattr(left, name), getattr(right, name)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(b).max())


@pytest.mark.parametrize("structure", STRUCTURES, ids=lambda s: f"{s.name}")
def test_statistics_do_not_depend_on_the_batching(structure: ModelStructure) -> None:
    panel = make_panel(seed=6, n_series=9, rows=160, n_exog=1, missing=0.04)
    one = walk(structure, panel, [0, 160])[-1]
    many = walk(structure, panel, [0, 13, 14, 50, 51, 52, 99, 160])[-1]
    assert_moments_close(many, one)


@pytest.mark.parametrize("structure", STRUCTURES[:3], ids=lambda s: f"{s.name}")
def test_statistics_do_not_depend_on_the_series_sharding(structure: ModelStructure) -> None:
    panel = make_panel(seed=8, n_series=9, rows=120, n_exog=1, missing=0.04)
    whole = batch_moments(structure, panel, 0, 120)
    shards = [structure.series[:2], structure.series[2:3], structure.series[3:]]
    parts = [
        batch_moments(type(structure)(**{**vars(structure), "series": s}), panel, 0, 120)
        for s in shards
    ]
    assert_moments_close(structure.combine_shards(parts), whole)


def test_var_statistics_and_solve_are_todays_numbers() -> None:
    panel = make_panel(seed=9, n_series=4, rows=90, n_exog=0, missing=0.05)
    structure = VectorAutoRegressive(tuple(panel.columns), LAGS, HORIZON)
    levels = panel.to_numpy()
    origins = np.arange(LAGS, 90 - HORIZON)
    weights = weight_of(origins + HORIZON, 90)
    moments, complete = structure.statistics(levels, origins, weights)
    x, y = feats.design(levels, origins, LAGS, HORIZON)
    keep = feats.complete_rows(x, y)
    np.testing.assert_array_equal(complete, np.broadcast_to(keep[:, None], y.shape))
    weighted = x[keep] * weights[keep][:, None]
    np.testing.assert_array_equal(moments.xtx, weighted.T @ x[keep])
    np.testing.assert_array_equal(moments.xty, weighted.T @ y[keep])
    assert moments.n[0] == keep.sum()
    coefficients = structure.solve(moments, 0.01, 10)
    np.testing.assert_array_equal(coefficients, solve_ridge(moments.xtx, moments.xty, 0.01))
    forecast = structure.predict(coefficients, levels, origins)  # type: ignore[arg-type]
    np.testing.assert_array_equal(forecast.predicted[keep], x[keep] @ coefficients)
    assert not forecast.complete[~keep].any()


def test_stacked_solve_handles_empty_and_singular_series_like_lstsq() -> None:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((50, 4))
    x[:, 0] = 1.0
    singular = np.column_stack([x[:, :3], x[:, 1]])  # a duplicated column
    systems = np.stack([x.T @ x, singular.T @ singular, np.zeros((4, 4))])
    rhs = np.stack([x.T @ x[:, 1:2], singular.T @ x[:, 2:3], np.zeros((4, 1))])
    solved = solve_ridge(systems, rhs, 0.0)
    for k in range(3):
        np.testing.assert_allclose(solved[k], solve_ridge(systems[k], rhs[k], 0.0), atol=1e-10)
    np.testing.assert_array_equal(solved[2], 0.0)


def test_moments_decay_add_and_round_trip_through_plain_arrays() -> None:
    structure = STRUCTURES[0]
    moments = batch_moments(structure, make_panel(11, 9, 80, 1, 0.0), 0, 80)
    again = Moments.from_arrays(moments.to_arrays())
    assert_moments_close(again, moments)
    halved = moments.decayed(0.5)
    np.testing.assert_array_equal(halved.xtx, moments.xtx * 0.5)
    np.testing.assert_array_equal(halved.n, moments.n)
    assert moments.count_only().nbytes == moments.n.nbytes


def test_ar_series_below_the_sample_threshold_are_not_predicted() -> None:
    panel = make_panel(seed=12, n_series=3, rows=60, n_exog=0, missing=0.0)
    panel.loc[10:50, "s2"] = np.nan
    structure = AutoRegressive(("s0", "s1", "s2"), LAGS, HORIZON)
    coefficients = structure.solve(batch_moments(structure, panel, 0, 60), 0.0, 20)
    assert coefficients is not None
    assert np.isfinite(coefficients[:2]).all() and np.isnan(coefficients[2]).all()
    forecast = structure.predict(coefficients, panel.to_numpy(), np.arange(52, 58))
    assert forecast.complete[:, :2].all() and not forecast.complete[:, 2].any()


def test_var_memory_guard_refuses_in_one_line_naming_size_and_alternatives() -> None:
    p = 1 + 3000 * 5
    assert var_memory_bytes(3000, 5, 365) == 8 * (5 * (p * p + p * 3000) + 2 * 365 * p)
    check_var_memory(100, 5, 365, budget=2**30)
    with pytest.raises(ConfigError) as refused:
        check_var_memory(3000, 5, 365, budget=8 * 10**9)
    message = str(refused.value)
    assert "\n" not in message
    assert "3,000 variables" in message and "10.9 GB" in message and "8.0 GB" in message
    assert "--model ar" in message and "--model pooled" in message


@pytest.mark.parametrize(
    ("limit", "share_of"), [("2147483648\n", 2**30), ("max\n", None), (None, None)]
)
def test_default_budget_is_half_the_containers_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str | None, share_of: int | None
) -> None:
    """In a pod the budget follows the container's limit, not the node's memory."""
    cgroup = tmp_path / "memory.max"
    if limit is not None:
        cgroup.write_text(limit)
    monkeypatch.setattr(sizes, "CGROUP_LIMITS", (cgroup,))
    machine = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert memory.default_memory_budget() == (share_of or int(machine * 0.5))


def test_build_structure_names_bad_settings() -> None:
    assert build_structure("ar", ["a"], 2, 1, ["m"]).columns == ("a", "m")
    with pytest.raises(ConfigError, match="unknown; use one of var, ar, pooled"):
        build_structure("garch", ["a"], 2, 1)
    with pytest.raises(ConfigError, match="exog m cannot also be a modelled series"):
        build_structure("pooled", ["a", "m"], 2, 1, ["m"])
    with pytest.raises(ConfigError, match="exog applies to --model ar and pooled"):
        build_structure("var", ["a"], 2, 1, ["m"])
    with pytest.raises(ConfigError, match="scale 'z'"):
        build_structure("pooled", ["a"], 2, 1, scale="z")
