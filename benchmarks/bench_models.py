"""Benchmark of one batch of the ``ar`` and ``pooled`` structures at panel scale.

Times the statistics, solve and prediction of one batch (default 10,000 series x 260
rows, 5 lags: q = 6) in-process, best of ``--repeat``, next to a reference measured in
the same run: the same statistics from the dense (series x origins x q) design tensor
by einsum, the direct way to write them. Run ``python benchmarks/bench_models.py --help``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from recursive_training.models import build_structure


def best_of(
    repeat: int, run: Callable[[], object], clock: Callable[[], float] = time.perf_counter
) -> float:
    """Fastest of ``repeat`` runs, in seconds of ``clock`` (the machine is shared)."""
    times = []
    for _ in range(repeat):
        began = clock()
        run()
        times.append(clock() - began)
    return min(times)


def dense_statistics(levels: np.ndarray, origins: np.ndarray, lags: int, horizon: int) -> None:
    """Per-series X'X, X'y of the (series x origins x q) design tensor, missing rows zeroed."""
    changes = np.full_like(levels, np.nan)
    changes[1:] = np.diff(levels, axis=0)
    x = np.concatenate(
        [
            np.ones((levels.shape[1], len(origins), 1)),
            np.stack([changes[origins - lag].T for lag in range(lags)], axis=2),
        ],
        axis=2,
    )
    y = (levels[origins + horizon] - levels[origins]).T
    keep = np.isfinite(x).all(axis=2) & np.isfinite(y)
    x, y = np.where(keep[..., None], x, 0.0), np.where(keep, y, 0.0)
    np.einsum("vni,vnj->vij", x, x)
    np.einsum("vni,vn->vi", x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=260)
    parser.add_argument("--lags", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    margin = 60
    total_rows = args.rows + margin + 1
    levels = np.cumsum(
        rng.standard_normal((total_rows, args.series)) * 10 ** rng.uniform(-2, 3, args.series),
        axis=0,
    )
    origins = np.arange(margin, margin + args.rows)
    weights = np.ones(args.rows)
    names = [f"s{i}" for i in range(args.series)]
    reference = best_of(args.repeat, lambda: dense_statistics(levels, origins, args.lags, 1))
    print(
        f"{args.series:,} series x {args.rows} rows, lags {args.lags}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'model':8} {'statistics':>11} {'solve':>8} {'predict':>8} {'vs dense':>9}")
    for model in ("ar", "pooled"):
        structure = build_structure(model, names, args.lags, 1)
        moments, _ = structure.statistics(levels, origins, weights)
        coefficients = structure.solve(moments, 0.01, 30)
        assert coefficients is not None
        stats = best_of(args.repeat, lambda s=structure: s.statistics(levels, origins, weights))
        solve = best_of(args.repeat, lambda s=structure, m=moments: s.solve(m, 0.01, 30))
        predict = best_of(
            args.repeat, lambda s=structure, c=coefficients: s.predict(c, levels, origins)
        )
        print(f"{model:8} {stats:10.3f}s {solve:7.3f}s {predict:7.3f}s {reference / stats:8.1f}x")
    print(f"{'dense':8} {reference:10.3f}s  (reference: einsum over the design tensor)")


if __name__ == "__main__":
    main()
