"""Benchmark of the Dask engine: scaling 1 -> 2 workers, overhead on small runs, driver memory.

Each timed run is a fresh child process (the driver) so caches do not carry over and the
driver's BLAS thread count is set before numpy loads; Dask workers always run one BLAS
thread (the nanny sets OPENBLAS_NUM_THREADS=1). Cluster start-up is timed apart from the
run. Prints small tables; run ``python benchmarks/bench_dask.py --help`` for the knobs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LARGE = "builtin:synthetic?n_variables={variables}&years={years}&seed=1"
SMALL = "builtin:synthetic?n_variables=4&years=20&seed=1"
BUSY_LOAD = 1.5  # 1-minute load average above which a figure is measured again


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: run one pipeline as ``spec`` says and return its timings."""
    from recursive_training.config import TrainingConfig
    from recursive_training.engines import DaskEngine, Engine, SerialEngine
    from recursive_training.stages import TrainingPipeline

    config = TrainingConfig.build(**spec["config"])
    began = time.perf_counter()
    engine: Engine = DaskEngine.local(spec["workers"]) if spec["workers"] else SerialEngine()
    marks: dict[tuple[str, str], float] = {}

    def mark(stage: str, done: int, total: int) -> None:
        marks.setdefault((stage, "start"), time.perf_counter())
        if done == total:
            marks[(stage, "end")] = time.perf_counter()

    if isinstance(engine, DaskEngine):  # warm the workers: imports are start-up, not batches
        engine.client.run(importlib.import_module, "recursive_training.stages")
    startup = time.perf_counter() - began
    with engine:
        began = time.perf_counter()
        result = TrainingPipeline(progress=mark, engine=engine).execute(config)
        seconds = time.perf_counter() - began
    stats = next(iter(result.statistics.values())).stats
    return {
        "startup": startup,
        "total": seconds,
        "statistics": marks[("statistics", "end")] - marks[("statistics", "start")],
        "scan": marks[("evaluation", "start")] - marks[("statistics", "end")],
        "evaluation": marks[("evaluation", "end")] - marks[("evaluation", "start")],
        "busy": sum(s.seconds for s in result.statistics.values())
        + sum(e.seconds for e in result.evaluations.values()),
        "batches": len(result.batches),
        "stats_bytes": stats.xtx.nbytes + stats.xty.nbytes,
    }


def kernel() -> float:
    """Child process: seconds for a fixed GEMM loop shaped like a batch's statistics."""
    import numpy as np

    features, targets = np.ones((1300, 501)), np.ones((1300, 601))
    began = time.perf_counter()
    for _ in range(60):
        features.T @ targets
    return time.perf_counter() - began


def ceiling(args: argparse.Namespace) -> None:
    """Throughput of two busy processes over one: the bound on any 2-worker speed-up here."""
    command = [sys.executable, __file__, "--kernel"]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    alone = float(subprocess.run(command, capture_output=True, env=env, check=True).stdout)
    pair = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    together = [float(p.communicate()[0]) for p in pair]
    print(f"\nHardware ceiling: one GEMM process {alone:.2f}s alone, two at once "
          f"{together[0]:.2f}s and {together[1]:.2f}s: two cores give "
          f"{2 * alone / max(together):.2f}x the throughput of one")


def run_child(spec: dict[str, Any], blas_threads: int) -> dict[str, Any]:
    """Run ``measure(spec)`` in a fresh interpreter and parse its JSON line."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(blas_threads)}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(spec)],
        capture_output=True, text=True, env=env, check=True, timeout=900,
    )
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def best_of(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The fastest of ``--repeat`` runs, plus one more when the machine was busy."""
    runs = []
    while len(runs) < args.repeat or (len(runs) == args.repeat and runs[-1]["load"] > BUSY_LOAD):
        load = os.getloadavg()[0]
        runs.append({**run_child(spec, args.driver_blas_threads), "load": load})
    return min(runs, key=lambda r: float(r["total"]))


def scaling(args: argparse.Namespace) -> None:
    """Serial, 1 and 2 workers on the large workload, per stage, for each batch size."""
    for batch_days in args.batch_days:
        config = {
            "input_data": LARGE.format(variables=args.variables, years=args.years),
            "lags": args.lags, "batch_size_days": batch_days, "rules": ["momentum(5)", "model"],
        }
        rows = {n: best_of({"config": config, "workers": n}, args) for n in (0, 1, 2)}
        one, two = rows[1], rows[2]
        print(f"\nScaling: {config['input_data']}, lags {args.lags}, {batch_days}-day batches "
              f"({one['batches']} batches, {one['stats_bytes'] / 1e6:.1f} MB of statistics each)")
        print(f"{'workers':>8} {'load':>5} {'start':>6} {'total':>7} {'stats':>7} {'scan':>6} "
              f"{'eval':>6} {'busy':>7} {'eff.':>5}")
        for n, row in rows.items():
            efficiency = row["busy"] / max(n, 1) / (row["statistics"] + row["evaluation"])
            print(f"{n or 'serial':>8} {row['load']:>5.2f} {row['startup']:>6.2f} "
                  f"{row['total']:>7.2f} {row['statistics']:>7.2f} {row['scan']:>6.2f} "
                  f"{row['evaluation']:>6.2f} {row['busy']:>7.2f} {efficiency:>5.2f}")
        maps = (one["statistics"] + one["evaluation"]) / (two["statistics"] + two["evaluation"])
        print(f"speed-up 2 vs 1 worker: whole run {one['total'] / two['total']:.2f}x, "
              f"map stages {maps:.2f}x")
    print("(seconds; busy = task seconds on workers; eff. = busy / workers / map wall time)")


def overhead(args: argparse.Namespace) -> None:
    """A small run: serial vs an already started 2-worker local cluster."""
    config = {"input_data": SMALL, "batch_size_days": 365}
    serial = best_of({"config": config, "workers": 0}, args)
    dask = best_of({"config": config, "workers": 2}, args)
    per_batch = (dask["total"] - serial["total"]) / serial["batches"] * 1000
    print(f"\nSmall run: {SMALL}, 365-day batches ({serial['batches']} batches)")
    print(f"{'engine':>8} {'load':>5} {'start':>6} {'total':>7}")
    for name, row in (("serial", serial), ("dask x2", dask)):
        print(f"{name:>8} {row['load']:>5.2f} {row['startup']:>6.2f} {row['total']:>7.2f}")
    print(f"Dask / serial: {dask['total'] / serial['total']:.1f}x without cluster start-up, "
          f"{(dask['total'] + dask['startup']) / serial['total']:.1f}x with it; "
          f"{per_batch:.0f} ms extra per batch")


def driver_memory(args: argparse.Namespace) -> None:
    """Peak RSS of the CLI driver against a remote scheduler, for longer and longer histories."""
    from distributed import LocalCluster

    batch_days = args.batch_days[0]
    print(f"\nDriver peak RSS (pulse-train against a 2-worker scheduler, {args.rss_variables} "
          f"variables, lags {args.lags}, {batch_days}-day batches)")
    print(f"{'years':>6} {'rows':>7} {'batches':>8} {'statistics':>11} {'predictions':>12} "
          f"{'peak RSS':>9}")
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        for years in args.rss_years:
            with tempfile.TemporaryDirectory() as out:
                argv = [
                    sys.executable, "-m", "recursive_training.run_training",
                    "--dask-scheduler-address", cluster.scheduler_address,
                    "--input-data", LARGE.format(variables=args.rss_variables, years=years),
                    "--lags", str(args.lags), "--batch-size-days", str(batch_days),
                    "--output-dir", out,
                    "--log-level", "WARNING",
                ]
                env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.driver_blas_threads)}
                child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
                _, status, usage = os.wait4(child.pid, 0)
                if status != 0:
                    raise SystemExit(f"pulse-train failed for {years} years (status {status})")
                document = json.loads((Path(out) / "results.json").read_text())
            rows, batches = document["data"]["rows"], document["data"]["batches"]
            features = 1 + args.rss_variables * args.lags
            statistics = batches * features * (features + args.rss_variables) * 8 / 1e6
            predictions = rows * args.rss_variables * 37 / 1e6  # bytes per row of the frame
            print(f"{years:>6} {rows:>7} {batches:>8} {statistics:>8.0f} MB {predictions:>9.0f} MB "
                  f"{usage.ru_maxrss / 1024:>6.0f} MB")


def main() -> None:
    """Parse flags and run the chosen parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--kernel", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variables", type=int, default=100, help="variables of the large run")
    parser.add_argument("--years", type=float, default=30, help="years of the large run")
    parser.add_argument("--lags", type=int, default=5, help="lags of every run")
    parser.add_argument(
        "--batch-days", type=int, nargs="+", default=[30, 365],
        help="batch sizes of the large run (the memory runs use the first)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure (fastest kept)")
    parser.add_argument(
        "--driver-blas-threads", type=int, default=1,
        help="OPENBLAS_NUM_THREADS of the driver (workers always use 1)",
    )
    parser.add_argument("--rss-variables", type=int, default=100, help="variables of the RSS runs")
    parser.add_argument(
        "--rss-years", type=float, nargs="+", default=[5, 10, 20], help="histories of the RSS runs"
    )
    parser.add_argument(
        "--parts", nargs="+", choices=["ceiling", "scaling", "overhead", "memory"],
        default=["ceiling", "scaling", "overhead", "memory"], help="which measurements to run",
    )
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    if args.kernel:
        print(kernel())
        return
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; "
          f"driver BLAS threads {args.driver_blas_threads}")
    parts = {"ceiling": ceiling, "scaling": scaling, "overhead": overhead, "memory": driver_memory}
    for part in args.parts:
        parts[part](args)


if __name__ == "__main__":
    main()
