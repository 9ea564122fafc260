"""The pipeline on a real Dask cluster: same numbers as serial, faults, deadlines, checkpoints.

Every cluster here is real processes (see conftest.py); faults are real too: a worker
process is SIGKILLed while it runs a batch, the scheduler address has nobody listening,
the data path does not exist on the workers.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from distributed import Client

from recursive_training.config import TrainingConfig
from recursive_training.engines import TASKS_PER_THREAD, DaskEngine
from recursive_training.exceptions import ExecutionError
from recursive_training.stages import TrainingPipeline, TrainingResult
from tests.integration.dask.conftest import DaskCluster
from tests.unit.test_models_pipeline import assert_same_run, split_tasks

SMALL = "builtin:synthetic?n_variables=6&years=8&seed=11"
# 100 variables x 5 lags: each 5-year batch takes a worker a noticeable fraction of a
# second, so a worker killed mid-run is busy with a batch when it dies.
LARGE = "builtin:synthetic?n_variables=100&years=30&seed=3"
Progress = list[tuple[str, int, int]]


def settings(**fields: Any) -> TrainingConfig:
    """A config exercising forgetting and every rule kind, with ``fields`` on top."""
    base: dict[str, Any] = {
        "input_data": SMALL, "batch_size_days": 120, "half_life_days": 400.0,
        "rules": ["momentum(5)", "mean_reversion(20)", "cross", "model"],
    }
    return TrainingConfig.build(**{**base, **fields})


def assert_same(remote: TrainingResult, serial: TrainingResult) -> None:
    """Coefficients, rule counts and metrics agree to 1e-9 relative."""
    scale = np.abs(serial.coefficients).max()
    np.testing.assert_allclose(
        remote.coefficients, serial.coefficients, rtol=1e-9, atol=1e-12 * scale
    )
    assert [r[:2] for r in remote.rule_table] == [r[:2] for r in serial.rule_table]
    np.testing.assert_allclose(
        [r[2:] for r in remote.rule_table], [r[2:] for r in serial.rule_table], rtol=1e-9
    )
    metrics = serial.errors.table(serial.variables)
    for variable, values in remote.errors.table(remote.variables).items():
        # A metric that does not apply (sMAPE of a series with non-positive levels) is None.
        expected = metrics[variable]
        assert [k for k, v in values.items() if v is None] == [
            k for k, v in expected.items() if v is None
        ], variable
        numbers = {k: v for k, v in values.items() if v is not None}
        assert numbers == pytest.approx(
            {k: v for k, v in expected.items() if v is not None}, rel=1e-9
        ), variable


def recorder(calls: Progress) -> Callable[[str, int, int], None]:
    """A ProgressCallback that appends every call to ``calls``."""
    return lambda stage, done, total: calls.append((stage, done, total))


Signalled = list[tuple[str, int, list[str]]]


@contextmanager
def signalling_a_busy_worker(
    observer: Client, signum: signal.Signals, armed: threading.Event
) -> Iterator[Signalled]:
    """Once ``armed`` is set, send ``signum`` to the first worker process seen with a task;
    yields what was signalled (its address, PID and task keys).

    It watches from a thread of its own, so the driver keeps taking results and submitting
    tasks meanwhile: a progress callback that waited for a busy worker would hold the driver,
    and the few tasks in flight (``DaskEngine.tasks_ahead``) could all finish first, leaving
    no worker busy and none to come (what made this flaky)."""
    signalled: Signalled = []
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            if armed.wait(0.01) and (
                busy := [(w, list(k)) for w, k in observer.processing().items() if k]
            ):
                victim, keys = busy[0]
                pid = observer.run(os.getpid, workers=[victim])[victim]
                os.kill(pid, signum)
                signalled.append((victim, pid, keys))
                return

    watcher = threading.Thread(target=watch, name="signal-a-busy-worker", daemon=True)
    watcher.start()
    try:
        yield signalled
    finally:
        finished.set()
        watcher.join()


def arm_at_first_statistics(armed: threading.Event) -> Callable[[str, int, int], None]:
    """A ProgressCallback that sets ``armed`` once the statistics stage took a result (the
    workers have imported and run a batch: the next ones are ordinary)."""

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "statistics" and done >= 1:
            armed.set()

    return progress


def pulse_train(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI as a subprocess; its outcome and wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "recursive_training.run_training", *args],
        capture_output=True, text=True, timeout=240, cwd=cwd, env=env, check=False,
    )
    return done, time.perf_counter() - began


def test_remote_cluster_equals_serial_and_reports_progress(
    dask_cluster: DaskCluster, observer: Client
) -> None:
    serial = TrainingPipeline().execute(settings())
    calls: Progress = []
    remote = TrainingPipeline(progress=recorder(calls)).execute(
        settings(dask_scheduler_address=dask_cluster.address)
    )
    assert_same(remote, serial)
    assert remote.engine == f"Dask scheduler {dask_cluster.address}"
    workers = set(observer.scheduler_info()["workers"])
    assert {s.worker for s in remote.statistics.values()} <= workers, "batches ran in the driver"
    for stage, results in (("statistics", remote.statistics), ("evaluation", remote.evaluations)):
        expected = [(stage, done, len(results)) for done in range(len(results) + 1)]
        assert [c for c in calls if c[0] == stage] == expected


def test_batch_by_shard_tasks_on_a_remote_cluster_equal_serial(
    dask_cluster: DaskCluster, observer: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ar run split into (batch x 4-series shard) tasks on the remote scheduler gives the
    serial run of one task per batch; every shard task ran on a worker."""
    config = settings(
        input_data="builtin:panel?n_series=14&years=6&seed=5", model="ar", exog=["market"],
        batch_size_days=365, rules=["momentum(5)", "model"],
    )  # fmt: skip
    serial = TrainingPipeline().execute(config)
    split_tasks(monkeypatch, 4)
    calls: Progress = []
    remote = TrainingPipeline(progress=recorder(calls)).execute(
        config.model_copy(update={"dask_scheduler_address": dask_cluster.address})
    )
    assert_same_run(remote, serial)
    workers = set(observer.scheduler_info()["workers"])
    ran_on = {w for s in remote.statistics.values() for w in s.worker.split(",")}
    assert ran_on <= workers, "shard tasks ran in the driver"
    batches = len(remote.batches)
    assert [c for c in calls if c[0] == "statistics"][-1] == ("statistics", batches, batches)


def test_a_worker_killed_mid_run_changes_nothing(
    new_cluster: Callable[[int], AbstractContextManager[DaskCluster]],
) -> None:
    config = settings(input_data=LARGE, batch_size_days=1825, rules=["momentum(5)", "model"])
    serial = TrainingPipeline().execute(config)
    armed = threading.Event()
    with (
        new_cluster(2) as cluster,
        Client(cluster.address, set_as_default=False) as observer,
        signalling_a_busy_worker(observer, signal.SIGKILL, armed) as killed,
    ):
        remote = TrainingPipeline(progress=arm_at_first_statistics(armed)).execute(
            config.model_copy(update={"dask_scheduler_address": cluster.address})
        )
    assert_same(remote, serial)
    ((victim, _, keys),) = killed
    lost = [int(str(key).split("-")[1]) for key in keys]
    assert any(remote.statistics[b].worker != victim for b in lost), (
        f"no batch of {victim} was recomputed elsewhere: {keys}"
    )


def test_unreachable_scheduler_fails_fast_in_one_line(
    unreachable_address: str, tmp_path: Path
) -> None:
    done, seconds = pulse_train(
        "--dask-scheduler-address", unreachable_address, "--dask-connect-timeout", "3",
        "--input-data", SMALL, "--output-dir", str(tmp_path / "out"), cwd=tmp_path,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert f"cannot reach the Dask scheduler at {unreachable_address} within 3s" in errors[0]
    assert "Traceback" not in done.stderr
    assert seconds < 3 + 20, f"took {seconds:.1f}s (Python start-up and imports included)"
    assert not (tmp_path / "out").exists()


def test_restart_after_a_crash_reuses_checkpointed_batches(
    dask_cluster: DaskCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="recursive_training")
    folder = tmp_path / "checkpoints"
    config = settings(dask_scheduler_address=dask_cluster.address, checkpoint_dir=str(folder))

    class DriverCrashError(Exception):
        """The driver dies in the middle of the evaluation stage."""

    def crash_in_evaluation(stage: str, done: int, total: int) -> None:
        if stage == "evaluation" and done == 3:
            raise DriverCrashError

    with pytest.raises(DriverCrashError):
        TrainingPipeline(progress=crash_in_evaluation).execute(config)
    saved = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*.npz")}
    n_statistics = len(list((folder / "statistics").iterdir()))
    assert len(list((folder / "evaluation").iterdir())) == 3

    calls: Progress = []
    resumed = TrainingPipeline(progress=recorder(calls)).execute(config)
    n_evaluations = len(resumed.evaluations)
    assert calls[0] == ("statistics", n_statistics, n_statistics), "statistics were recomputed"
    assert ("evaluation", 3, n_evaluations) in calls
    assert ("evaluation", 0, n_evaluations) not in calls, "evaluations were recomputed"
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in saved} == saved
    assert f"Stage statistics: {n_statistics} of {n_statistics} tasks restored" in caplog.text
    assert_same(resumed, TrainingPipeline().execute(settings()))

    calls.clear()
    TrainingPipeline(progress=recorder(calls)).execute(config.model_copy(update={"lags": 4}))
    assert calls[0] == ("statistics", 0, n_statistics), "a changed config reused checkpoints"


def test_data_error_on_a_worker_names_the_batch_and_is_not_retried(
    dask_cluster: DaskCluster, observer: Client, tmp_path: Path
) -> None:
    index = pd.bdate_range("2015-01-01", periods=600)
    values = np.cumsum(np.random.default_rng(1).standard_normal((600, 2)), axis=0)
    frame = pd.DataFrame(values, index=index, columns=["a", "b"]).rename_axis("date")
    frame.to_csv(tmp_path / "panel.csv")

    done, _ = pulse_train(
        "--dask-scheduler-address", dask_cluster.address, "--input-data", "panel.csv",
        "--batch-size-days", "60", "--rules", "model", "--output-dir", "out", cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (error,) = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert re.search(r"ERROR +batch \d+ \[\S+, \S+\): panel\.csv: no such file or folder", error)

    def runs_of_failed_tasks(dask_scheduler: Any) -> list[int]:
        log = dask_scheduler.transition_log
        failed = {t.key for t in log if t.finish == "erred"}
        return [sum(1 for t in log if t.key == key and t.finish == "processing") for key in failed]

    runs = observer.run_on_scheduler(runs_of_failed_tasks)
    assert runs and set(runs) == {1}, f"failed tasks ran {runs} times"


def test_a_hung_worker_fails_the_run_at_the_batch_timeout(
    new_cluster: Callable[[int], AbstractContextManager[DaskCluster]],
) -> None:
    armed = threading.Event()
    with (
        new_cluster(2) as cluster,
        Client(cluster.address, set_as_default=False) as observer,
        signalling_a_busy_worker(observer, signal.SIGSTOP, armed) as stopped,
    ):
        # Warm the workers (imports) so that only the hung batch can be slower than the limit.
        observer.run(importlib.import_module, "recursive_training.stages")
        config = settings(dask_scheduler_address=cluster.address, batch_timeout=5.0)
        try:
            with pytest.raises(ExecutionError) as failure:
                TrainingPipeline(progress=arm_at_first_statistics(armed)).execute(config)
        finally:
            armed.set()  # a run that failed before its first result: nothing waits in vain
            for _, pid, _ in stopped:
                os.kill(pid, signal.SIGKILL)
    ((victim, _, _),) = stopped
    # The run stops on the batch the hung worker runs, or on fetching a result it holds.
    pattern = rf"^batch \d+ \[\S+, \S+\)(:| ran on {victim}) .*--batch-timeout 5s \(\d+\.\ds"
    assert re.search(pattern, str(failure.value)), failure.value
    assert victim in str(failure.value)


def test_run_timeout_names_the_elapsed_time(dask_cluster: DaskCluster) -> None:
    config = settings(dask_scheduler_address=dask_cluster.address, run_timeout=0.001)
    with pytest.raises(ExecutionError, match=r"^the run exceeded --run-timeout 0.001s \(\d+\.\ds"):
        TrainingPipeline().execute(config)


def test_no_workers_is_a_timeout_not_a_hang(
    new_cluster: Callable[[int], AbstractContextManager[DaskCluster]],
) -> None:
    with new_cluster(0) as cluster:
        config = settings(dask_scheduler_address=cluster.address, batch_timeout=2.0)
        began = time.perf_counter()
        idle = r"^no batch started or finished within --batch-timeout 2s .*, 0 worker\(s\)"
        with pytest.raises(ExecutionError, match=idle):
            TrainingPipeline().execute(config)
    assert time.perf_counter() - began < 2 + 10


def test_a_fetched_result_leaves_the_workers_while_the_stage_runs(
    dask_cluster: DaskCluster, observer: Client
) -> None:
    """The driver lets go of each task's result once it has it: a stage of many tasks must
    not keep every finished result in the workers' memory until its last task is done."""

    def scheduler_keys(dask_scheduler: Any) -> list[str]:
        """The keys the scheduler still holds (run on the scheduler). Defined here, not at
        module level, so cloudpickle ships it by value: the scheduler process cannot import
        the tests package."""
        return [str(key) for key in dask_scheduler.tasks]

    engine = DaskEngine.remote(dask_cluster.address)
    results = engine.map_unordered(np.ones, [(1000,)] * 4)
    try:
        first = next(results)
        assert first.shape == (1000,)
        held = [k for k in observer.run_on_scheduler(scheduler_keys) if k.startswith("ones-")]
        assert len(held) >= 3, held  # the stage still runs: the other tasks are there
        deadline = time.monotonic() + 10
        while len(held) > 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            held = [k for k in observer.run_on_scheduler(scheduler_keys) if k.startswith("ones-")]
        assert len(held) == 3, f"a fetched result is still held: {held}"
        assert sum(len(r) for r in results) == 3000
    finally:
        results.close()
        engine.close()
    forgotten = time.monotonic() + 10
    while any(k.startswith("ones-") for k in observer.run_on_scheduler(scheduler_keys)):
        assert time.monotonic() < forgotten, "results stayed on the cluster after the stage"
        time.sleep(0.05)


def test_tasks_are_submitted_as_the_driver_takes_results(
    dask_cluster: DaskCluster, observer: Client
) -> None:
    """A driver slower than its workers must not let finished results pile up on them:
    while it holds on to its first result, at most TASKS_PER_THREAD tasks per worker thread
    are on the cluster, and the stage still yields every result."""

    def scheduler_keys(dask_scheduler: Any) -> list[str]:
        """The keys the scheduler holds (run there; defined here so it ships by value)."""
        return [str(key) for key in dask_scheduler.tasks]

    engine = DaskEngine.remote(dask_cluster.address)
    ahead = engine.tasks_ahead()
    assert ahead == TASKS_PER_THREAD * len(dask_cluster.workers)
    results = engine.map_unordered(np.ones, [(1000,)] * (3 * ahead))
    try:
        assert next(results).shape == (1000,)
        time.sleep(1.0)  # the workers finish everything they were given
        held = [k for k in observer.run_on_scheduler(scheduler_keys) if k.startswith("ones-")]
        assert 0 < len(held) <= ahead, held
        assert sum(len(r) for r in results) == (3 * ahead - 1) * 1000
    finally:
        results.close()
        engine.close()
