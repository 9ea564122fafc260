"""The write path under a fault at every step: all of a run's files land or none do.

An earlier run's results are in place; the next run's outputs are written with one fault
injected at step k: each file's write and each rename locally, each PUT on S3 (moto_server).
A fault is either an OSError instead of the step, or a real SIGINT delivered to this
process right after the step (``signal.raise_signal``). Whatever k, the folder holds
exactly one consistent run: the earlier one, untouched, or the new one, complete.
The faults are injected into the calls the write path makes (``os.fsync``,
``Path.replace``, ``s3.put_bytes``): no real disk or server fails on cue.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recursive_training import s3 as s3_module
from recursive_training import storage
from recursive_training.config import TrainingConfig
from recursive_training.exceptions import OutputError
from recursive_training.results import (
    build_document,
    data_files,
    referenced_files,
    write_outputs,
)
from recursive_training.stages import TrainingPipeline
from recursive_training.stages.training_stages import TrainingResult
from recursive_training.state import TrainingState

from .servers import MotoServer, aws_environment

SMALL = "builtin:synthetic?n_variables=2&years=2&seed=3"
# Every data file of a run (whatever their number and order), then results.json last.
FILES = [*data_files(TrainingConfig(), "run"), "results"]
LOCAL_STEPS = [  # (call, which call of it): a file's write ends with fsync, then its rename
    (f"{call} of file {n + 1} of {len(FILES)}", call, n)
    for n in range(len(FILES))
    for call in ("write", "rename")
]
S3_STEPS = [(f"PUT of file {n + 1} of {len(FILES)}", "put", n) for n in range(len(FILES))]


@pytest.fixture(autouse=True)
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as in any interactive process: a shell starts a
    background job (a CI runner's, say) with SIGINT ignored, and Python keeps it so."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def result() -> TrainingResult:
    """One small run's result; each write below gives it a fresh run id."""
    return TrainingPipeline().execute(TrainingConfig(input_data=SMALL, lags=2))


def fresh(result: TrainingResult, config: TrainingConfig) -> TrainingResult:
    """``result`` as a new run (its own id) of ``config``."""
    run_id = uuid.uuid4().hex[:12]
    state = dataclasses.replace(result.state, run_id=run_id)
    return dataclasses.replace(result, run_id=run_id, state=state, config=config)


class Listing:
    """Reads what is at the output location: every file's bytes, locally or in a bucket."""

    def __init__(self, config: TrainingConfig, client: Any = None) -> None:
        self.config = config
        self.client = client

    def files(self) -> dict[str, bytes]:
        if self.client is None:
            folder = Path(self.config.output_dir)
            return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}
        location = s3_module.S3Location.parse(self.config.output_dir)
        listed = self.client.list_objects_v2(Bucket=location.bucket, Prefix=location.key + "/")
        return {
            item["Key"].rpartition("/")[2]: self.client.get_object(
                Bucket=location.bucket, Key=item["Key"]
            )["Body"].read()
            for item in listed.get("Contents", [])
        }


def assert_one_whole_run(files: dict[str, bytes], config: TrainingConfig, run_id: str) -> None:
    """Exactly results.json and the files it names, which belong to ``run_id``."""
    document = json.loads(files["results.json"])
    assert document["run_id"] == run_id
    named = referenced_files(files["results.json"], config.results_path)
    assert named is not None
    assert sorted(files) == sorted(
        ["results.json", *(n.rpartition("/")[2] for n in named.values())]
    )
    state = TrainingState.from_bytes(files[named["state"].rpartition("/")[2]], "state")
    assert state.run_id == run_id


class Fault:
    """Calls of the patched functions are counted; call number ``at`` gets the fault."""

    def __init__(self, at: int, kind: str) -> None:
        self.at, self.kind, self.calls = at, kind, 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            number, self.calls = self.calls, self.calls + 1
            if number == self.at and self.kind == "error":
                raise OSError(28, "No space left on device (injected)")
            value = function(*args, **kwargs)
            if number == self.at:
                signal.raise_signal(signal.SIGINT)
            return value

        return faulty


@pytest.fixture
def where(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, TrainingConfig, Any]]:
    """The output location of both runs: a local folder or a fresh bucket on moto_server."""
    if backend == "local":
        yield "local", TrainingConfig(output_dir=str(tmp_path / "out"), overwrite=True), None
        return
    server: MotoServer = request.getfixturevalue("s3_server")
    for name, value in aws_environment().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    client = server.client()
    bucket = f"pulse-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    config = TrainingConfig(
        output_dir=f"s3://{bucket}/run", overwrite=True, s3_endpoint_url=server.endpoint
    )
    yield "s3", config, client


@pytest.mark.parametrize("kind", ["error", "signal"])
@pytest.mark.parametrize(
    ("backend", "step"),
    [("local", k) for k in range(len(LOCAL_STEPS))] + [("s3", k) for k in range(len(S3_STEPS))],
)
def test_a_fault_at_any_step_leaves_one_whole_run(
    where: tuple[str, TrainingConfig, Any],
    backend: str,
    result: TrainingResult,
    step: int,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, config, client = where
    steps = LOCAL_STEPS if backend == "local" else S3_STEPS
    _, call, _ = steps[step]
    listing = Listing(config, client)
    earlier = fresh(result, config)
    write_outputs(earlier, config, build_document(earlier))
    before = listing.files()
    assert_one_whole_run(before, config, earlier.run_id)

    fault = Fault(step // 2 if backend == "local" else step, kind)
    if call == "write":
        monkeypatch.setattr(os, "fsync", fault.wrap(os.fsync))
    elif call == "rename":
        monkeypatch.setattr(Path, "replace", fault.wrap(Path.replace))
    else:
        monkeypatch.setattr(s3_module, "put_bytes", fault.wrap(s3_module.put_bytes))
    commits: list[str] = []
    later = fresh(result, config)
    # the results file is the last: a signal after any of its steps is held
    # until the commit is done, so the run's results stand
    commits_anyway = kind == "signal" and step >= len(steps) - (2 if backend == "local" else 1)
    expected = KeyboardInterrupt if kind == "signal" else OutputError
    with pytest.raises(expected):
        write_outputs(
            later, config, build_document(later), on_commit=lambda: commits.append(later.run_id)
        )
    monkeypatch.undo()

    after = listing.files()
    if commits_anyway:
        assert commits == [later.run_id]
        assert_one_whole_run(after, config, later.run_id)
    else:
        assert commits == []
        assert after == before, "the earlier run's files changed or new files were left"


def test_a_path_through_a_file_is_named_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(OutputError, match=f"{blocker} is a file, not a folder"):
        storage.check_writable(str(blocker / "deeper"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
