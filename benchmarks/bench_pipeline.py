"""Time the pipeline against the straightforward reference on synthetic data of growing size.

The reference is what a user would otherwise write: for every batch and every target,
refit OLS (numpy.linalg.lstsq) on all samples realized before the batch and predict the
batch. Both sides compute the same walk-forward predictions; the script checks they
agree before it prints the speed-up. The reference is timed on ``--reference-targets``
targets and scaled linearly to all targets (each target's refits are independent, so the
scaling is exact up to noise); the table says when that was done.

Memory: peak traced allocation (tracemalloc) of a serial run as the CLI runs it
(predictions spooled to a file batch by batch) with the data source already open, for a
fixed batch size and growing history: it should stay flat as history grows.

    python benchmarks/bench_pipeline.py                  # the default grid (a few minutes)
    python benchmarks/bench_pipeline.py --sizes 100x30   # the issue's headline size
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recursive_training.config import TrainingConfig
from recursive_training.data import open_source
from recursive_training.results import PredictionsSpool
from recursive_training.stages import TrainingPipeline, TrainingResult


@dataclass(frozen=True)
class Size:
    """A synthetic workload: variables x years of business days."""

    variables: int
    years: int

    @property
    def uri(self) -> str:
        """The builtin data set of this size."""
        return f"builtin:synthetic?n_variables={self.variables}&years={self.years}&seed=1"

    def __str__(self) -> str:
        return f"{self.variables}x{self.years}"


def parse_size(text: str) -> Size:
    """``VARIABLESxYEARS`` as on the command line."""
    variables, _, years = text.partition("x")
    return Size(int(variables), int(years))


def add_sizes_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--sizes``: comma-separated VARIABLESxYEARS workloads."""
    parser.add_argument(
        "--sizes",
        type=lambda s: [parse_size(p) for p in s.split(",")],
        default=[parse_size(s) for s in default.split(",")],
        help=f"comma-separated VARIABLESxYEARS workloads (default: {default})",
    )


def run_pipeline(size: Size, lags: int, batch_days: int) -> tuple[TrainingResult, float]:
    """A serial pipeline run (data source opened beforehand) and its wall time."""
    config = TrainingConfig.build(
        input_data=size.uri, lags=lags, batch_size_days=batch_days, ridge_alpha=0.0, rules=["model"]
    )
    open_source(config.input_data)
    began = time.perf_counter()
    result = TrainingPipeline().execute(config)
    return result, time.perf_counter() - began


def reference_walk_forward(
    result: TrainingResult, lags: int, targets: int
) -> tuple[np.ndarray, float]:
    """Per batch, per target: lstsq on every earlier-realized sample, predict the batch."""
    levels = open_source(result.config.input_data).load(
        result.variables, pd.Timestamp.min, pd.Timestamp.max
    )
    began = time.perf_counter()
    changes = levels.diff()
    x = pd.concat(
        [pd.Series(1.0, index=levels.index, name="const")]
        + [
            changes[v].shift(lag).rename(f"{v}.{lag}")
            for v in levels.columns
            for lag in range(lags)
        ],
        axis=1,
    )
    y = levels.shift(-1) - levels
    realized = pd.Series(levels.index, index=levels.index).shift(-1)
    keep = x.notna().all(axis=1) & y.notna().all(axis=1) & realized.notna()
    x, y, realized = x[keep].to_numpy(), y[keep].to_numpy(), realized[keep]
    origins = realized.index
    predictions = []
    for batch in result.batches:
        if batch.batch_id not in result.evaluations:  # too few earlier samples for a fit
            continue
        known = (realized < batch.start).to_numpy()
        mine = (origins >= batch.start) & (origins < batch.end)
        for target in range(targets):
            coefficients = np.linalg.lstsq(x[known], y[known, target], rcond=None)[0]
            predictions.append(x[mine] @ coefficients)
    return np.concatenate(predictions) if predictions else np.zeros(0), time.perf_counter() - began


def check_agreement(result: TrainingResult, reference: np.ndarray, targets: int) -> float:
    """Largest relative difference between pipeline and reference predictions."""
    frame = result.predictions_frame()
    frame = frame[frame["variable"].isin(result.variables[:targets])]
    ours = frame.sort_values(["batch_id", "variable", "origin"], kind="stable")[
        "predicted"
    ].to_numpy()
    if len(ours) != len(reference):
        raise SystemExit(
            f"prediction counts differ: pipeline {len(ours)}, reference {len(reference)}"
        )
    return float(np.max(np.abs(ours - reference)) / max(1e-300, np.max(np.abs(reference))))


def peak_memory(size: Size, lags: int, batch_days: int) -> float:
    """Peak traced MiB of a run as the CLI makes it: predictions spooled to disk, source cached."""
    config = TrainingConfig.build(input_data=size.uri, lags=lags, batch_size_days=batch_days)
    with PredictionsSpool() as spool:  # warm up: imports and the data set are not measured
        TrainingPipeline(predictions_sink=spool).execute(config)
    tracemalloc.start()
    with PredictionsSpool() as spool:
        TrainingPipeline(predictions_sink=spool).execute(config)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    """Run the grid and print one table per measurement."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_sizes_argument(parser, "10x10,30x20,100x30")
    parser.add_argument("--lags", type=int, default=5, help="lags per variable (default: 5)")
    parser.add_argument(
        "--batch-days", type=int, default=365, help="batch size in days (default: 365)"
    )
    parser.add_argument(
        "--reference-targets",
        type=int,
        default=4,
        help="targets the reference refits; scaled to all (default: 4)",
    )
    parser.add_argument(
        "--memory-years",
        default="5,10,20,40",
        help="history lengths (years) for the memory table (default: 5,10,20,40)",
    )
    args = parser.parse_args()

    print(
        f"speed: walk-forward training, lags={args.lags}, "
        f"batches of {args.batch_days} days, serial engine"
    )
    print(
        f"{'size':>8} {'features':>8} {'batches':>7} {'pipeline s':>10} {'reference s':>11} "
        f"{'speed-up':>8} {'max rel diff':>12}"
    )
    run_pipeline(Size(2, 2), args.lags, args.batch_days)  # warm up: imports are not timed
    for size in args.sizes:
        result, seconds = run_pipeline(size, args.lags, args.batch_days)
        targets = min(args.reference_targets, size.variables)
        reference, reference_seconds = reference_walk_forward(result, args.lags, targets)
        difference = check_agreement(result, reference, targets)
        scaled = reference_seconds * size.variables / targets
        note = (
            ""
            if targets == size.variables
            else f"  (reference: {targets} targets, scaled x{size.variables / targets:g})"
        )
        print(
            f"{size!s:>8} {len(result.features):>8} {len(result.batches):>7} {seconds:>10.2f} "
            f"{scaled:>11.1f} {scaled / seconds:>7.0f}x {difference:>12.1e}{note}"
        )

    print(
        "\nmemory: peak traced MiB of one run (data source cached), 20 variables, "
        f"batches of {args.batch_days} days"
    )
    print(f"{'years':>8} {'peak MiB':>9} {'ratio to first':>14}")
    first = None
    for years in (int(y) for y in args.memory_years.split(",")):
        peak = peak_memory(Size(20, years), args.lags, args.batch_days)
        first = first or peak
        print(f"{years:>8} {peak:>9.1f} {peak / first:>14.2f}")


if __name__ == "__main__":
    main()
