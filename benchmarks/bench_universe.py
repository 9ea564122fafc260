"""A universe of series: ``ar`` and ``pooled`` at panel scale, against the libraries users pick.

Parts (``--parts``, all by default):

``universe``  10,000 series x 10 years of business days (the ``builtin:panel`` generator with
              its ``market`` series as ``--exog``), lags 5, 365-day batches, serial, as a
              user runs it: the whole ``pulse-train`` process, wall and CPU time and peak
              RSS. ``--reference CHECKOUT --repeat N`` runs that checkout's code and this
              one's alternately, N times each, and prints min / median: a before/after in
              one invocation on a shared machine.
``dask``      100,000 series x 10 years (``--dask-series``), ``ar``, on a scheduler and 2
              single-threaded worker processes started here (``--no-nanny``, so each
              worker's own RSS is measured): whole-run wall and CPU, and per phase (start,
              statistics, scan, evaluation, write; read from the run's --progress-file) the
              CPU seconds and peak RSS of the driver, the scheduler and each worker,
              sampled with psutil. The driver's log goes to ``<data-dir>/dask-<N>.log``.
``compare``   1,000 series x 10 years, in this process, one BLAS thread, same data in memory,
              CPU seconds (the machine is shared; both sides run on one thread):
              Pulse ``pooled`` (``--pooled-scale none``, ``--ridge-alpha 0``) against
              mlforecast ``cross_validation`` (h=1, step 1, ``refit`` every batch,
              ``LinearRegression`` on lags 1..L of the first differences), and Pulse ``ar``
              against per-series scikit-learn ``LinearRegression`` refits for every batch.
              How the settings are aligned is printed with the figures (and in README).
``var``       ``var`` for V = 100, 200, 400 (synthetic, 10 years): whole process time and
              peak RSS; then the guard's message for V = 3,000.

    python benchmarks/bench_universe.py --parts compare --series 200   # a quick look
    git -C /work/main worktree add --detach /tmp/pulse-ref main
    python benchmarks/bench_universe.py --parts universe --reference /tmp/pulse-ref --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from threadpoolctl import threadpool_limits

from recursive_training.config import TrainingConfig
from recursive_training.data import open_source
from recursive_training.data.panel import PanelSpec, simulate_panel, write_panel
from recursive_training.runner import run

LAGS = 5
# Whole weeks: every batch of a business-day panel is then exactly WEEKS_ROWS rows, which
# is what mlforecast's ``refit`` counts (windows, not days). 365-day batches hold 260 or
# 261 business days, so no ``refit`` value would follow them.
COMPARE_BATCH_DAYS = 364
COMPARE_BATCH_ROWS = 260
SINGLE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Measured:
    """One whole-process run: wall and CPU (user + system) seconds, peak RSS in bytes, exit
    status, last stderr line. CPU seconds are what to compare on a loaded machine."""

    seconds: float
    cpu: float
    peak_rss: int
    status: int
    message: str


# Runs a command and writes its peak RSS (KiB), CPU seconds and exit status to argv[1]. The
# measured command is this small process's child: Linux carries the peak RSS of a process
# across exec, so a command forked straight from this benchmark (holding a panel in
# memory) would report this benchmark's size instead of its own.
MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as report:
    print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status),
          file=report)
"""


def run_process(command: Sequence[str], checkout: Path | None = None) -> Measured:
    """Run ``command`` and measure it (see MEASURE), with ``checkout``'s code if given."""
    began = time.perf_counter()
    code = (
        {} if checkout is None else {"PYTHONPATH": f"{checkout}{os.pathsep}{checkout / 'operator'}"}
    )
    with tempfile.TemporaryFile() as errors, tempfile.NamedTemporaryFile("r") as report:
        subprocess.run(
            [sys.executable, "-c", MEASURE, report.name, *command],
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env=os.environ | SINGLE_THREAD | code,
            check=True,
        )
        seconds = time.perf_counter() - began
        peak, cpu, status = report.read().split()
        errors.seek(0)
        lines = errors.read().decode(errors="replace").strip().splitlines()
    return Measured(seconds, float(cpu), int(peak) * 1024, int(status), lines[-1] if lines else "")


def pulse_train(*flags: str) -> list[str]:
    """The ``pulse-train`` command line with these flags."""
    return [sys.executable, "-m", "recursive_training.run_training", "--no-progress", *flags]


def gib(size: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{size / 2**30:.2f} GiB"


def panel_file(folder: Path, spec: PanelSpec) -> Path:
    """The panel as long Parquet (unique_id, ds, y), written once per spec (not timed)."""
    path = folder / f"panel-{spec.n_series}x{spec.years:g}-seed{spec.seed}.parquet"
    if not path.exists():
        began = time.perf_counter()
        write_panel(spec, path.with_suffix(".partial"))
        path.with_suffix(".partial").rename(path)
        print(f"  (wrote {path.name}: {time.perf_counter() - began:.0f} s, not timed)")
    return path


# --- universe: 10,000 series, serial -------------------------------------------------------


def universe(args: argparse.Namespace) -> None:
    """``ar`` and ``pooled`` over 10,000 series as whole ``pulse-train`` processes; with
    ``--reference``, that checkout's code and this one's alternately, ``--repeat`` times."""
    spec = PanelSpec(n_series=args.universe_series, years=10, seed=1)
    data = panel_file(args.data_dir, spec)
    checkouts: dict[str, Path | None] = {"this": None}
    if args.reference is not None:
        checkouts = {"reference": args.reference.resolve(), "this": None}
    print(
        f"\nuniverse: {spec.n_series:,} series x 10 years of business days (+ market as "
        f"exog), lags {LAGS}, 365-day batches, serial, long Parquet input; load "
        f"{os.getloadavg()[0]:.1f}; {args.repeat} run(s) each, min / median"
    )
    runs: dict[tuple[str, str], list[Measured]] = {}
    for _ in range(args.repeat):
        for label, checkout in checkouts.items():
            for model in ("ar", "pooled"):
                with tempfile.TemporaryDirectory() as out:
                    command = pulse_train(
                        *("--input-data", str(data), "--model", model, "--exog", "market"),
                        *("--lags", str(LAGS), "--batch-size-days", "365", "--output-dir", out),
                    )
                    measured = run_process(command, checkout)
                check(measured, f"universe {model} ({label})")
                runs.setdefault((model, label), []).append(measured)
    print(f"{'model':>7} {'code':>9} {'seconds':>13} {'CPU s':>13} {'peak RSS':>10}")
    for (model, label), measured in runs.items():
        walls = [m.seconds for m in measured]
        cpus = [m.cpu for m in measured]
        print(
            f"{model:>7} {label:>9} {min(walls):>6.1f} /{statistics.median(walls):>5.1f} "
            f"{min(cpus):>6.1f} /{statistics.median(cpus):>5.1f} "
            f"{gib(max(m.peak_rss for m in measured)):>10}"
        )
    print(f"  load at the end {os.getloadavg()[0]:.1f}")


def check(measured: Measured, what: str) -> None:
    """Stop with the run's own message when it failed."""
    if measured.status != 0:
        raise SystemExit(f"{what} failed ({measured.status}): {measured.message}")


# --- dask: 100,000 series on 2 workers -----------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Phases of a run as its --progress-file shows them: start-up and planning until the first
# progress line, the statistics stage (the scan folds each batch in as it arrives), the
# solves and task arguments of the evaluation stage, the evaluation stage (predictions
# streamed to the driver's spool), then the reduction and the files until the process ends.
PHASES = ("start", "statistics", "scan", "evaluation", "write")


@dataclass
class PhaseFigures:
    """One phase: wall seconds, CPU seconds and highest sampled RSS of each process."""

    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)


class Watcher(threading.Thread):
    """Samples the driver's, scheduler's and workers' RSS and CPU time (psutil, every
    ``interval`` s) and attributes them to the run's phase, read from its progress file."""

    def __init__(
        self, processes: dict[str, int], progress: Path, wrapper: int, interval: float = 0.5
    ) -> None:
        super().__init__(daemon=True)
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.progress, self.wrapper, self.interval = progress, wrapper, interval
        self.phases = {name: PhaseFigures() for name in PHASES}
        self.stop = threading.Event()
        self.log: list[str] = []

    def _driver(self) -> None:
        """Add the driver (the wrapper's child) once it exists."""
        if "driver" not in self.processes:
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(self.wrapper).children()
                if children:
                    self.processes = {"driver": children[0]} | self.processes

    def _phase(self) -> str:
        """The phase the progress file says the run is in."""
        with contextlib.suppress(OSError):
            lines = self.progress.read_text().splitlines()
            events = [json.loads(line) for line in lines if line.endswith("}")]
            progress = [e for e in events if e["event"] == "progress"]
            if progress:
                last = progress[-1]
                if last["done"] < last["total"]:
                    return str(last["stage"])
                return "scan" if last["stage"] == "statistics" else "write"
        return "start"

    def _sample(self) -> dict[str, tuple[float, int]]:
        """CPU seconds and RSS of every process still alive."""
        figures = {}
        for name, process in self.processes.items():
            with contextlib.suppress(psutil.Error):
                times, memory = process.cpu_times(), process.memory_info()
                figures[name] = (times.user + times.system, memory.rss)
        return figures

    def run(self) -> None:
        phase, began = "start", time.perf_counter()
        last = self._sample()
        while not self.stop.is_set():
            self._driver()
            now_phase, now = self._phase(), self._sample()
            figures = self.phases[phase]
            for name, (cpu, rss) in now.items():
                figures.cpu[name] = figures.cpu.get(name, 0.0) + cpu - last.get(name, (cpu, 0))[0]
                figures.rss[name] = max(figures.rss.get(name, 0), rss)
            if now_phase != phase:
                figures.seconds = time.perf_counter() - began
                self.log.append(self.line(phase))
                print(self.log[-1], flush=True)
                phase, began = now_phase, time.perf_counter()
            last = now
            self.stop.wait(self.interval)
        self.phases[phase].seconds = time.perf_counter() - began
        self.log.append(self.line(phase))
        print(self.log[-1], flush=True)

    def line(self, phase: str) -> str:
        """One phase's figures as a line of the table."""
        figures = self.phases[phase]
        cpu = "  ".join(f"{n} {figures.cpu.get(n, 0):6.1f}" for n in self.processes)
        rss = "  ".join(f"{n} {gib(figures.rss.get(n, 0))}" for n in self.processes)
        return (
            f"  {phase:<10} {figures.seconds:7.1f} s wall; CPU s: {cpu}; peak RSS: {rss}; "
            f"load {os.getloadavg()[0]:.1f}"
        )


def dask_run(args: argparse.Namespace) -> None:
    """``ar`` over ``--dask-series`` series on a scheduler and 2 worker processes of this
    machine: wall, CPU and peak RSS of every process, per phase and whole."""
    spec = PanelSpec(n_series=args.dask_series, years=10, seed=2)
    data = panel_file(args.data_dir, spec)
    address = f"tcp://127.0.0.1:{free_port()}"
    module = [sys.executable, "-m"]
    started: dict[str, subprocess.Popen[bytes]] = {}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    environment = os.environ | SINGLE_THREAD
    log_file = args.data_dir / f"dask-{spec.n_series}.log"
    try:
        started["scheduler"] = subprocess.Popen(
            [
                *module,
                *("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--no-dashboard"),
                *("--port", address.rsplit(":", 1)[1]),
            ],
            env=environment,
            **quiet,
        )
        for k in range(1, 3):
            # --no-nanny: the worker is the process whose memory is measured
            started[f"worker{k}"] = subprocess.Popen(
                [
                    *module,
                    *("distributed.cli.dask_worker", address, "--nthreads", "1"),
                    *("--no-nanny", "--no-dashboard", "--memory-limit", "0"),
                ],
                env=environment,
                **quiet,
            )
        time.sleep(3)  # the driver waits for workers anyway; this keeps start-up untimed
        print(
            f"\ndask: {spec.n_series:,} series x 10 years, ar (+ market as exog), lags {LAGS}, "
            f"365-day batches, 2 worker processes x 1 thread; load {os.getloadavg()[0]:.1f}; "
            f"driver log {log_file}",
            flush=True,
        )
        with tempfile.TemporaryDirectory() as out, tempfile.NamedTemporaryFile("r") as report:
            progress = Path(out) / "progress.jsonl"
            command = pulse_train(
                *("--input-data", str(data), "--model", "ar", "--exog", "market"),
                *("--lags", str(LAGS), "--batch-size-days", "365", "--output-dir", out),
                *("--dask-scheduler-address", address, "--progress-file", str(progress)),
            )
            began = time.perf_counter()
            with log_file.open("wb") as errors:
                wrapper = subprocess.Popen(
                    [sys.executable, "-c", MEASURE, report.name, *command],
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    env=environment,
                )
                watcher = Watcher(
                    {name: p.pid for name, p in started.items()}, progress, wrapper.pid
                )
                watcher.start()
                wrapper.wait()
                seconds = time.perf_counter() - began
                watcher.stop.set()
                watcher.join()
            peak, driver_cpu, status = report.read().split()
            sizes = {p.name: p.stat().st_size for p in Path(out).glob("*.parquet")}
        lines = log_file.read_text(errors="replace").strip().splitlines()
        check(Measured(seconds, 0, 0, int(status), lines[-1] if lines else ""), "dask ar")
        total_cpu = float(driver_cpu) + sum(
            sum(figures.cpu.get(n, 0.0) for n in started) for figures in watcher.phases.values()
        )
        workers = [peak_rss_of(started[f"worker{k}"].pid) for k in (1, 2)]
        print(
            f"  whole run {seconds:.1f} s wall, {total_cpu:.1f} s CPU (driver "
            f"{float(driver_cpu):.1f} s); peak RSS: driver {gib(int(peak) * 1024)}, workers "
            f"{', '.join(gib(w) for w in workers)}; files "
            + ", ".join(f"{name.split('-')[0]} {size / 1e6:.0f} MB" for name, size in sizes.items())
        )
    finally:
        for process in reversed(started.values()):  # the workers, then the scheduler
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if the process is still there 30 s later (a worker without a
    nanny interrupted with SIGINT while the scheduler also stops was seen to hang)."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def peak_rss_of(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


# --- compare: 1,000 series against mlforecast and scikit-learn -----------------------------


def predictions_file(output_dir: str) -> Path:
    """The predictions file the run in ``output_dir`` names in its results.json."""
    files = json.loads((Path(output_dir) / "results.json").read_text())["files"]
    return Path(output_dir) / files["predictions"]


def pulse_in_process(uri: str, model: str, out: str) -> tuple[float, pd.DataFrame]:
    """One in-process run (data opened beforehand); seconds and predicted changes (origin x
    series)."""
    config = TrainingConfig.build(
        input_data=uri,
        model=model,
        pooled_scale="none",
        lags=LAGS,
        batch_size_days=COMPARE_BATCH_DAYS,
        ridge_alpha=0.0,
        output_dir=out,
        overwrite=True,
        progress=False,
    )
    began = time.process_time()
    run(config)
    seconds = time.process_time() - began
    frame = pd.read_parquet(predictions_file(out))
    wide = frame.pivot(index="origin", columns="variable", values="predicted")
    wide.columns = wide.columns.astype(str)
    return seconds, wide.sort_index()


def lagged_changes(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per series: features (T x series x L: the changes at t, t-1, ...) and targets
    (T x series: the change from t to t+1), NaN where not defined."""
    changes = np.full_like(levels, np.nan)
    changes[1:] = np.diff(levels, axis=0)
    features = np.full((*levels.shape, LAGS), np.nan)
    for lag in range(LAGS):
        features[lag:, :, lag] = changes[: len(levels) - lag]
    targets = np.full_like(levels, np.nan)
    targets[:-1] = levels[1:] - levels[:-1]
    return features, targets


def sklearn_per_series(levels: np.ndarray) -> tuple[float, np.ndarray]:
    """Per series and per batch: LinearRegression on the series' own earlier-realized
    samples, predicting the batch's origins (NaN where Pulse makes no prediction)."""
    from sklearn.linear_model import LinearRegression

    began = time.process_time()
    features, targets = lagged_changes(levels)
    rows, series = levels.shape
    predicted = np.full((rows, series), np.nan)
    usable = np.isfinite(features).all(axis=2) & np.isfinite(targets)
    for start in range(COMPARE_BATCH_ROWS, rows, COMPARE_BATCH_ROWS):
        known = slice(0, start - 1)  # origins realized before the batch starts
        stop = min(start + COMPARE_BATCH_ROWS, rows - 1)
        for j in range(series):
            mask = usable[known, j]
            model = LinearRegression().fit(features[known, j][mask], targets[known, j][mask])
            predicted[start:stop, j] = model.predict(features[start:stop, j])
    return time.process_time() - began, predicted


def mlforecast_windows(
    frame: pd.DataFrame, first_cutoff: int, windows: int, stamps: pd.DatetimeIndex
) -> tuple[float, pd.DataFrame]:
    """mlforecast cross_validation whose first window (a fit) has its cutoff at row
    ``first_cutoff``: the data end ``windows`` rows later. Seconds and predicted changes."""
    from mlforecast import MLForecast
    from mlforecast.target_transforms import Differences
    from sklearn.linear_model import LinearRegression

    forecaster = MLForecast(
        models={"lr": LinearRegression()},
        freq="B",
        lags=range(1, LAGS + 1),
        target_transforms=[Differences([1])],
        num_threads=1,
    )
    data = frame[frame["ds"] <= stamps[first_cutoff + windows]]
    began = time.process_time()
    folds = forecaster.cross_validation(
        data, n_windows=windows, h=1, step_size=1, refit=COMPARE_BATCH_ROWS
    )
    seconds = time.process_time() - began
    level_at_cutoff = frame.set_index(["unique_id", "ds"])["y"]
    base = level_at_cutoff.loc[list(zip(folds["unique_id"], folds["cutoff"], strict=True))]
    folds["change"] = folds["lr"].to_numpy() - base.to_numpy()
    wide = folds.pivot(index="cutoff", columns="unique_id", values="change")
    wide.columns = wide.columns.astype(str)
    return seconds, wide.sort_index()


def max_relative(ours: pd.DataFrame, theirs: pd.DataFrame) -> tuple[float, int]:
    """Largest |difference| over the largest |prediction| on the samples both predicted."""
    common = ours.index.intersection(theirs.index)
    a = ours.loc[common, theirs.columns].to_numpy()
    b = theirs.loc[common].to_numpy()
    both = np.isfinite(a) & np.isfinite(b)
    if np.isfinite(a).sum() != both.sum() or not both.any():
        raise SystemExit("the two sides predicted different samples")
    return float(np.max(np.abs(a - b)[both]) / np.max(np.abs(b[both]))), int(both.sum())


def compare(args: argparse.Namespace) -> None:
    """Pulse against mlforecast (pooled) and scikit-learn (ar) on the same panel."""
    spec = PanelSpec(n_series=args.series, years=10, seed=7, market=False)
    uri = f"builtin:panel?n_series={spec.n_series}&years=10&seed=7&market=0"
    open_source(uri)  # simulated once, outside every timing
    levels = simulate_panel(spec)
    stamps = spec.timestamps
    rows = len(stamps)
    frame = pd.DataFrame(
        {
            "unique_id": pd.Categorical.from_codes(
                np.repeat(np.arange(spec.n_series), rows), categories=spec.names
            ),
            "ds": np.tile(stamps.to_numpy(), spec.n_series),
            "y": levels.T.ravel(),
        }
    )
    print(
        f"\ncompare: {spec.n_series:,} series x 10 years of business days ({rows} rows), lags "
        f"{LAGS}, batches of {COMPARE_BATCH_DAYS} days = {COMPARE_BATCH_ROWS} rows, one "
        f"BLAS thread, CPU seconds of this process (both sides single-threaded); load "
        f"{os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as out, threadpool_limits(1):
        pulse_in_process(uri, "ar", out)  # first calls untimed
        ar_seconds, ar_ours = pulse_in_process(uri, "ar", out)
        sk_seconds, sk_predicted = sklearn_per_series(levels)
        sk = pd.DataFrame(sk_predicted, index=stamps, columns=spec.names).dropna(how="all")
        difference, count = max_relative(ar_ours, sk)
        print(
            f"  ar:     Pulse {ar_seconds:.2f} s, scikit-learn per-series refits "
            f"{sk_seconds:.1f} s: {sk_seconds / ar_seconds:.0f}x; {count:,} predictions, "
            f"max rel diff {difference:.1e}"
        )
        pooled_seconds, pooled_ours = pulse_in_process(uri, "pooled", out)
        # mlforecast fits at a window's cutoff with the target realized at that cutoff, so its
        # refit k trains on exactly the samples Pulse's batch k does when its first window's
        # cutoff is the last row before batch k; that window's origin belongs to batch k-1
        # in Pulse and is left out of the comparison (one origin per batch).
        mlforecast_windows(frame, COMPARE_BATCH_ROWS - 1, 2, stamps)  # first calls untimed
        per_window, checked, worst = [], 0, 0.0
        for batch in (1, rows // COMPARE_BATCH_ROWS - 1):
            cutoff = batch * COMPARE_BATCH_ROWS - 1
            short, _ = mlforecast_windows(frame, cutoff, args.windows[0], stamps)
            long, theirs = mlforecast_windows(frame, cutoff, args.windows[1], stamps)
            per_window.append((long - short) / (args.windows[1] - args.windows[0]))
            difference, count = max_relative(pooled_ours, theirs.iloc[1:])
            checked, worst = checked + count, max(worst, difference)
        windows = rows - COMPARE_BATCH_ROWS
        estimate = min(per_window) * windows
        print(
            f"  pooled: Pulse {pooled_seconds:.2f} s, mlforecast cross_validation at least "
            f"{estimate:.0f} s ({windows:,} windows x {min(per_window):.2f} s, the smaller "
            f"per-window cost measured; refits not counted): {estimate / pooled_seconds:.0f}x; "
            f"{checked:,} predictions in windows after batches 1 and "
            f"{rows // COMPARE_BATCH_ROWS - 1}, max rel diff {worst:.1e}"
        )


# --- var ----------------------------------------------------------------------------------


def var_sizes(args: argparse.Namespace) -> None:
    """``var`` time and memory as V grows, and the guard's refusal at V = 3,000."""
    print(
        f"\nvar: synthetic, 10 years of business days, lags {LAGS}, 365-day batches, serial; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'V':>6} {'features':>8} {'seconds':>8} {'CPU s':>6} {'peak RSS':>10}")
    for variables in args.var_sizes:
        with tempfile.TemporaryDirectory() as out:
            measured = run_process(
                pulse_train(
                    "--input-data",
                    f"builtin:synthetic?n_variables={variables}&years=10&seed=1",
                    *("--lags", str(LAGS), "--batch-size-days", "365", "--output-dir", out),
                )
            )
        check(measured, f"var V={variables}")
        print(
            f"{variables:>6} {1 + LAGS * variables:>8} {measured.seconds:>8.1f} "
            f"{measured.cpu:>6.1f} {gib(measured.peak_rss):>10}"
        )
    with tempfile.TemporaryDirectory() as out:
        refused = run_process(
            pulse_train(
                # a panel, not builtin:synthetic: simulating a 3,000-variable VAR takes minutes
                *("--input-data", "builtin:panel?n_series=3000&years=10&seed=1&market=0"),
                *("--model", "var", "--lags", str(LAGS), "--output-dir", out),
                # the default budget is half this machine's memory (11.7 GB here), which a
                # 3,000-variable VAR (about 9 GB) fits; a 4 GB budget shows the refusal
                *("--max-memory", "4GB"),
            )
        )
    print(f"  V = 3,000: exit {refused.status} after {refused.seconds:.1f} s: {refused.message}")


def main() -> None:
    """Run the parts asked for."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["universe", "dask", "compare", "var"],
        default=["universe", "dask", "compare", "var"],
    )
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "pulse")
    parser.add_argument("--universe-series", type=int, default=10_000)
    parser.add_argument(
        "--reference",
        type=Path,
        help="universe: also run this checkout's code (e.g. a worktree of main), alternately",
    )
    parser.add_argument("--repeat", type=int, default=1, help="universe: runs per model and code")
    parser.add_argument("--dask-series", type=int, default=100_000)
    parser.add_argument("--series", type=int, default=1_000, help="series of the comparison")
    parser.add_argument(
        "--windows",
        type=lambda s: tuple(int(w) for w in s.split(",")),
        default=(3, 13),
        help="mlforecast window counts whose difference gives its per-window cost",
    )
    parser.add_argument(
        "--var-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[100, 200, 400]
    )
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    parts = {"universe": universe, "dask": dask_run, "compare": compare, "var": var_sizes}
    for name in args.parts:
        parts[name](args)


if __name__ == "__main__":
    main()
