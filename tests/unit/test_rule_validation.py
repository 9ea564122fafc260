"""Rule validation against scipy's binomial test and statsmodels' Benjamini-Hochberg, and
its honesty on pure noise: hundreds of rules, none of which can predict anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from statsmodels.stats.multitest import multipletests

from recursive_training.config import TrainingConfig
from recursive_training.results import build_document, rule_trust_table
from recursive_training.stages import TrainingPipeline
from recursive_training.trust import bh_adjusted, bh_rejected, sign_test_p_values, validate_rules

NOISE_VARIABLES = 30
NOISE_SEEDS = 20
NOISE_YEARS = 1.5
NOISE_ROWS = 400


def test_p_values_equal_the_exact_one_sided_binomial_test() -> None:
    rng = np.random.default_rng(5)
    n = rng.integers(1, 400, 300)
    hits = rng.binomial(n, rng.uniform(0.3, 0.7, n.size))
    edges = [(0, 1), (1, 0), (0, 50), (50, 0), (1, 1), (12, 13)]
    hits = np.concatenate([hits, [h for h, _ in edges]])
    n = np.concatenate([n, [h + m for h, m in edges]])
    expected = [
        binomtest(int(h), int(k), 0.5, alternative="greater").pvalue
        for h, k in zip(hits, n, strict=True)
    ]
    actual = sign_test_p_values(hits.astype(float), (n - hits).astype(float))
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-300)


def test_p_value_of_fractional_counts_lies_between_its_integer_neighbours() -> None:
    """Forgetting weighs samples: the p-value moves continuously and monotonically with them."""
    hits = np.linspace(0.0, 30.0, 301)
    p = sign_test_p_values(hits, 20.0 - hits / 3)
    assert np.all(np.diff(p) < 0) and p[0] == 1.0
    without_evidence = sign_test_p_values(np.array([0.0, 0.0]), np.array([0.0, 2.5]))
    assert list(without_evidence) == [1.0, 1.0]
    nearly_none = sign_test_p_values(np.array([1e-9]), np.array([0.0]))
    assert nearly_none[0] == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("fdr", [0.01, 0.1, 0.25])
@pytest.mark.parametrize("seed", range(4))
def test_bh_equals_statsmodels(fdr: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    signal = rng.uniform(0, 1e-5, 40)
    ties = np.repeat(rng.uniform(0, 0.05, 5), 6)
    p = rng.permutation(np.concatenate([rng.uniform(0, 1, 400), signal, ties, [1.0, 1.0]]))
    rejected, q, _, _ = multipletests(p, alpha=fdr, method="fdr_bh")
    assert rejected.any() and not rejected.all()
    np.testing.assert_array_equal(bh_rejected(p, fdr), rejected)
    np.testing.assert_allclose(bh_adjusted(p), q, rtol=1e-12)


def test_bh_of_no_rules_and_of_one() -> None:
    assert bh_rejected(np.array([]), 0.1).size == 0 and bh_adjusted(np.array([])).size == 0
    assert list(bh_rejected(np.array([0.1]), 0.1)) == [True]
    assert list(bh_adjusted(np.array([0.3]))) == [0.3]


def test_trust_table_reports_both_verdicts() -> None:
    table = [("momentum(5)", "a", 90.0, 10.0), ("momentum(5)", "b", 55.0, 45.0)]
    strong, weak = rule_trust_table(table, fdr=0.1).to_pylist()
    assert strong["validated"] and strong["interval_above_half"]
    assert not weak["validated"] and not weak["interval_above_half"]
    assert strong["p_value"] == pytest.approx(binomtest(90, 100, alternative="greater").pvalue)
    assert weak["q_value"] == pytest.approx(binomtest(55, 100, alternative="greater").pvalue)


def noise_run_headline(seed: int) -> dict[str, Any]:
    """The headline of a run of every cross rule on independent random walks."""
    config = TrainingConfig.build(
        input_data=f"builtin:synthetic?n_variables={NOISE_VARIABLES}&years={NOISE_YEARS}"
        f"&seed={seed}&signal=0",
        rules=("cross",),
        lags=1,
        batch_size_days=10_000,
        fdr=0.1,
    )
    headline: dict[str, Any] = build_document(TrainingPipeline().execute(config))["metrics"][
        "headline"
    ]
    return headline


def test_on_pure_noise_fdr_control_validates_almost_nothing() -> None:
    """870 cross rules on 30 random walks, 20 seeds: BH at 0.1 may validate a rule in a run
    with probability at most 0.1 (every hypothesis is null), so in about 2 runs of 20 (at
    most 4 asserted); the interval criterion passes about 5% of the rules in every run."""
    runs_with_any, by_interval = 0, []
    for seed in range(NOISE_SEEDS):
        headline = noise_run_headline(seed)
        assert headline["rules_total"] == NOISE_VARIABLES * (NOISE_VARIABLES - 1)
        runs_with_any += headline["rules_validated"] > 0
        by_interval.append(headline["rules_validated_by_interval"])
    assert runs_with_any <= 4, f"{runs_with_any} of {NOISE_SEEDS} noise runs validated a rule"
    assert min(by_interval) >= 10 and np.mean(by_interval) > 25, by_interval


def test_a_real_link_among_noise_is_validated(tmp_path: Path) -> None:
    """Random walks but for one link: v01's change follows half of v00's previous change."""
    rng = np.random.default_rng(1)
    changes = rng.standard_normal((NOISE_ROWS, NOISE_VARIABLES))
    changes[1:, 1] += 0.5 * changes[:-1, 0]
    index = pd.bdate_range("2010-01-04", periods=NOISE_ROWS, name="timestamp")
    columns = [f"v{i:02d}" for i in range(NOISE_VARIABLES)]
    pd.DataFrame(100.0 + np.cumsum(changes, axis=0), index, columns).to_parquet(
        tmp_path / "linked.parquet"
    )
    config = TrainingConfig.build(
        input_data=str(tmp_path / "linked.parquet"),
        rules=("cross",),
        lags=1,
        batch_size_days=10_000,
    )
    rules = build_document(TrainingPipeline().execute(config))["rules"]
    assert [r["rule"] for r in rules if r["validated"]] == ["cross(v00->v01)"]


def test_fdr_is_a_setting_of_the_yaml_and_the_cli(tmp_path: Path) -> None:
    from recursive_training.exceptions import ConfigError
    from recursive_training.run_training import create_config_from_args, parse_args

    assert TrainingConfig.build().fdr == 0.1
    (tmp_path / "run.yaml").write_text("fdr: 0.05\n", encoding="utf-8")
    config_file = ["--config", str(tmp_path / "run.yaml")]
    assert create_config_from_args(parse_args(config_file)).fdr == 0.05
    assert create_config_from_args(parse_args([*config_file, "--fdr", "0.2"])).fdr == 0.2
    with pytest.raises(ConfigError, match=r"fdr \(--fdr\): Input should be less than 1"):
        TrainingConfig.build(fdr=1.0)


def test_validate_rules_returns_one_entry_per_rule() -> None:
    validation = validate_rules(np.array([3.0, 80.0]), np.array([2.0, 20.0]), 0.05)
    assert validation.fdr == 0.05 and list(validation.validated) == [False, True]


def test_synthetic_without_signal_is_independent_random_walks() -> None:
    from recursive_training.data.builtin import SyntheticSpec, ground_truth, simulate
    from recursive_training.exceptions import DataError

    spec = SyntheticSpec.from_query("n_variables=5&years=40&seed=2&signal=0", "builtin:synthetic")
    assert not ground_truth(spec, lags=3).to_numpy().any()
    changes = simulate(spec).diff().iloc[3:].to_numpy()
    lagged = np.corrcoef(changes[1:].T, changes[:-1].T)[:5, 5:]
    assert np.abs(lagged).max() < 4 / np.sqrt(len(changes))
    with pytest.raises(DataError, match="signal=2 must be 0 or 1"):
        SyntheticSpec.from_query("signal=2", "builtin:synthetic")
