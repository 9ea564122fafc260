"""Per-series metrics at any number of series: the ``metrics.parquet`` table, the summary
of it that the results document keeps, and the spread of skill across series per batch.

Everything here is made from the per-series error sums (vectors of length V), so time and
memory are O(V) whatever the number of series: nothing V x V is built, and no prediction
is read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from recursive_training.arrays import FloatArray
from recursive_training.metrics import TABLE_METRICS, ErrorSums, rows

QUANTILES: Final = {"min": 0.0, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95,
                    "max": 1.0}  # fmt: skip
"""Quantiles of skill and directional accuracy across series kept in the results document."""
EXTREME_SERIES: Final = 10
"""Best and worst series (by skill) listed in the results document."""


def series_table(
    variables: Sequence[str], errors: ErrorSums, dropped_missing: FloatArray
) -> pa.Table:
    """One row per series: its walk-forward metrics, scale and the sums they come from.

    ``rms_change`` (the root mean square of the actual change over the evaluated samples) is
    the series' scale: RMSE and MAE are in the series' units, skill is not. The sums let a
    reader pool metrics over any group of series (skill of a group = 1 - sum(sse) /
    sum(sse_persistence)). The run id is stored in the file's metadata.
    """
    metrics = errors.arrays()
    columns: dict[str, pa.Array] = {
        "series": pa.array(list(variables), pa.string()),
        "n": pa.array(errors.n.astype(np.int64)),
    }
    for name in TABLE_METRICS:
        columns[name] = pa.array(metrics[name], pa.float64(), from_pandas=True)  # NaN -> null
    columns |= {
        "hits": pa.array(errors.hits.astype(np.int64)),
        "misses": pa.array(errors.misses.astype(np.int64)),
        "sse": pa.array(errors.sq_error),
        "sse_persistence": pa.array(errors.sq_actual),
        "scaled_abs_error": pa.array(errors.scaled_abs_error),
        "n_scaled": pa.array(errors.n_scaled.astype(np.int64)),
        "smape_sum": pa.array(errors.smape),
        "n_smape": pa.array(errors.n_smape.astype(np.int64)),
        "dropped_missing": pa.array(np.asarray(dropped_missing).astype(np.int64)),
    }
    return pa.table(columns)


def distribution(values: FloatArray) -> dict[str, float | int | None]:
    """Count, mean and QUANTILES of the defined (non-NaN) values (numpy's linear quantiles)."""
    defined = values[~np.isnan(values)]
    summary: dict[str, float | int | None] = {"count": int(defined.size), "mean": None}
    if defined.size == 0:
        return summary | dict.fromkeys(QUANTILES)
    quantiles = np.quantile(defined, list(QUANTILES.values()))
    summary["mean"] = float(defined.mean())
    return summary | {name: float(q) for name, q in zip(QUANTILES, quantiles, strict=True)}


def series_summary(variables: list[str], errors: ErrorSums) -> dict[str, Any]:
    """What the results document says about the series at any V: counts, the distributions
    of skill and directional accuracy, the share that beat persistence, best and worst."""
    metrics = errors.arrays()
    skill = metrics["skill_vs_persistence"]
    defined = np.flatnonzero(~np.isnan(skill))
    ranked = defined[np.argsort(-skill[defined], kind="stable")]
    best, worst = ranked[:EXTREME_SERIES], ranked[::-1][:EXTREME_SERIES]

    def listed(indices: NDArray[np.intp]) -> list[dict[str, Any]]:
        table = rows(metrics, variables, indices)
        return [{"series": variables[j]} | table[variables[j]] for j in indices]

    return {
        "count": len(variables),
        "evaluated": int((errors.n > 0).sum()),
        "skill_vs_persistence": distribution(skill)
        | {"share_positive": float((skill[defined] > 0).mean()) if defined.size else None},
        "directional_accuracy": distribution(metrics["directional_accuracy"]),
        "mase": distribution(metrics["mase"]),
        "smape": distribution(metrics["smape"]),
        "best": listed(best),
        "worst": listed(worst),
    }


def skill_spread(errors: ErrorSums) -> dict[str, float | int | None]:
    """Quartiles of skill across series within one batch (the report's skill-by-batch band)."""
    skill = errors.arrays()["skill_vs_persistence"]
    defined = skill[~np.isnan(skill)]
    if defined.size == 0:
        return {"count": 0, "p25": None, "p50": None, "p75": None}
    p25, p50, p75 = np.quantile(defined, [0.25, 0.5, 0.75])
    return {"count": int(defined.size), "p25": float(p25), "p50": float(p50), "p75": float(p75)}
