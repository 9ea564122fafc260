"""Walk-forward training on real US macro data through the library API (no CLI, no files).

    python examples/recursive_training/walk_forward_macro.py

Trains quarterly models of GDP, consumption, CPI and unemployment on statsmodels' macro
data (shipped with statsmodels, so this runs offline), then prints what a quant looks at
first: out-of-sample skill against persistence, which rules earned trust, and the
coefficients of the final model.
"""

from __future__ import annotations

import pandas as pd

from recursive_training.config import TrainingConfig
from recursive_training.results import build_document, metrics_table, rule_trust_table
from recursive_training.stages import TrainingPipeline


def main() -> None:
    """Train, then print skill, trusted rules and the strongest coefficients."""
    config = TrainingConfig.build(
        input_data="builtin:macro",
        variables=("realgdp", "realcons", "cpi", "unemp"),
        batch_size_days=5 * 365,  # five-year batches of quarterly data
        lags=2,
        ridge_alpha=0.1,
        rules=("momentum(2)", "mean_reversion(4)", "cross", "model"),
    )
    result = TrainingPipeline().execute(config)
    document = build_document(result)

    # The same tables as metrics.parquet and rules.parquet: they hold every series and rule
    # at any size, where the results document lists them only for small runs.
    metrics = metrics_table(result).to_pandas().set_index("series")
    print("Walk-forward metrics (each batch predicted by a model fitted on earlier data only):")
    print(
        metrics[["n", "rmse", "skill_vs_persistence", "directional_accuracy"]].to_string(
            float_format="%.3f"
        )
    )

    rules = rule_trust_table(result.rule_table, config.fdr).to_pandas()
    rules = rules.sort_values("trust_lower", ascending=False)
    print("\nMost trusted rules (Beta posterior, 90% interval; q: Benjamini-Hochberg q-value):")
    print(
        rules.head(8)[
            [
                "rule",
                "target",
                "hits",
                "misses",
                "trust_mean",
                "trust_lower",
                "q_value",
                "validated",
            ]
        ].to_string(index=False, float_format="%.3f")
    )

    coefficients = pd.DataFrame(
        document["model"]["coefficients"], index=document["model"]["features"]
    )
    print("\nFinal model, largest coefficients per target:")
    for target in coefficients.columns:
        strongest = coefficients[target].drop("const").abs().nlargest(3).index
        print(
            f"  {target}: " + ", ".join(f"{f}={coefficients.at[f, target]:+.3g}" for f in strongest)
        )


if __name__ == "__main__":
    main()
