"""Cost of ``--ridge-alpha auto`` against a fixed penalty, and against a grid search that
refits per candidate, measured in the same run.

1. Pulse, the same workload twice: ``--ridge-alpha 0.01`` and ``--ridge-alpha auto`` with
   the default 13-value grid (var, lags 5, 90-day batches, in-process, outputs not
   written), interleaved over ``--repeats`` rounds, each with its best wall and best CPU
   seconds (the machine is shared: CPU seconds are the steadier figure). The issue's
   target: auto <= 3x fixed at 100 variables x 30 years.
2. The library route: for every batch and every grid value, refit scikit-learn's Ridge
   on the standardized samples realized before the batch and predict the batch (what
   skforecast's ``grid_search_forecaster`` with refit does per candidate), then choose per
   target as Pulse does. skforecast itself does not install next to pandas 3 (0.26 pins
   pandas < 3), so scikit-learn is the reference. It is timed on ``--reference-batches``
   evaluated batches and scaled to all of them (each batch's refits are independent, and
   later batches are larger, so the scaling is a lower bound of its cost).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_alpha_auto.py --repeats 3
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_alpha_auto.py --sizes 100x30,20x10 \
        --repeats 3 --reference-batches 0       # the ratios only
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
from bench_horizons import interleaved  # script folder on sys.path
from bench_pipeline import Size, add_sizes_argument, parse_size

from recursive_training.config import TrainingConfig
from recursive_training.constants import DEFAULT_ALPHA_GRID
from recursive_training.data import open_source
from recursive_training.stages import TrainingPipeline, TrainingResult

LAGS = 5
BATCH_DAYS = 90


def config(size: Size, alpha: float | str) -> TrainingConfig:
    return TrainingConfig.build(
        input_data=size.uri,
        lags=LAGS,
        batch_size_days=BATCH_DAYS,
        ridge_alpha=alpha,
        rules=["model"],
    )


def run(size: Size, alpha: float | str) -> TrainingResult:
    return TrainingPipeline().execute(config(size, alpha))


def pulse_ratio(size: Size, repeats: int) -> None:
    """Fixed against auto on one workload, interleaved so load drifts hit both."""
    best = interleaved(
        repeats, {"fixed": lambda: run(size, 0.01), "auto": lambda: run(size, "auto")}
    )
    (fixed_wall, fixed_cpu), (auto_wall, auto_cpu) = best["fixed"], best["auto"]
    print(
        f"{size}: fixed alpha {fixed_wall:.2f} s ({fixed_cpu:.2f} s CPU), auto "
        f"({len(DEFAULT_ALPHA_GRID)} values) {auto_wall:.2f} s ({auto_cpu:.2f} s CPU): auto / "
        f"fixed = {auto_wall / fixed_wall:.2f}x wall, {auto_cpu / fixed_cpu:.2f}x CPU; best of "
        f"{repeats}, load average {os.getloadavg()[0]:.1f}"
    )


def design(levels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.DatetimeIndex]:
    """[lagged changes of every variable] and the next change, by pandas shifts."""
    changes = levels.diff()
    features = pd.concat([changes.shift(lag) for lag in range(LAGS)], axis=1)
    targets = levels.shift(-1) - levels
    keep = features.notna().all(axis=1) & targets.notna().all(axis=1)
    realized = pd.Series(levels.index, index=levels.index).shift(-1)
    return features[keep].to_numpy(), targets[keep].to_numpy(), pd.DatetimeIndex(realized[keep])


def sklearn_grid_search(size: Size, result: TrainingResult, batches: int) -> tuple[float, int]:
    """Seconds of refitting every grid value on the first ``batches`` evaluated batches,
    and how many batches were evaluated in all."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    levels = open_source(size.uri).load(result.variables, pd.Timestamp.min, pd.Timestamp.max)
    x, y, realized = design(levels)
    evaluated = [b for b in result.batches if b.batch_id in result.evaluations]
    began = time.perf_counter()
    for batch in evaluated[:batches]:
        known = realized < batch.start
        mine = (realized >= batch.start) & (realized < batch.end)
        scaler = StandardScaler().fit(x[known])
        train, test = scaler.transform(x[known]), scaler.transform(x[mine])
        for alpha in DEFAULT_ALPHA_GRID:
            model = Ridge(alpha=alpha * known.sum()).fit(train, y[known])
            ((model.predict(test) - y[mine]) ** 2).sum(axis=0)  # the candidate's batch errors
    return time.perf_counter() - began, len(evaluated)


def reference_ratio(size: Size, batches: int) -> None:
    """Pulse auto against the scikit-learn refit grid search on the same workload."""
    began = time.perf_counter()
    result = run(size, "auto")
    pulse = time.perf_counter() - began
    seconds, evaluated = sklearn_grid_search(size, result, batches)
    scaled = seconds * evaluated / min(batches, evaluated)
    print(
        f"{size}: Pulse auto {pulse:.1f} s (whole run); scikit-learn Ridge refit per grid "
        f"value and batch {scaled:.1f} s ({seconds:.1f} s for {min(batches, evaluated)} of "
        f"{evaluated} batches, scaled): speed-up {scaled / pulse:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sizes_argument(parser, "100x30")
    parser.add_argument("--reference-size", type=parse_size, default=parse_size("20x10"))
    parser.add_argument(
        "--reference-batches", type=int, default=10, help="0: skip the scikit-learn reference"
    )
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    for size in args.sizes:
        pulse_ratio(size, args.repeats)
    if args.reference_batches:
        reference_ratio(args.reference_size, args.reference_batches)


if __name__ == "__main__":
    main()
