"""The fixed cost of a run: Pulse against per-fold scikit-learn refits on the same VAR design.

The reference is what a user of scikit-learn would write for the same walk-forward
problem: build the design once with pandas (an intercept, the last L changes of every
variable; the next change of every variable as targets), then for every fold of
``--batch-days`` days fit one multi-output ``LinearRegression`` on every sample realized
before the fold and predict the fold's origins. Pulse runs the same problem as the CLI
does (``run_training.run``: plan, both map stages, the scan, rules, metrics, the
prediction spool, and writing predictions, state and results.json), with the default
rules and ``--ridge-alpha 0`` so that it fits the same least-squares models; it does
strictly more work than the reference (rules, metrics, files).

Both sides run in this process on one BLAS thread (threadpoolctl; the CLI subprocess
gets ``OPENBLAS_NUM_THREADS=1``), with the data already in memory, best of ``--repeat``
each; the script checks that their predictions agree before it prints the ratio. The CLI's start-up
(interpreter, imports, data generation) is measured apart: the wall time of the
``pulse-train`` subprocess minus the in-process time of the same run.

    python benchmarks/bench_fixed_cost.py                       # V = 10, 50, 100; 30 years
    python benchmarks/bench_fixed_cost.py --sizes 10x20 --repeat 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from bench_pipeline import (  # the same workloads (script folder on sys.path)
    Size,
    add_sizes_argument,
)
from sklearn.linear_model import LinearRegression
from threadpoolctl import threadpool_limits

from recursive_training.config import TrainingConfig
from recursive_training.data import open_source
from recursive_training.runner import run

LAGS = 5
HORIZON = 1


def best_of(repeat: int, work: Callable[[], object]) -> tuple[float, float, object]:
    """The fastest of ``repeat`` runs in wall and in CPU seconds of this process (the
    machine is shared: CPU time is the steadier figure), and the last run's value."""
    walls, cpus, value = [], [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        value = work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), value


def pulse_config(size: Size, output_dir: str, batch_days: int) -> TrainingConfig:
    """The run both the in-process and the CLI measurement make."""
    return TrainingConfig.build(
        input_data=size.uri,
        lags=LAGS,
        horizon=HORIZON,
        batch_size_days=batch_days,
        ridge_alpha=0.0,
        output_dir=output_dir,
        overwrite=True,
        progress=False,
    )


def pulse_run(size: Size, output_dir: str, batch_days: int) -> None:
    """One in-process run as the CLI makes it, files written to ``output_dir``."""
    run(pulse_config(size, output_dir, batch_days))


def pulse_predictions(output_dir: str) -> tuple[pd.DataFrame, int]:
    """A run's walk-forward predictions (origins x variables) and how many batches made them."""
    files = json.loads((Path(output_dir) / "results.json").read_text())["files"]
    frame = pd.read_parquet(Path(output_dir) / files["predictions"])
    wide = frame.pivot(index="origin", columns="variable", values="predicted")
    wide.columns = wide.columns.astype(str)
    return wide.sort_index(), int(frame["batch_id"].nunique())


def reference_run(levels: pd.DataFrame, batch_days: int) -> pd.DataFrame:
    """Per fold: one multi-output LinearRegression on every earlier-realized sample."""
    changes = levels.diff()
    features = pd.concat(
        [changes.shift(lag).add_suffix(f".lag{lag}") for lag in range(LAGS)], axis=1
    )
    targets = levels.shift(-HORIZON) - levels
    realized = pd.Series(levels.index, index=levels.index).shift(-HORIZON)
    keep = features.notna().all(axis=1) & targets.notna().all(axis=1) & realized.notna()
    x, y = features[keep].to_numpy(), targets[keep].to_numpy()
    realized_at, origins = realized[keep].to_numpy(), levels.index[keep]
    threshold = max(30, 2 * (1 + x.shape[1]))  # Pulse's default --min-train-samples
    start, end = levels.index[0], levels.index[-1] + pd.Timedelta(days=1)
    edges = pd.date_range(start, end, freq=pd.Timedelta(days=batch_days)).append(
        pd.DatetimeIndex([end])
    )
    predicted, stamps = [], []
    for fold_start, fold_end in itertools.pairwise(edges):
        known = realized_at < fold_start.to_datetime64()
        mine = (origins >= fold_start) & (origins < fold_end)
        if known.sum() < threshold or not mine.any():
            continue
        model = LinearRegression().fit(x[known], y[known])
        predicted.append(model.predict(x[mine]))
        stamps.append(origins[mine])
    return pd.DataFrame(
        np.concatenate(predicted),
        index=pd.DatetimeIndex(np.concatenate(stamps), name="origin"),
        columns=levels.columns,
    )


def relative_difference(ours: pd.DataFrame, reference: pd.DataFrame) -> float:
    """Largest |difference| over the largest |prediction|, after checking the same samples."""
    if not ours.index.equals(reference.index) or list(ours.columns) != list(reference.columns):
        raise SystemExit(
            f"the two sides predicted different samples: Pulse {ours.shape}, "
            f"reference {reference.shape}"
        )
    a, b = ours.to_numpy(), reference.to_numpy()
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def cli_seconds(size: Size, output_dir: str, batch_days: int) -> float:
    """Wall time of the same run through ``pulse-train`` in a fresh interpreter."""
    command = [
        sys.executable,
        "-m",
        "recursive_training.run_training",
        "--input-data",
        size.uri,
        "--lags",
        str(LAGS),
        "--batch-size-days",
        str(batch_days),
        "--ridge-alpha",
        "0",
        "--output-dir",
        output_dir,
        "--overwrite",
        "--no-progress",
        "--log-level",
        "WARNING",
    ]
    began = time.perf_counter()
    environment = os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=environment)
    return time.perf_counter() - began


def main() -> None:
    """Measure every size and print one row each, then the CLI's start-up."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_sizes_argument(parser, "10x30,50x30,100x30")
    parser.add_argument("--batch-days", type=int, default=365, help="fold length (default 365)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N per side (default 3)")
    args = parser.parse_args()

    print(
        f"walk-forward VAR, lags {LAGS}, folds of {args.batch_days} days, one BLAS thread, "
        f"best of {args.repeat}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'size':>7} {'features':>8} {'folds':>5} {'Pulse s':>8} {'sklearn s':>9} "
        f"{'ratio':>6} {'Pulse CPU':>9} {'sklearn CPU':>11} {'ratio':>6} {'max rel diff':>12}"
    )
    with tempfile.TemporaryDirectory() as scratch, threadpool_limits(1):
        pulse_run(Size(2, 2), scratch, args.batch_days)  # imports and first calls untimed
        for size in args.sizes:
            source = open_source(size.uri)  # generated once, outside both timings
            levels = source.load(source.variables(), pd.Timestamp.min, pd.Timestamp.max)
            ours_wall, ours_cpu, _ = best_of(
                args.repeat, lambda s=size: pulse_run(s, scratch, args.batch_days)
            )
            ours, folds = pulse_predictions(scratch)
            theirs_wall, theirs_cpu, theirs = best_of(
                args.repeat, lambda v=levels: reference_run(v, args.batch_days)
            )
            assert isinstance(theirs, pd.DataFrame)
            difference = relative_difference(ours, theirs)
            print(
                f"{size!s:>7} {1 + LAGS * size.variables:>8} {folds:>5} {ours_wall:>8.3f} "
                f"{theirs_wall:>9.3f} {theirs_wall / ours_wall:>5.1f}x {ours_cpu:>9.3f} "
                f"{theirs_cpu:>11.3f} {theirs_cpu / ours_cpu:>5.1f}x {difference:>12.1e}"
            )
        first = args.sizes[0]
        in_process, _, _ = best_of(args.repeat, lambda: pulse_run(first, scratch, args.batch_days))
        whole = min(cli_seconds(first, scratch, args.batch_days) for _ in range(args.repeat))
        print(
            f"\nCLI, {first}: whole process {whole:.2f} s, of which start-up (interpreter, "
            f"imports, data generation) {whole - in_process:.2f} s"
        )


if __name__ == "__main__":
    main()
