"""The cost of --intervals: the same serial run with and without prediction intervals.

Both runs spool their predictions to a Parquet file as the CLI does; runs alternate
(none, intervals, none, ...) and the fastest of each is kept, so load on a shared machine
hits both alike; wall and CPU seconds of the process are printed (CPU is the steadier
figure on a loaded machine). Also printed: the residual sketch a run ends with (the driver's memory
for intervals), its compact form in the state file, and the sorted buffer of every residual
that exact quantiles would hold.

    python benchmarks/bench_intervals.py                 # var 100x30 and ar on 10,000 series
    python benchmarks/bench_intervals.py --repeat 3 --workloads var
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import pyarrow.parquet as pq

from recursive_training.config import TrainingConfig
from recursive_training.data import open_source
from recursive_training.results import PredictionsSpool
from recursive_training.stages import TrainingPipeline

LEVELS = (0.8, 0.95)


@dataclass(frozen=True)
class Workload:
    """One run's settings, without the interval levels."""

    key: str
    name: str
    settings: dict[str, object]


WORKLOADS = (
    Workload(
        "var",
        "var, 100 variables x 30 years, lags 5, 90-day batches",
        {
            "input_data": "builtin:synthetic?n_variables=100&years=30&seed=1",
            "lags": 5,
            "batch_size_days": 90,
            "rules": ["model"],
        },
    ),
    Workload(
        "ar",
        "ar, 10,000 series x 10 years, lags 5, 365-day batches",
        {
            "input_data": "builtin:panel?n_series=10000&years=10&seed=1",
            "model": "ar",
            "lags": 5,
            "batch_size_days": 365,
            "rules": ["model"],
        },
    ),
)


def timed_run(config: TrainingConfig) -> tuple[tuple[float, float], tuple[int, int, int]]:
    """Wall and CPU seconds of a serial run spooling its predictions and, with intervals,
    the bytes of the sketch of all its residuals (in memory and as the state stores it)
    and of those residuals as float64 (from its file)."""
    with PredictionsSpool() as spool:
        began, cpu = time.perf_counter(), time.process_time()
        result = TrainingPipeline(predictions_sink=spool).execute(config)
        path = spool.finish(result.predictions_frame())
        seconds = (time.perf_counter() - began, time.process_time() - cpu)
        if not config.intervals:
            return seconds, (0, 0, 0)
        table = pq.read_table(path, columns=["predicted", "actual"])
    residual = abs(table.column("actual").to_numpy() - table.column("predicted").to_numpy())
    sketch = result.state.sketch(0)
    assert sketch is not None and int(sketch.counts.sum()) == len(residual)
    return seconds, (sketch.expand().nbytes, sketch.nbytes, residual.nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each kind (best kept)")
    parser.add_argument(
        "--workloads",
        default="var,ar",
        help="comma-separated workloads to run: var, ar (default: both)",
    )
    args = parser.parse_args()
    chosen = args.workloads.split(",")
    print(
        f"{'workload':<56} {'none s':>8} {'intervals s':>11} {'ratio':>6} {'none cpu':>8} "
        f"{'int. cpu':>8} {'ratio':>6} {'sketch MiB':>10} {'in state':>8} {'exact MiB':>9}"
    )
    for workload in (w for w in WORKLOADS if w.key in chosen):
        plain = TrainingConfig.build(**workload.settings)
        with_intervals = TrainingConfig.build(**workload.settings, intervals=list(LEVELS))
        open_source(plain.input_data)  # the builtin data are generated once, before timing
        none_times, interval_times = [], []
        sizes = (0, 0, 0)
        for _ in range(args.repeat):
            none_times.append(timed_run(plain)[0])
            seconds, sizes = timed_run(with_intervals)
            interval_times.append(seconds)
        none, intervals = min(t[0] for t in none_times), min(t[0] for t in interval_times)
        none_cpu = min(t[1] for t in none_times)
        interval_cpu = min(t[1] for t in interval_times)
        print(
            f"{workload.name:<56} {none:>8.2f} {intervals:>11.2f} {intervals / none:>6.2f} "
            f"{none_cpu:>8.2f} {interval_cpu:>8.2f} {interval_cpu / none_cpu:>6.2f} "
            f"{sizes[0] / 2**20:>10.1f} {sizes[1] / 2**20:>8.1f} {sizes[2] / 2**20:>9.1f}"
        )


if __name__ == "__main__":
    main()
