"""Benchmark of several horizons in one run against one horizon and against separate runs.

Times, in-process, a whole walk-forward run (plan, statistics, scan, evaluation,
reduction) with one horizon, with ``--horizons`` (default 1,5,20,60) in one run, and the
same horizons as separate one-horizon runs, all on the same data in the same invocation,
and prints the ratios, and the floor that the prefix solves alone set (below). After an
untimed warm-up run, the runs are interleaved, ``--repeat`` rounds of all of them, and
each keeps its best wall and best CPU seconds (the machine is shared: CPU seconds of the
process are the steadier figure). Default size: the issue's, 100 variables x 30 years
daily, lags 5, 90-day batches. Run ``python benchmarks/bench_horizons.py --help``.

``--reference CHECKOUT`` (e.g. a worktree of ``main``) compares two versions of the code
in one invocation: each round runs this script once in a child process on that
checkout's code and once on this one's, in turn, and each version keeps the best of
each figure over the rounds.

The floor: every horizon solves its own prefix systems (each horizon's samples, hence
its X'X and penalty, differ), so with everything else shared perfectly, H horizons
would still take ``(H * S + T - S) / T`` times one, S being the CPU seconds one horizon
spends in the scan's prefix solves (``PrefixScan._model``) and T its whole run. Its X'X
products and predictions are its own too, so the real floor is higher (README).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_horizons.py --repeat 8 --reference /tmp/main

At 14c3bf5 against main at b4c8518, load 6.5-4.4 on 2 shared cores, CPU seconds (best of
8): var 1 horizon 0.64 -> 0.60 s, 4 horizons in one run 2.66 -> 2.54 s (4.18x -> 4.22x;
floor 2.7x); ar 0.15 -> 0.17 s and 0.55 -> 0.57 s (3.61x -> 3.45x; floor 1.7x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from recursive_training.config import TrainingConfig
from recursive_training.stages import TrainingPipeline
from recursive_training.stages.training_stages import PrefixScan


def interleaved(
    repeat: int, works: dict[str, Callable[[], object]]
) -> dict[str, tuple[float, float]]:
    """Best wall and best CPU seconds of each work, over ``repeat`` rounds that run every
    work once in turn (so a change of the machine's load hits all of them alike)."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeat):
        for name, work in works.items():
            wall, cpu = time.perf_counter(), time.process_time()
            work()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            old = best.get(name, (wall, cpu))
            best[name] = (min(old[0], wall), min(old[1], cpu))
    return best


def solve_share(work: Callable[[], object]) -> tuple[float, float]:
    """CPU seconds of ``work`` and of the prefix solves inside it."""
    solving = [0.0]
    model = PrefixScan._model

    def timed(self: PrefixScan, *args: object) -> object:
        began = time.process_time()
        try:
            return model(self, *args)  # type: ignore[arg-type]
        finally:
            solving[0] += time.process_time() - began

    PrefixScan._model = timed  # type: ignore[method-assign]
    try:
        began = time.process_time()
        work()
        return time.process_time() - began, solving[0]
    finally:
        PrefixScan._model = model  # type: ignore[method-assign]


def run(data: str, model: str, horizons: tuple[int, ...], args: argparse.Namespace) -> object:
    """One walk-forward run of ``horizons`` (the pipeline's result, outputs not written)."""
    config = TrainingConfig.build(
        input_data=data,
        model=model,
        horizons=horizons,
        lags=args.lags,
        batch_size_days=args.batch_size_days,
        rules=["momentum(5)", "model"],
    )
    return TrainingPipeline().execute(config)


def measure(args: argparse.Namespace) -> dict[str, dict[str, tuple[float, float]]]:
    """Per model, the best (wall, CPU) seconds of one horizon ("one"), all horizons in one
    run ("all") and each horizon alone (its number), and the CPU seconds of one horizon's
    run and of its prefix solves ("solves")."""
    horizons = _horizons(args)
    data = f"builtin:synthetic?n_variables={args.variables}&years={args.years}&seed=1"
    figures = {}
    for model in args.models.split(","):
        works: dict[str, Callable[[], object]] = {
            "one": lambda m=model: run(data, m, horizons[:1], args),
            "all": lambda m=model: run(data, m, horizons, args),
        }
        works |= {str(h): (lambda m=model, h=h: run(data, m, (h,), args)) for h in horizons}
        works["one"]()  # untimed: the first run of a process pays for imports and caches
        figures[model] = interleaved(args.repeat, works) | {"solves": solve_share(works["one"])}
    return figures


def measure_alternately(
    args: argparse.Namespace, checkouts: dict[str, Path]
) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
    """``measure`` of each checkout's code (this script run on it in a child process),
    one round each in turn, ``--repeat`` rounds; per checkout the best of each figure."""
    best: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    options = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in SIZES]
    for _ in range(args.repeat):
        for label, checkout in checkouts.items():
            path = os.pathsep.join([str(checkout), str(checkout / "operator")])
            child = subprocess.run(
                [sys.executable, __file__, "--child", "--repeat=1", *options],
                env=os.environ | {"PYTHONPATH": path},
                check=True,
                capture_output=True,
                text=True,
            )
            for model, figures in json.loads(child.stdout).items():
                mine = best.setdefault(label, {}).setdefault(model, {})
                for name, (first, second) in figures.items():
                    old = mine.get(name, (first, second))
                    if name == "solves":  # (run, solves) of one run: the cheapest run's pair
                        mine[name] = min(old, (first, second))
                    else:  # (wall, CPU): the best of each
                        mine[name] = (min(old[0], first), min(old[1], second))
    return best


SIZES = ("variables", "years", "lags", "batch_size_days", "horizons", "models")


def _horizons(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(int(h) for h in args.horizons.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variables", type=int, default=100)
    parser.add_argument("--years", type=int, default=30)
    parser.add_argument("--lags", type=int, default=5)
    parser.add_argument("--batch-size-days", type=int, default=90)
    parser.add_argument("--horizons", default="1,5,20,60")
    parser.add_argument("--models", default="var,ar")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--reference",
        type=Path,
        help="a checkout (e.g. a worktree of main) measured alternately with this code",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one round for measure_alternately, on the code of PYTHONPATH
        print(json.dumps(measure(args)))
        return
    print(
        f"{args.variables} variables x {args.years} years daily, lags {args.lags}, "
        f"{args.batch_size_days}-day batches, horizons {args.horizons}; best of {args.repeat}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if args.reference is None:
        report(measure(args), _horizons(args))
    else:
        this = Path(__file__).resolve().parent.parent
        by_code = measure_alternately(args, {"reference": args.reference.resolve(), "this": this})
        for label, figures in by_code.items():
            print(f"\n{label}: {this if label == 'this' else args.reference}")
            report(figures, _horizons(args))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def report(figures: dict[str, dict[str, tuple[float, float]]], horizons: tuple[int, ...]) -> None:
    """Print, per model, one horizon, all horizons in one run, separate runs, and the floor."""
    print(
        f"{'model':<7} {'measure':<34} {'wall s':>8} {'cpu s':>8} {'wall ratio':>10} "
        f"{'cpu ratio':>10}"
    )
    for model, best in figures.items():
        one_wall, one_cpu = best["one"]
        all_wall, all_cpu = best["all"]
        separate_wall = sum(best[str(h)][0] for h in horizons)
        separate_cpu = sum(best[str(h)][1] for h in horizons)
        rows = [
            (f"1 horizon ({horizons[0]})", one_wall, one_cpu),
            (f"{len(horizons)} horizons, one run", all_wall, all_cpu),
            (f"{len(horizons)} separate runs", separate_wall, separate_cpu),
        ]
        for name, wall, cpu in rows:
            print(
                f"{model:<7} {name:<34} {wall:>8.2f} {cpu:>8.2f} {wall / one_wall:>9.2f}x "
                f"{cpu / one_cpu:>9.2f}x"
            )
        print(
            f"{model:<7} one run vs separate runs: {separate_wall / all_wall:.2f}x faster "
            f"(cpu {separate_cpu / all_cpu:.2f}x)"
        )
        total, solving = best["solves"]
        floor = (len(horizons) * solving + total - solving) / total
        print(
            f"{model:<7} prefix solves: {solving:.2f} of {total:.2f} s CPU of one horizon; with "
            f"all else shared, {len(horizons)} horizons would still take {floor:.2f}x"
        )


if __name__ == "__main__":
    main()
