"""How honest rule validation is on pure noise, and what deciding it costs.

Runs every ``cross`` rule (30 variables: 870 rules) on independent random walks
(``builtin:synthetic?...&signal=0``) for ``--seeds`` seeds and counts, per run, the rules
validated by Benjamini-Hochberg at ``--fdr`` and the rules whose 90% credible interval
lies above 0.5 (the per-rule criterion). Every rule is noise, so any validated rule is a
false discovery: BH should validate one in at most about ``fdr`` of the runs, the
interval criterion about 5% of the rules in every run.

Then times ``validate_rules`` on one run's counts next to the reference a user would
write (``scipy.stats.binomtest`` per rule, then statsmodels' ``multipletests``), checks
that both decide the same, and prints the ratio. Run with ``--help`` for the options.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from bench_models import best_of  # script folder on sys.path

from recursive_training.config import TrainingConfig
from recursive_training.results import build_document
from recursive_training.stages import TrainingPipeline
from recursive_training.trust import validate_rules


def reference_decisions(hits: np.ndarray, misses: np.ndarray, fdr: float) -> np.ndarray:
    """Exact binomial test per rule (integer counts: the runs use no forgetting), then BH."""
    from scipy.stats import binomtest
    from statsmodels.stats.multitest import multipletests

    p = [
        binomtest(int(h), int(h + m), 0.5, alternative="greater").pvalue if h + m >= 1 else 1.0
        for h, m in zip(hits, misses, strict=True)
    ]
    rejected: np.ndarray = multipletests(p, alpha=fdr, method="fdr_bh")[0]
    return rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--variables", type=int, default=30)
    parser.add_argument("--years", type=float, default=1.5)
    parser.add_argument("--fdr", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    runs_with_any, by_fdr, by_interval = 0, [], []
    last: dict[str, Any] = {}
    print(
        f"{'seed':>4} {'rules':>6} {'samples/rule':>12} {'BH-validated':>12} {'interval>0.5':>12}"
    )
    for seed in range(args.seeds):
        config = TrainingConfig.build(
            input_data=f"builtin:synthetic?n_variables={args.variables}&years={args.years}"
            f"&seed={seed}&signal=0",
            rules=("cross",),
            lags=1,
            batch_size_days=10_000,
            fdr=args.fdr,
        )
        last = build_document(TrainingPipeline().execute(config))
        headline, rules = last["metrics"]["headline"], last["rules"]
        samples = float(np.mean([r["hits"] + r["misses"] for r in rules]))
        print(
            f"{seed:>4} {headline['rules_total']:>6} {samples:>12.0f} "
            f"{headline['rules_validated']:>12} {headline['rules_validated_by_interval']:>12}"
        )
        runs_with_any += headline["rules_validated"] > 0
        by_fdr.append(headline["rules_validated"])
        by_interval.append(headline["rules_validated_by_interval"])
    print(
        f"\nRuns with any rule validated, Benjamini-Hochberg at FDR {args.fdr:g}: "
        f"{runs_with_any} of {args.seeds} (rules validated per run: mean "
        f"{np.mean(by_fdr):.2f}, max {max(by_fdr)})"
    )
    print(
        f"Rules with their 90% interval above 0.5, per run: mean {np.mean(by_interval):.1f}, "
        f"min {min(by_interval)}, max {max(by_interval)} (runs with any: "
        f"{sum(n > 0 for n in by_interval)} of {args.seeds})"
    )

    rules = last["rules"]
    hits = np.array([r["hits"] for r in rules])
    misses = np.array([r["misses"] for r in rules])
    mine = validate_rules(hits, misses, args.fdr).validated
    assert np.array_equal(mine, reference_decisions(hits, misses, args.fdr))
    ours = best_of(args.repeat, lambda: validate_rules(hits, misses, args.fdr))
    theirs = best_of(args.repeat, lambda: reference_decisions(hits, misses, args.fdr))
    print(
        f"\nDeciding {len(hits)} rules: validate_rules {ours * 1e3:.2f} ms, binomtest per rule + "
        f"multipletests {theirs * 1e3:.1f} ms (same decisions): {theirs / ours:.0f}x"
    )


if __name__ == "__main__":
    main()
