"""Checkpoints of finished batches, so that a restarted run skips what it already computed.

A map-stage result is a pure function of its task's arguments: the batch, the task spec
and, for the evaluation, the batch's walk-forward model. So each result is saved under a
key hashed from all of them: the spec's ``fingerprint()``, the batch plan (id, dates, rows,
variables) and the bytes of any array argument; a changed setting, plan or model gives a
new key and never reuses stale numbers. Each result is one ``.npz`` of plain arrays
(loaded with ``allow_pickle=False``), written atomically, in a local folder or under an
``s3://`` prefix::

    DIR/<stage>/batch-<id>-<key>.npz

A batch split into series shards has one task, so one file, per shard (the shard is an
argument, so it is in the key); results are told apart by (batch id, first series).

Results are dataclasses of numbers, strings, timestamps, arrays, nested dataclasses (alone
or in tuples) and Arrow tables;
they are flattened to named arrays and rebuilt from the dataclass's type hints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import typing
import zipfile
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.typing import NDArray

from recursive_training import storage
from recursive_training.exceptions import StateError
from recursive_training.parallel_trainer import SeriesShard, TrainingBatch
from recursive_training.s3_location import S3Settings

log = logging.getLogger(__name__)
Arrays = dict[str, NDArray[Any]]
SCALARS: tuple[type, ...] = (bool, int, float, str)
TaskKey = tuple[int, int]  # (batch id, position of the task's first series)


class TaskResult(Protocol):
    """A map-stage result: which batch, and which of its series shards, it is about."""

    @property
    def batch_id(self) -> int:
        """The batch's id."""

    @property
    def first_series(self) -> int:
        """Position of the task's first series among the batch's (0: the whole batch)."""


def task_key(arguments: tuple[Any, ...]) -> TaskKey:
    """The key of the result ``task(*arguments)`` returns."""
    shard = next((a for a in arguments if isinstance(a, SeriesShard)), None)
    return _batch_of(arguments).batch_id, 0 if shard is None else shard.start


def result_key(result: TaskResult) -> TaskKey:
    """The key of a task's result: its batch and shard."""
    return result.batch_id, result.first_series


@runtime_checkable
class Fingerprinted(Protocol):
    """An argument that names what in it changes a result (the task spec)."""

    def fingerprint(self) -> str:
        """A stable hash of the parts that change what a task computes."""


class Checkpoint:
    """A checkpoint folder (local or ``s3://``) of finished map-stage results."""

    def __init__(self, directory: str, settings: S3Settings) -> None:
        self.directory = directory
        self.settings = settings

    def stage(
        self, stage: str, task: Callable[..., Any], arguments: Sequence[tuple[Any, ...]]
    ) -> StageCheckpoint:
        """The checkpoint of one map stage: its saved results are loaded now."""
        return StageCheckpoint(self, stage, typing.get_type_hints(task)["return"], arguments)

    def location(self, stage: str, arguments: tuple[Any, ...]) -> str:
        """Where the result of ``task(*arguments)`` is saved."""
        digest = hashlib.sha256()
        for argument in arguments:
            _digest(digest, argument)
        batch = _batch_of(arguments)
        name = f"batch-{batch.batch_id:05d}-{digest.hexdigest()[:16]}.npz"
        return storage.join(storage.join(self.directory, stage), name)


class StageCheckpoint:
    """Saved results of one stage: ``restored`` by task key, ``missing`` argument tuples."""

    def __init__(
        self, checkpoint: Checkpoint, stage: str, kind: type, arguments: Sequence[tuple[Any, ...]]
    ) -> None:
        self.checkpoint = checkpoint
        self.stage = stage
        self.kind = kind
        self.arguments = {task_key(args): args for args in arguments}
        self.restored: dict[TaskKey, Any] = {}
        for key, args in self.arguments.items():
            result = self._load(checkpoint.location(stage, args))
            if result is not None:
                self.restored[key] = result
        self.missing = [args for k, args in self.arguments.items() if k not in self.restored]
        if self.restored:
            log.info(
                "Stage %s: %d of %d tasks restored from checkpoint %s",
                stage,
                len(self.restored),
                len(self.arguments),
                checkpoint.directory,
            )

    def save(self, result: TaskResult) -> None:
        """Save a finished task's result (atomically)."""
        location = self.checkpoint.location(self.stage, self.arguments[result_key(result)])
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **flatten(result))
        storage.write_bytes(location, buffer.getvalue(), self.checkpoint.settings)

    def _load(self, location: str) -> Any | None:
        """The result saved at ``location``; None when absent or unreadable (then recomputed)."""
        settings = self.checkpoint.settings
        if not storage.exists(location, settings):
            return None
        try:
            data = storage.read_bytes(location, settings)
            with np.load(io.BytesIO(data), allow_pickle=False) as saved:
                return rebuild(self.kind, dict(saved.items()))
        except (StateError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            log.warning("Ignoring unreadable checkpoint %s (%s); recomputing it", location, e)
            return None


def _digest(digest: Any, argument: Any) -> None:
    """Feed what in ``argument`` changes a result to ``digest``: array bytes (a repr would
    elide them), a spec's fingerprint, each item of a tuple (per-horizon models)."""
    if isinstance(argument, np.ndarray):
        digest.update(f"{argument.dtype}{argument.shape}".encode())
        digest.update(np.ascontiguousarray(argument).tobytes())
    elif isinstance(argument, Fingerprinted):
        digest.update(argument.fingerprint().encode())
    elif isinstance(argument, tuple) and not dataclasses.is_dataclass(argument):
        digest.update(f"tuple{len(argument)}".encode())
        for item in argument:
            _digest(digest, item)
    else:
        digest.update(repr(argument).encode())


def _batch_of(arguments: tuple[Any, ...]) -> TrainingBatch:
    """The batch a task's arguments are about (its first TrainingBatch)."""
    return next(a for a in arguments if isinstance(a, TrainingBatch))


def flatten(value: Any, prefix: str = "") -> Arrays:
    """A dataclass result as named plain arrays (``stats.xtx``, ``predictions.origin``, ...)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        arrays: Arrays = {}
        for item in dataclasses.fields(value):
            arrays |= flatten(getattr(value, item.name), f"{prefix}{item.name}.")
        return arrays
    if isinstance(value, pa.Table):
        return _flatten_table(value, prefix)
    if isinstance(value, pd.Timestamp):
        return {prefix.rstrip("."): np.asarray(value.to_datetime64())}
    if isinstance(value, tuple) and all(dataclasses.is_dataclass(v) for v in value):
        arrays = {f"{prefix}count": np.asarray(len(value))}
        for i, item in enumerate(value):
            arrays |= flatten(item, f"{prefix}{i}.")
        return arrays
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError(f"checkpoint field {prefix.rstrip('.')} is not a plain array")
    return {prefix.rstrip("."): array}


def _flatten_table(table: pa.Table, prefix: str) -> Arrays:
    """An Arrow table as its column names plus one array per column (dictionary columns as
    indices and dictionary)."""
    arrays: Arrays = {f"{prefix}columns": np.asarray(table.column_names)}
    for name, column in zip(table.column_names, table.columns, strict=True):
        values = column.combine_chunks()
        if isinstance(values, pa.DictionaryArray):
            arrays[f"{prefix}{name}.indices"] = values.indices.to_numpy(zero_copy_only=False)
            arrays[f"{prefix}{name}.dictionary"] = np.asarray(values.dictionary.to_pylist())
        else:
            arrays[f"{prefix}{name}"] = values.to_numpy(zero_copy_only=False)
    return arrays


def rebuild(kind: Any, arrays: Arrays, prefix: str = "") -> Any:
    """The inverse of ``flatten``, guided by the type hints of the dataclass ``kind``."""
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        values = {
            item.name: rebuild(hints[item.name], arrays, f"{prefix}{item.name}.")
            for item in dataclasses.fields(kind)
        }
        return kind(**values)
    if typing.get_origin(kind) is tuple and dataclasses.is_dataclass(typing.get_args(kind)[0]):
        item = typing.get_args(kind)[0]
        count = int(arrays[f"{prefix}count"])
        return tuple(rebuild(item, arrays, f"{prefix}{i}.") for i in range(count))
    if kind is pd.Timestamp:
        return pd.Timestamp(str(arrays[prefix.rstrip(".")]))
    if kind is pa.Table:
        columns = [str(c) for c in arrays[f"{prefix}columns"]]
        return pa.table({c: _column(arrays, f"{prefix}{c}") for c in columns})
    value = arrays[prefix.rstrip(".")]
    return kind(value.item()) if kind in SCALARS else value


def _column(arrays: Arrays, name: str) -> pa.Array:
    """One table column: a plain array or a dictionary array rebuilt from its parts."""
    if f"{name}.indices" in arrays:
        dictionary = [str(c) for c in arrays[f"{name}.dictionary"]]
        return pa.DictionaryArray.from_arrays(
            pa.array(arrays[f"{name}.indices"]), pa.array(dictionary, type=pa.string())
        )
    return pa.array(arrays[name])
