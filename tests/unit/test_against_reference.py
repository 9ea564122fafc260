"""The pipeline's numbers against independent references: lstsq on the full design,
walk-forward refits, direct rule and metric counts, and the synthetic ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recursive_training.config import TrainingConfig
from recursive_training.data import open_source
from recursive_training.data.builtin import SyntheticSpec, ground_truth
from recursive_training.stages import TrainingPipeline, TrainingResult
from tests.reference import design_frame, ridge_lstsq

SMALL = "builtin:synthetic?n_variables=3&years=4&seed=3"


def train(**fields: object) -> TrainingResult:
    """Run the serial pipeline in-process."""
    return TrainingPipeline().execute(TrainingConfig.build(**fields))


def all_levels(result: TrainingResult) -> pd.DataFrame:
    """The whole panel the run read from."""
    source = open_source(result.config.input_data)
    return source.load(result.variables, pd.Timestamp.min, pd.Timestamp.max)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("lags,horizon", [(1, 1), (3, 2)])
def test_final_model_equals_lstsq_on_full_design(alpha: float, lags: int, horizon: int) -> None:
    result = train(
        input_data=SMALL, batch_size_days=97, lags=lags, horizon=horizon, ridge_alpha=alpha
    )
    features, targets, realized = design_frame(all_levels(result), lags, horizon)
    known = (realized >= result.start) & (realized < result.end)
    expected = ridge_lstsq(features[known], targets[known], alpha)
    assert list(features.columns) == result.features
    np.testing.assert_allclose(
        result.coefficients, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max()
    )


def test_forgetting_equals_weighted_lstsq() -> None:
    result = train(
        input_data=SMALL, batch_size_days=50, lags=2, ridge_alpha=0.1, half_life_days=120
    )
    features, targets, realized = design_frame(all_levels(result), 2, 1)
    known = (realized >= result.start) & (realized < result.end)
    age_days = (result.end - realized[known]).dt.total_seconds().to_numpy() / 86400
    expected = ridge_lstsq(features[known], targets[known], 0.1, weights=0.5 ** (age_days / 120))
    np.testing.assert_allclose(
        result.coefficients, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max()
    )


def test_each_walk_forward_prediction_equals_a_refit_on_earlier_samples() -> None:
    result = train(
        input_data=SMALL,
        batch_size_days=180,
        lags=2,
        horizon=3,
        ridge_alpha=0.2,
        min_train_samples=40,
    )
    features, targets, realized = design_frame(all_levels(result), 2, 3)
    predictions = result.predictions_frame()
    evaluated = 0
    for batch in result.batches:
        known = (realized >= result.start) & (realized < batch.start)
        origins = (
            (features.index >= batch.start)
            & (features.index < batch.end)
            & (realized < result.end).to_numpy()
        )
        mine = predictions[predictions["batch_id"] == batch.batch_id]
        if known.sum() < 40:
            assert mine.empty
            continue
        refit = ridge_lstsq(features[known], targets[known], 0.2)
        expected = features[origins].to_numpy() @ refit
        got = mine.pivot(index="origin", columns="variable", values="predicted")[result.variables]
        assert list(got.index) == list(features.index[origins])
        np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-8, atol=1e-12)
        evaluated += 1
    assert evaluated >= 5


def test_metrics_equal_direct_computation_from_predictions() -> None:
    result = train(input_data=SMALL, batch_size_days=120)
    predictions = result.predictions_frame()
    table = result.errors.table(result.variables)
    for name, group in predictions.groupby("variable", observed=True):
        error = group["predicted"] - group["actual"]
        metrics = table[str(name)]
        assert metrics["n"] == len(group)
        assert metrics["rmse"] == pytest.approx(np.sqrt((error**2).mean()), rel=1e-12)
        assert metrics["mae"] == pytest.approx(error.abs().mean(), rel=1e-12)
        skill = 1 - (error**2).sum() / (group["actual"] ** 2).sum()
        assert metrics["skill_vs_persistence"] == pytest.approx(skill, rel=1e-12)
        agree = np.sign(group["predicted"]) * np.sign(group["actual"])
        assert metrics["directional_accuracy"] == pytest.approx(
            (agree > 0).sum() / (agree != 0).sum()
        )


def test_fixed_rule_counts_equal_direct_counts() -> None:
    result = train(
        input_data=SMALL,
        batch_size_days=75,
        lags=2,
        rules=["momentum(3)", "mean_reversion(4)", "cross(spx_close->gdp_growth)"],
    )
    levels = all_levels(result)
    _, targets, realized = design_frame(levels, 2, 1)
    known = (realized >= result.start) & (realized < result.end)
    outcome = np.sign(targets[known])
    calls = {
        "momentum(3)": np.sign(levels - levels.shift(3)),
        "mean_reversion(4)": np.sign(levels.rolling(4).mean() - levels),
    }
    table = {(rule, target): (hits, misses) for rule, target, hits, misses in result.rule_table}
    for rule, call in calls.items():
        call = call.loc[outcome.index]
        for name in result.variables:
            agree = call[name] * outcome[name]
            assert table[(rule, name)] == ((agree > 0).sum(), (agree < 0).sum())
    cross = np.sign(levels["spx_close"].diff()).loc[outcome.index] * outcome["gdp_growth"]
    assert table[("cross(spx_close->gdp_growth)", "gdp_growth")] == (
        (cross > 0).sum(),
        (cross < 0).sum(),
    )


def test_learning_recovers_the_synthetic_ground_truth_and_beats_persistence() -> None:
    """With 20 years of daily data (~5,200 samples, 13 features) and unit-variance
    standardized shocks, the OLS standard error of each standardized coefficient is about
    1/sqrt(5200) ~ 0.014; a tolerance of 0.06 in standardized units is > 4 standard errors,
    so the test fails only if learning is wrong, not by chance."""
    spec = SyntheticSpec(n_variables=4, years=20, seed=11)
    result = train(
        input_data="builtin:synthetic?n_variables=4&years=20&seed=11", lags=3, ridge_alpha=0.0
    )
    truth = ground_truth(spec, lags=3)
    learned = pd.DataFrame(result.coefficients, index=result.features, columns=result.variables)
    scale = np.array([1.0] + [s for s in _change_scales(result) for _ in range(3)])
    standardized_error = (
        (learned - truth).to_numpy()[1:] * scale[1:, None] / _change_scales(result)[None, :]
    )
    assert np.abs(standardized_error).max() < 0.06
    overall = result.errors.table(result.variables)
    assert all(m["skill_vs_persistence"] > 0.0 for m in overall.values())  # type: ignore[operator]


def _change_scales(result: TrainingResult) -> np.ndarray:
    return all_levels(result).diff().std().to_numpy()


def test_beta_trust_of_a_rule_with_no_evidence_is_a_coin_flip() -> None:
    from recursive_training.rules import beta_trust

    trust = beta_trust(np.array([0.0, 90.0]), np.array([0.0, 10.0]))
    assert (trust.mean[0], trust.lower[0], trust.upper[0]) == pytest.approx((0.5, 0.05, 0.95))
    assert trust.interval_above_half.tolist() == [False, True] and trust.lower[1] > 0.8
