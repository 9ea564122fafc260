"""Cost of ``--ridge-alpha auto`` against a fixed penalty, and against a grid search that
refits per candidate, measured in the same run.

1. Pulse, the same workload twice: ``--ridge-alpha 0.01`` and ``--ridge-alpha auto`` with
   the default 13-value grid (var, lags 5, 90-day batches, in-process, outputs not
   written), interleaved over ``--repeats`` rounds, each with its best wall and best CPU
   seconds (the machine is shared: CPU seconds are the steadier figure). The issue's
   target: auto <= 3x fixed at 100 variables x 30 years. Then the floor: the LAPACK
   kernels that one batch's prefix system needs at the least, timed on a system of the
   same size (fixed: a Cholesky factorization and a solve for the targets; auto: a
   tridiagonal reduction, Q applied to the targets, to the batch's rows and to the chosen
   coefficients, a tridiagonal solve per grid value and one product for the grid's row
   predictions), and the ratio a run would have if its prefix models cost only those
   kernels and everything else stayed as measured.
2. The library route: for every batch and every grid value, refit scikit-learn's Ridge
   on the standardized samples realized before the batch and predict the batch (what
   skforecast's ``grid_search_forecaster`` with refit does per candidate), then choose per
   target as Pulse does. It is timed on ``--reference-batches`` evaluated batches and
   scaled to all of them (each batch's refits are independent, and later batches are
   larger, so the scaling is a lower bound of its cost).
3. skforecast itself (``--skforecast-python``): its ``grid_search_forecaster`` in its
   backtesting, against Pulse ``--model ar --ridge-alpha auto`` on the same CSV file (the
   synthetic panel of ``--skforecast-size`` written once), timed in the same invocation,
   interleaved, best of ``--repeats``. skforecast 0.26 pins pandas < 3, so it runs in its
   own venv as a subprocess (``benchmarks/skforecast_grid_search.py``, which imports
   nothing from Pulse and times its own work, data loaded and imports done, as Pulse's side
   is timed with its data source already open). Create the reference interpreter once::

       python3 -m venv /tmp/venv-skforecast
       /tmp/venv-skforecast/bin/pip install skforecast "pandas<3" scikit-learn

   (measured with skforecast 0.26.0, pandas 2.3.3, scikit-learn 1.9.1, numpy 2.4.6; the
   script prints the versions it ran with). The settings are aligned as follows.

   - Model: Pulse's ``ar`` (each series on its own 5 lagged first differences, an
     unpenalized intercept) is one ``ForecasterRecursive(lags=5, differentiation=1)`` per
     series. skforecast's multi-series forecaster fits one model for all series (Pulse's
     ``pooled``), and a VAR would be a ``ForecasterDirectMultiVariate`` per target; the
     per-series pairing is the one where both fit exactly the same models.
   - Penalty: ridge on z-scored features with a mean loss (``statistics.ridge_penalty``),
     i.e. scikit-learn ``Ridge(alpha * n)`` on standardized features; n grows with the
     expanding window, so the reference's estimator scales the penalty at each fit.
   - Folds = Pulse's batches: ``TimeSeriesFold(steps=1, refit=<rows per batch>,
     fixed_train_size=False)``, one-step-ahead predictions, a refit on the expanding window
     at each batch start. skforecast counts folds in rows and Pulse batches in days, so the
     batches must hold the same number of rows: on business-day data, a multiple of 7 days
     (91 by default, 364), not 90 or 365. A refit fold trains through the forecast origin,
     one sample more than Pulse's batch model (which knows samples realized before the
     batch): a ``weight_func`` gives that sample weight 0. With that, the sanity check
     below finds the same predictions (to rounding) at a fixed alpha.
   - The same 13-value grid (``DEFAULT_ALPHA_GRID``) and metric (squared error of the
     one-step change).
   - Not aligned, by design of the two: skforecast picks one alpha per series for the
     whole backtest (its metric over every fold, later folds included); Pulse picks per
     batch and target from earlier batches only. The work compared is the same: every grid
     value refitted at every batch and its predictions scored. Since the predictions are
     the same, skforecast's pick per series must equal the grid value of least total
     error in Pulse's auto run; the benchmark checks that too.
   - Also timed: ``TimeSeriesFold(steps=<rows per batch>, refit=True)``, one fold per
     batch, the set-up skforecast's user guide starts from. It refits as often, but
     predicts each batch recursively from its first origin (multi-step, so not Pulse's
     forecasts, and not checked against them); one predict call per row either way, in a
     recursive loop instead of a fold each, so it costs skforecast less.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_alpha_auto.py --repeats 3
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_alpha_auto.py --sizes 100x30,20x10 \
        --repeats 3 --reference-batches 0       # the ratios only
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_alpha_auto.py --sizes 20x10 \
        --reference-batches 0 --skforecast-python /tmp/venv-skforecast/bin/python \
        --repeats 3                             # against skforecast (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from bench_horizons import interleaved, solve_share  # script folder on sys.path
from bench_models import best_of
from bench_pipeline import Size, add_sizes_argument, parse_size
from scipy.linalg import lapack

from recursive_training.config import TrainingConfig
from recursive_training.constants import DEFAULT_ALPHA_GRID
from recursive_training.data import open_source
from recursive_training.penalty import TRIDIAGONAL_FROM
from recursive_training.stages import TrainingPipeline, TrainingResult

LAGS = 5
BATCH_DAYS = 90
SKFORECAST_SCRIPT = Path(__file__).with_name("skforecast_grid_search.py")
SKFORECAST_VENV = (
    "python3 -m venv /tmp/venv-skforecast && /tmp/venv-skforecast/bin/pip install skforecast "
    '"pandas<3" scikit-learn, then pass --skforecast-python /tmp/venv-skforecast/bin/python'
)


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


def best_seconds(work: Callable[[], object]) -> float:
    """Best CPU seconds of ``work`` over 20 calls after a warm-up call (the runs' ratios
    are in CPU seconds too)."""
    work()
    return best_of(20, work, time.process_time)


def kernel_seconds(features: int, targets: int, rows: int) -> tuple[float, dict[str, float]]:
    """Seconds of the least LAPACK work one prefix system needs: with a fixed penalty, and
    with auto (by part), on a random positive definite system of this size."""
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((3 * features, features))
    gram = sample.T @ sample
    rhs = rng.standard_normal((features, targets))
    both = np.asfortranarray(rng.standard_normal((features - 1, targets + rows)))
    grid = np.asarray(DEFAULT_ALPHA_GRID) * features
    fixed = best_seconds(
        lambda: lapack.dpotrs(lapack.dpotrf(gram, lower=0, clean=0)[0], rhs, lower=0)
    )
    work = int(lapack.dsytrd_lwork(features, lower=1)[0])
    reduced, diagonal, off_diagonal, tau, _ = lapack.dsytrd(gram.T.copy(), lower=1, lwork=work)
    reflectors = np.asfortranarray(reduced[1:, :-1])
    row_block = np.asfortranarray(both[:, :rows])
    target_block = np.asfortranarray(both[:, :targets])
    solved = np.empty((len(grid), features - 1, rows))

    def tridiagonal_solves() -> None:
        for g, alpha in enumerate(grid):
            solved[g] = lapack.dptsv(diagonal[1:] + alpha, off_diagonal[1:], row_block)[2]

    auto = {
        "tridiagonal reduction": best_seconds(
            lambda: lapack.dsytrd(gram.T.copy(), lower=1, lwork=work, overwrite_a=1)
        ),
        "rotations": best_seconds(
            lambda: lapack.dormqr("L", "T", reflectors, tau, both, 64 * features)
        )
        + best_seconds(
            lambda: lapack.dormqr("L", "N", reflectors, tau, target_block, 64 * features)
        ),
        "grid solves": best_seconds(tridiagonal_solves),
        "grid predictions": best_seconds(
            lambda: solved.transpose(0, 2, 1).reshape(-1, features - 1) @ target_block
        ),
    }
    return fixed, auto


def kernel_floor(size: Size) -> None:
    """The ratio auto would have if its prefix models cost only their LAPACK kernels (of
    the tridiagonal path, which one system takes from ``TRIDIAGONAL_FROM`` features)."""
    if size.variables * LAGS < TRIDIAGONAL_FROM:
        print(f"{size}: no kernel floor (below {TRIDIAGONAL_FROM} features auto diagonalizes)")
        return
    results: list[TrainingResult] = []
    total, models = solve_share(lambda: results.append(run(size, 0.01)))
    systems = len(results[0].evaluations)
    features, targets = 1 + size.variables * LAGS, size.variables
    rows = round(BATCH_DAYS * 5 / 7)  # business days of one batch: its evaluation rows
    fixed, auto = kernel_seconds(features - 1, targets, rows)
    rest = total - models
    floor = (rest + systems * sum(auto.values())) / (rest + systems * fixed)
    parts = ", ".join(f"{name} {seconds * 1e3:.2f}" for name, seconds in auto.items())
    print(
        f"{size}: per prefix system ({features} features, {targets} targets, {rows} rows a "
        f"batch): fixed {fixed * 1e3:.2f} ms (Cholesky and solve), auto at least "
        f"{sum(auto.values()) * 1e3:.2f} ms ({parts}); the rest of a fixed run "
        f"{rest:.2f} s CPU, {systems} systems: auto would still take {floor:.2f}x fixed"
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
    from sklearn.linear_model import Ridge  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]

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


# --- 3. skforecast's grid search in its backtesting, in its own interpreter -----------------


def write_csv(size: Size, folder: Path) -> Path:
    """The synthetic panel as a wide CSV (exact float round trip), read by both sides."""
    source = open_source(size.uri)
    path = folder / f"synthetic-{size}.csv"
    source.load(source.variables(), pd.Timestamp.min, pd.Timestamp.max).rename_axis("date").to_csv(
        path
    )
    return path


def run_ar(data: Path, alpha: float | str, batch_days: int) -> TrainingResult:
    """Pulse ``ar`` on the CSV, as skforecast's ``ForecasterRecursive`` per series fits it."""
    return TrainingPipeline().execute(
        TrainingConfig.build(
            input_data=str(data),
            model="ar",
            lags=LAGS,
            batch_size_days=batch_days,
            ridge_alpha=alpha,
            rules=["model"],
        )
    )


def batch_rows(result: TrainingResult, data: Path) -> int:
    """Rows per batch, which must be the same for every batch but the last (skforecast's
    folds count rows), with batch 1 the first evaluated."""
    stamps = open_source(str(data)).timestamps()
    starts = stamps.searchsorted(pd.DatetimeIndex([b.start for b in result.batches]))
    sizes = set(np.diff(starts).tolist())
    if len(sizes) != 1 or starts[0] != 0 or min(result.evaluations) != 1:
        raise SystemExit(
            f"batches of {result.config.batch_size_days} days hold {sorted(sizes)} rows; "
            "skforecast's folds count rows: use a multiple of 7 days on business-day data"
        )
    return int(sizes.pop())


def skforecast(python: str, data: Path, rows: int, *options: str) -> dict[str, object]:
    """One run of the reference script; its JSON report (seconds timed by itself)."""
    argv = [python, str(SKFORECAST_SCRIPT), str(data), "--lags", str(LAGS)]
    argv += ["--batch-rows", str(rows), "--initial-train-size", str(rows + 1), *options]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"skforecast reference failed ({python}): {last}")
    report: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return report


def check_reference(python: str) -> None:
    """One line on how to get the reference interpreter when it cannot import skforecast."""
    try:
        done = subprocess.run([python, "-c", "import skforecast"], capture_output=True)
    except OSError as error:
        raise SystemExit(
            f"--skforecast-python {python}: {error.strerror}; {SKFORECAST_VENV}"
        ) from None
    if done.returncode:
        raise SystemExit(f"--skforecast-python {python}: no skforecast; {SKFORECAST_VENV}")


def same_predictions(
    python: str, data: Path, rows: int, fixed: TrainingResult, folder: Path
) -> None:
    """skforecast's backtest at the fixed run's alpha against the fixed run's predictions."""
    path = folder / "skforecast-predictions.csv"
    alpha = fixed.config.ridge_alpha
    skforecast(python, data, rows, "--alpha", str(alpha), "--predictions", str(path), "fixed")
    theirs = pd.read_csv(path, parse_dates=["realized"])
    ours = fixed.predictions_frame()
    ours["realized"] = ours["realized"].astype(theirs["realized"].dtype)
    both = ours.merge(theirs, on=["realized", "variable"], suffixes=("", "_skforecast"))
    scale = both["variable"].map(ours.groupby("variable")["actual"].std())
    worst = ((both["predicted"] - both["predicted_skforecast"]).abs() / scale).max()
    print(
        f"sanity, alpha {alpha}: {len(both)} predictions in both of {len(ours)} Pulse and "
        f"{len(theirs)} skforecast; largest difference {worst:.1e} of the series' change "
        "std (the same models; rounding only)"
    )


def same_choice(auto: TrainingResult, chosen: dict[str, float]) -> None:
    """skforecast's alpha per series against the grid value of least total error in Pulse's
    auto run (its errors over every evaluated batch; the larger alpha on a tie, as Pulse)."""
    assert auto.penalties is not None
    totals = auto.penalties.known().totals
    grid = np.asarray(auto.penalties.grid)
    least = totals == totals.min(axis=0)
    ours = {t: grid[least[:, k]].max() for k, t in enumerate(auto.penalties.targets)}
    agree = sum(np.isclose(ours[t], chosen[t]) for t in ours)
    print(
        f"choice: skforecast's alpha per series (one for the whole backtest) equals the least "
        f"total error of Pulse's walk-forward errors for {agree} of {len(ours)} series"
    )


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of ``work`` in this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def skforecast_ratio(size: Size, python: str, batch_days: int, repeats: int) -> None:
    """Pulse ``ar`` auto against skforecast's grid search on the same file, interleaved."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        data = write_csv(size, Path(folder))
        fixed = run_ar(data, 0.01, batch_days)  # also opens (caches) the data source
        rows = batch_rows(fixed, data)
        same_predictions(python, data, rows, fixed, Path(folder))
        grid = ["--alphas", ",".join(map(str, DEFAULT_ALPHA_GRID)), "grid"]
        reports: dict[str, dict[str, object]] = {}

        def reference(protocol: str) -> Callable[[], tuple[float, float]]:
            def work() -> tuple[float, float]:
                report = skforecast(python, data, rows, "--protocol", protocol, *grid)
                reports[protocol] = report
                return float(report["wall"]), float(report["cpu"])  # type: ignore[arg-type]

            return work

        works = {
            "Pulse auto": lambda: timed(lambda: run_ar(data, "auto", batch_days)),
            "one-step": reference("one-step"),
            "batch": reference("batch"),
        }
        best: dict[str, tuple[float, float]] = {}
        for _ in range(repeats):
            for name, work in works.items():
                wall, cpu = work()
                old = best.get(name, (wall, cpu))
                best[name] = (min(old[0], wall), min(old[1], cpu))
        same_choice(run_ar(data, "auto", batch_days), reports["one-step"]["chosen"])  # type: ignore[arg-type]
    versions = ", ".join(f"{k} {v}" for k, v in reports["one-step"]["versions"].items())  # type: ignore[attr-defined]
    pulse_wall, pulse_cpu = best["Pulse auto"]
    print(
        f"{size}, ar, lags {LAGS}, {batch_days}-day batches ({rows} rows, "
        f"{len(fixed.evaluations)} evaluated), {len(DEFAULT_ALPHA_GRID)} grid values; best of "
        f"{repeats}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
        f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}; reference: {versions}"
    )
    print(f"  Pulse --ridge-alpha auto: {pulse_wall:.3f} s ({pulse_cpu:.3f} s CPU)")
    for protocol, label in (
        ("one-step", "TimeSeriesFold(steps=1, refit=rows), Pulse's forecasts"),
        ("batch", "TimeSeriesFold(steps=rows, refit=True), multi-step"),
    ):
        wall, cpu = best[protocol]
        print(
            f"  skforecast grid_search_forecaster, {label}: {wall:.1f} s ({cpu:.1f} s CPU): "
            f"speed-up {wall / pulse_wall:.0f}x wall, {cpu / pulse_cpu:.0f}x CPU"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sizes_argument(parser, "100x30")
    parser.add_argument("--reference-size", type=parse_size, default=parse_size("20x10"))
    parser.add_argument(
        "--reference-batches", type=int, default=10, help="0: skip the scikit-learn reference"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--skforecast-python",
        metavar="PATH",
        help="a Python with skforecast (pandas < 3): also time skforecast's grid search",
    )
    parser.add_argument("--skforecast-size", type=parse_size, default=parse_size("10x5"))
    parser.add_argument(
        "--skforecast-batch-days",
        type=int,
        default=91,
        help="batch length; a multiple of 7, so every batch holds the same business days",
    )
    args = parser.parse_args()
    if args.skforecast_python:
        check_reference(args.skforecast_python)
    for size in args.sizes:
        pulse_ratio(size, args.repeats)
        kernel_floor(size)
    if args.reference_batches:
        reference_ratio(args.reference_size, args.reference_batches)
    if args.skforecast_python:
        skforecast_ratio(
            args.skforecast_size, args.skforecast_python, args.skforecast_batch_days, args.repeats
        )
    else:
        print(f"skforecast's grid search not timed: {SKFORECAST_VENV}")


if __name__ == "__main__":
    main()
