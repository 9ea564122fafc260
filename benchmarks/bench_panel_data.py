"""Time and memory of reading a long Parquet panel the way a run does, against pandas.

Generates (once; reused when present) ``builtin:panel`` as long Parquet sorted by
``(unique_id, ds)``, then measures, each step in its own process so its peak RSS is its
own:

* ``generate``: simulating and writing the panel (also 10,000 series on their own, the
  generator's headline size);
* ``catalog``: what the driver needs, the union of timestamps and the list of series
  (``LongParquetSource.timestamps()/variables()``), against pandas reading the two
  columns and taking their unique values;
* ``shard``: what a task needs, a shard of ``--shard`` consecutive series over
  ``--window-days``, as a wide (timestamps x series) float frame: the source's first load
  (including its own time index) and the next ones, against ``pd.read_parquet`` with the
  same filters pushed down plus ``DataFrame.pivot``;
* ``baseline``: the interpreter with the imports alone, to read the RSS figures against.

    python benchmarks/bench_panel_data.py                          # 100,000 x 10 years
    python benchmarks/bench_panel_data.py --series 10000 --dir /tmp/panels
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recursive_training.data import open_source
from recursive_training.data.panel import PanelSpec, simulate_panel, write_panel


def cpu_seconds() -> float:
    """CPU time of this process, all its threads (less sensitive than wall time to other
    processes competing for the cores)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def panel_path(folder: Path, spec: PanelSpec) -> Path:
    return folder / f"panel-{spec.n_series}x{spec.years:g}-seed{spec.seed}.parquet"


def shards(
    spec: PanelSpec, size: int, window_days: int, count: int
) -> list[tuple[list[str], pd.Timestamp, pd.Timestamp]]:
    """``count`` shards spread over the panel, each with a window spread over the years."""
    rng = np.random.default_rng(0)
    chosen = []
    stamps = spec.timestamps
    for _ in range(count):
        start = int(rng.integers(0, max(1, spec.n_series - size)))
        first = stamps[int(rng.integers(0, max(1, len(stamps) - window_days * 5 // 7)))]
        chosen.append(
            (
                spec.series_names[start : start + size],
                first,
                first + pd.Timedelta(days=window_days - 1),
            )
        )
    return chosen


def step(name: str, path: Path, spec: PanelSpec, shard: int, window_days: int) -> dict[str, Any]:
    """One measurement, run in a fresh process by ``main``."""
    began = time.perf_counter()
    if name == "baseline":
        return {"seconds": 0.0}
    if name == "generate-10k":
        small = PanelSpec(n_series=10_000, years=10, seed=spec.seed)
        simulate_panel(small)
        simulated = time.perf_counter() - began
        write_panel(small, path.with_name("generate-10k.parquet"))
        return {"seconds": time.perf_counter() - began, "simulate_seconds": simulated}
    if name == "catalog":
        source = open_source(str(path))
        stamps, names = source.timestamps(), source.variables()
        return {
            "seconds": time.perf_counter() - began,
            "timestamps": len(stamps),
            "series": len(names),
        }
    if name == "catalog-pandas":
        frame = pd.read_parquet(path, columns=["unique_id", "ds"])
        return {
            "seconds": time.perf_counter() - began,
            "timestamps": len(frame["ds"].unique()),
            "series": len(frame["unique_id"].unique()),
        }
    work = shards(spec, shard, window_days, 3)
    if name == "shard":
        source = open_source(str(path))
        source.timestamps()  # the process's time index, once (timed apart from the loads)
        indexed = time.perf_counter() - began
        return {"index_seconds": indexed, **timed_loads(source.load, work)}
    assert name == "shard-pandas"

    def pandas_load(names: list[str], first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
        filters = [("unique_id", "in", names), ("ds", ">=", first), ("ds", "<=", last)]
        rows = pd.read_parquet(path, filters=filters)
        return rows.pivot(index="ds", columns="unique_id", values="y")[names]

    return timed_loads(pandas_load, work)


def timed_loads(
    load: Callable[[list[str], pd.Timestamp, pd.Timestamp], pd.DataFrame],
    work: list[tuple[list[str], pd.Timestamp, pd.Timestamp]],
) -> dict[str, Any]:
    """Wall and CPU time of each shard load: the first, and the median of the others."""
    times, cpu = [], []
    for names, first, last in work:
        began, used = time.perf_counter(), cpu_seconds()
        frame = load(names, first, last)
        times.append(time.perf_counter() - began)
        cpu.append(cpu_seconds() - used)
    return {
        "seconds": times[0],
        "next_seconds": float(np.median(times[1:])),
        "load_cpu": float(np.median(cpu[1:])),
        "shape": list(frame.shape),
        "checksum": float(np.nansum(frame.to_numpy())),
    }


def measure(name: str, args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """Run ``step`` in a child process; its figures plus its peak RSS."""
    command = [
        sys.executable,
        __file__,
        "--step",
        name,
        "--path",
        str(path),
        "--series",
        str(args.series),
        "--years",
        str(args.years),
        "--seed",
        str(args.seed),
        "--shard",
        str(args.shard),
        "--window-days",
        str(args.window_days),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"step {name} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--years", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shard", type=int, default=1000, help="series per shard")
    parser.add_argument("--window-days", type=int, default=365)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/pulse-panel-bench"))
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    spec = PanelSpec(n_series=args.series, years=args.years, seed=args.seed)
    if args.step:
        result = step(args.step, args.path, spec, args.shard, args.window_days)
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib(), "cpu_seconds": cpu_seconds()}))
        return

    args.dir.mkdir(parents=True, exist_ok=True)
    path = panel_path(args.dir, spec)
    rows = spec.n_series * spec.n_rows
    if path.exists():
        print(f"panel: {path} ({rows:,} rows, reused)")
    else:
        began = time.perf_counter()
        write_panel(spec, path)
        print(f"panel: {path} ({rows:,} rows) written in {time.perf_counter() - began:.1f} s")
    print(f"  {path.stat().st_size / 2**20:,.0f} MiB on disk")
    figures = {
        name: measure(name, args, path)
        for name in (
            "baseline",
            "generate-10k",
            "catalog",
            "catalog-pandas",
            "shard",
            "shard-pandas",
        )
    }
    base = figures["baseline"]["peak_rss_mib"]
    print(
        f"baseline (imports only): peak RSS {base:,.0f} MiB, CPU "
        f"{figures['baseline']['cpu_seconds']:.2f} s (CPU figures of whole steps include it)"
    )
    generated = figures["generate-10k"]
    print(
        f"generate 10,000 x 10 years: simulate {generated['simulate_seconds']:.2f} s, "
        f"simulate + write {generated['seconds']:.2f} s (CPU {generated['cpu_seconds']:.2f} s), "
        f"peak RSS {generated['peak_rss_mib']:,.0f} MiB"
    )
    a, b = figures["catalog"], figures["catalog-pandas"]
    assert (a["timestamps"], a["series"]) == (b["timestamps"], b["series"]), (a, b)
    print(
        f"timestamps + series ({a['timestamps']:,} x {a['series']:,}): Pulse {a['seconds']:.2f} s "
        f"(CPU {a['cpu_seconds']:.2f} s), pandas {b['seconds']:.2f} s (CPU "
        f"{b['cpu_seconds']:.2f} s): {b['seconds'] / a['seconds']:.1f}x; peak RSS "
        f"{a['peak_rss_mib']:,.0f} vs {b['peak_rss_mib']:,.0f} MiB"
    )
    a, b = figures["shard"], figures["shard-pandas"]
    assert a["shape"] == b["shape"] and np.isclose(a["checksum"], b["checksum"]), (a, b)
    print(
        f"{args.shard} series x {args.window_days} days: Pulse {a['next_seconds']:.3f} s a load "
        f"(CPU {a['load_cpu']:.3f} s; the first {a['seconds']:.3f} s, after the process's time "
        f"index {a['index_seconds']:.2f} s); pandas read_parquet(filters) + pivot "
        f"{b['next_seconds']:.3f} s (CPU {b['load_cpu']:.3f} s; the first {b['seconds']:.3f} s): "
        f"{b['next_seconds'] / a['next_seconds']:.1f}x wall, {b['load_cpu'] / a['load_cpu']:.1f}x "
        f"CPU; peak RSS {a['peak_rss_mib']:,.0f} vs {b['peak_rss_mib']:,.0f} MiB"
    )


if __name__ == "__main__":
    main()
