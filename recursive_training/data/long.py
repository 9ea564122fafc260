"""Long Parquet panels at scale: one row per (series, timestamp), read a shard at a time.

The columns are either ``unique_id, ds, y`` (the Nixtla/mlforecast convention, so the
file a user already feeds mlforecast feeds Pulse too) or ``variable, timestamp, value``
(Pulse's own; the time column may also be ``date``, ``time`` or ``datetime``). Other
columns are ignored. The input is one file, a folder of files, or a hive-partitioned
folder (``year=2020/part-0.parquet``, ``shard=07/...``), on a disk or in S3.

What each process reads:

* the driver (``timestamps()``, ``variables()``) reads only the series and time columns,
  one row group at a time (the series column as its dictionary, never as strings):
  memory is one row group, time is one pass over those two columns;
* a task (``load(shard, first, last)``) opens only the files whose ``year=`` partition
  overlaps the window, and in them only the row groups whose statistics say they may hold
  a series of the shard (min/max of the series column) and a time in the window (min/max
  of the time column). When the data is sorted by series then time (as
  ``write_panel`` and most exports are), a contiguous shard of series touches only its
  own row groups. Each row group read is turned once into a dense (its timestamps x its
  series) block of values, which a load slices for its window and shard; blocks are kept
  per process up to ``BLOCK_CACHE_BYTES`` (9 B a cell; 1 GiB, less in a small container),
  so the next windows of the same series (the next batch, the evaluation of this one) do
  not decode the group again: row groups usually span every year, and decoding ten years
  of rows to use one was most of a 10,000-series run. A group with fewer rows than half
  its cells (series of different lifetimes) is scattered row by row instead and not kept.
  A task's peak memory is about ``16 B x window rows x shard series`` (the result and a
  duplicate counter) plus ``50 B x rows of one row group``, plus the blocks kept, whatever
  the size of the panel.

The time index a task aligns to is the union over all series (a series without a row
on a day the others have gets a missing value there), computed once per process.
Rows need not be sorted; each (series, timestamp) must appear once.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from numpy.typing import NDArray

from recursive_training.arrays import FloatArray
from recursive_training.data.common import DataSource
from recursive_training.data.files import (
    SUFFIXES,
    FileSource,
    LongColumns,
    describe_conventions,
    file_format,
    long_columns,
)
from recursive_training.exceptions import DataError
from recursive_training.sizes import usable_memory

_HIVE_YEAR = re.compile(r"^year=(\d{4})$", re.IGNORECASE)
_NS = pa.timestamp("ns")
# Decoded row groups a process keeps (module docstring): a 10,000-series x 10-year panel
# is 0.24 GB of blocks; at 100,000 series a worker keeps the first ~40% it reads. Never more
# than a quarter of what the process may use: a worker pod limited to 1 GiB keeps 256 MiB.
BLOCK_CACHE_BYTES: Final = min(2**30, (usable_memory() or 2**32) // 4)


def one_line(error: Exception) -> str:
    """An Arrow error's message on one line."""
    return " ".join(str(error).split())


def year_partition(path: str) -> int | None:
    """The year of a hive ``year=YYYY`` folder on ``path``, if any."""
    for part in PurePosixPath(path).parts[:-1]:
        found = _HIVE_YEAR.match(part)
        if found:
            return int(found.group(1))
    return None


@dataclass(frozen=True)
class _RowGroup:
    """Where a row group is and what its statistics say it holds (None: unknown)."""

    index: int
    series: tuple[Any, Any] | None
    times: tuple[int, int] | None


class _LongFile:
    """One Parquet file of the panel: its footer, row-group statistics and reads."""

    def __init__(
        self, path: str, filesystem: pafs.FileSystem, columns: LongColumns, shown: str
    ) -> None:
        self.path = path
        self.name = shown + path  # for messages: s3:// in front of an S3 path
        self.year = year_partition(path)
        self._filesystem = filesystem
        self._columns = columns
        self._lock = threading.Lock()

    @cached_property
    def _file(self) -> pq.ParquetFile:
        try:
            handle = self._filesystem.open_input_file(self.path)
            opened = pq.ParquetFile(handle, read_dictionary=[self._columns.series])
        except (OSError, ValueError, pa.ArrowException) as e:
            raise DataError(f"cannot read as PARQUET: {one_line(e)}", source=self.name) from e
        check_schema(opened.schema_arrow, self._columns, self.name)
        return opened

    @property
    def schema(self) -> pa.Schema:
        """The file's Arrow schema (from its footer)."""
        return self._file.schema_arrow

    @cached_property
    def row_groups(self) -> list[_RowGroup]:
        """Every row group with its series and time statistics."""
        metadata = self._file.metadata
        # Parquet leaf columns, not Arrow fields: they differ after a nested column
        leaves = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
        series = leaves.index(self._columns.series)
        time = leaves.index(self._columns.time)
        groups = []
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            groups.append(
                _RowGroup(
                    g,
                    _min_max(group.column(series).statistics),
                    _time_range(group.column(time).statistics),
                )
            )
        return groups

    def read(self, group: int, columns: list[str]) -> pa.Table:
        """Those columns of one row group."""
        try:
            with self._lock:  # one ParquetFile handle per file, shared by a worker's threads
                return self._file.read_row_group(group, columns=columns, use_threads=True)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise DataError(f"cannot read as PARQUET: {one_line(e)}", source=self.name) from e


def _min_max(statistics: Any) -> tuple[Any, Any] | None:
    if statistics is None or not statistics.has_min_max:
        return None
    return statistics.min, statistics.max


def _time_range(statistics: Any) -> tuple[int, int] | None:
    """Time statistics as nanoseconds since the epoch (naive UTC), like the read values."""
    bounds = _min_max(statistics)
    if bounds is None:
        return None
    low, high = (pd.Timestamp(b) for b in bounds)
    return tuple(  # type: ignore[return-value]
        int((s.tz_convert("UTC").tz_localize(None) if s.tzinfo else s).as_unit("ns").value)
        for s in (low, high)
    )


def check_schema(schema: pa.Schema, columns: LongColumns, path: str) -> None:
    """Fail naming the file when a column is missing or has a type that cannot be used."""
    names = set(schema.names)
    missing = [c for c in (columns.series, columns.time, columns.value) if c not in names]
    if missing:
        raise DataError(
            f"has no column {', '.join(map(repr, missing))} (columns: {', '.join(schema.names)}); "
            f"{describe_conventions()}",
            source=path,
        )
    series = schema.field(columns.series).type
    if pa.types.is_dictionary(series):
        series = series.value_type
    if not (
        pa.types.is_string(series)
        or pa.types.is_large_string(series)
        or pa.types.is_integer(series)
    ):
        raise DataError(
            f"column {columns.series!r} holds {series}; series names must be text or integers",
            source=path,
        )
    time = schema.field(columns.time).type
    if not (pa.types.is_timestamp(time) or pa.types.is_date(time)):
        raise DataError(
            f"column {columns.time!r} holds {time}, not timestamps; write it as a datetime "
            "column (pandas datetime64, Arrow timestamp or date)",
            source=path,
        )
    value = schema.field(columns.value).type
    if not (
        pa.types.is_floating(value) or pa.types.is_integer(value) or pa.types.is_decimal(value)
    ):
        raise DataError(
            f"column {columns.value!r} holds {value}, not numbers; write it as a float column",
            source=path,
        )


def _refuse_nulls(column: pa.ChunkedArray, name: str, path: str) -> None:
    """Every row needs a series name and a timestamp."""
    if column.null_count:
        raise DataError(
            f"has {column.null_count} rows with no {name!r}; every row needs a series and a "
            "timestamp",
            source=path,
        )


def _nanoseconds(column: pa.ChunkedArray | pa.Array, name: str, path: str) -> np.ndarray:
    """A time column as int64 nanoseconds since the epoch (UTC, naive), no nulls allowed."""
    _refuse_nulls(
        pa.chunked_array([column]) if isinstance(column, pa.Array) else column, name, path
    )
    try:
        return np.asarray(column.cast(_NS).cast(pa.int64()).to_numpy(), dtype=np.int64)
    except pa.ArrowInvalid as e:
        raise DataError(f"column {name!r}: {one_line(e)}", source=path) from e


def _series_values(column: pa.ChunkedArray, name: str, path: str) -> list[pa.Array]:
    """The distinct series names of a column (dictionaries, or the values), no nulls allowed."""
    _refuse_nulls(column, name, path)
    return [
        chunk.dictionary if isinstance(chunk, pa.DictionaryArray) else chunk.unique()
        for chunk in column.chunks
    ]


def _codes(column: pa.ChunkedArray, shard: pa.Array, rows: np.ndarray) -> np.ndarray:
    """For the rows selected by the mask ``rows``: the position of each row's series in
    ``shard``, or -1 (a dictionary column is looked up once per dictionary entry)."""
    parts = []
    offset = 0
    for chunk in column.chunks:
        selected = rows[offset : offset + len(chunk)]
        offset += len(chunk)
        if isinstance(chunk, pa.DictionaryArray):
            found = pc.index_in(chunk.dictionary.cast(shard.type), value_set=shard)
            lookup = np.asarray(found.fill_null(-1).to_numpy(), dtype=np.int64)
            indices = chunk.indices.to_numpy(zero_copy_only=False)
            parts.append(lookup[indices[selected]])
        else:
            found = pc.index_in(chunk.filter(pa.array(selected)).cast(shard.type), value_set=shard)
            parts.append(np.asarray(found.fill_null(-1).to_numpy(), dtype=np.int64))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class _Block:
    """A row group as a dense (its timestamps x its series) block: a window load slices its
    rows by time and its columns by series instead of decoding and scattering every row."""

    times: np.ndarray  # int64 ns, sorted, distinct
    series: pa.Array  # the series of the block's columns
    values: np.ndarray  # float64 (times x series), NaN where no row
    present: np.ndarray  # bool (times x series): a row exists

    @property
    def nbytes(self) -> int:
        return int(self.times.nbytes + self.values.nbytes + self.present.nbytes)

    @classmethod
    def of(cls, table: pa.Table, columns: LongColumns, path: str) -> _Block | None:
        """The block of a row group's (series, time, value) table; None when it has fewer
        rows than half its cells. Refuses a (series, timestamp) given twice."""
        names = table.column(0)
        _refuse_nulls(names, columns.series, path)
        if not pa.types.is_dictionary(names.type):
            names = pc.dictionary_encode(names)
        encoded = names.unify_dictionaries().combine_chunks()
        times = _nanoseconds(table.column(1), columns.time, path)
        stamps = pa.array(times)
        distinct = np.sort(np.asarray(pc.unique(stamps).to_numpy(), dtype=np.int64))
        cells = len(distinct) * len(encoded.dictionary)
        if 2 * len(times) < cells:
            return None
        rows = np.asarray(pc.index_in(stamps, value_set=pa.array(distinct)), dtype=np.int64)
        flat = rows * len(encoded.dictionary) + np.asarray(
            encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64
        )
        counts = np.bincount(flat, minlength=cells)
        repeated = np.flatnonzero(counts > 1)
        if len(repeated):
            row, column = divmod(int(repeated[0]), len(encoded.dictionary))
            raise DataError(
                f"series {str(encoded.dictionary[column])!r} has {counts[repeated[0]]} rows at "
                f"{pd.Timestamp(distinct[row])}; each (series, timestamp) must appear once",
                source=path,
            )
        values = np.full(cells, np.nan)
        values[flat] = np.asarray(table.column(2).cast(pa.float64()).to_numpy(), dtype=np.float64)
        shape = (len(distinct), len(encoded.dictionary))
        return cls(
            distinct, encoded.dictionary, values.reshape(shape), counts.astype(bool).reshape(shape)
        )

    def put(
        self,
        shard: pa.Array,
        stamps: np.ndarray,
        values: np.ndarray,
        counts: np.ndarray,
        path: str,
    ) -> None:
        """Copy the block's cells of the shard's series at ``stamps`` into ``values`` (a flat
        (stamps x shard) array) and count them in ``counts``."""
        first = int(np.searchsorted(self.times, stamps[0], side="left"))
        stop = int(np.searchsorted(self.times, stamps[-1], side="right"))
        if first == stop:
            return
        found = pc.index_in(self.series.cast(shard.type), value_set=shard)
        positions = np.asarray(found.fill_null(-1).to_numpy(), dtype=np.int64)
        taken = np.flatnonzero(positions >= 0)
        if not len(taken):
            return
        times = self.times[first:stop]
        rows = np.searchsorted(stamps, times)
        if not np.array_equal(stamps[np.minimum(rows, len(stamps) - 1)], times):
            raise DataError(
                "holds timestamps the time index read at the start lacks; did the data "
                "change during the run?",
                source=path,
            )
        columns, targets = _run(taken), _run(positions[taken])
        present = self.present[first:stop, columns]
        block = self.values[first:stop, columns]
        target = values.reshape(len(stamps), len(shard))
        tally = counts.reshape(target.shape)
        here = _run(rows)
        if isinstance(here, slice) and isinstance(targets, slice):  # sorted data: views
            np.copyto(target[here, targets], block, where=present)
            tally[here, targets] += present
            return
        cells = np.ix_(rows, positions[taken])
        window = target[cells]
        window[present] = block[present]
        target[cells] = window
        tally[cells] += present


def _run(indices: np.ndarray) -> slice | np.ndarray:
    """``indices`` as a slice when they are consecutive (a view instead of a gather)."""
    if len(indices) and bool(np.all(np.diff(indices) == 1)):
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return indices


class LongParquetSource(DataSource):
    """Long Parquet files (one, a folder, hive partitions; local or S3): see the module."""

    def __init__(
        self,
        uri: str,
        paths: Sequence[str],
        filesystem: pafs.FileSystem,
        columns: LongColumns,
        shown: str = "",
    ) -> None:
        """``paths`` on ``filesystem``; messages name them with ``shown`` in front."""
        super().__init__(uri)
        self.columns = columns
        self.files = [_LongFile(p, filesystem, columns, shown) for p in paths]
        self._lock = threading.Lock()
        self._catalog: tuple[pd.DatetimeIndex, tuple[str, ...]] | None = None
        self._series_type: pa.DataType | None = None
        self._blocks: dict[tuple[str, int], _Block] = {}
        self._blocks_bytes = 0

    def _scan(self) -> tuple[pd.DatetimeIndex, tuple[str, ...]]:
        """One pass over the series and time columns: the union of times, the series names."""
        stamps: list[np.ndarray] = []
        names: list[pa.Array] = []
        for file in self.files:
            for group in file.row_groups:
                table = file.read(group.index, [self.columns.series, self.columns.time])
                times = table.column(1)
                _refuse_nulls(times, self.columns.time, file.name)
                stamps.append(_nanoseconds(pc.unique(times), self.columns.time, file.name))
                names += _series_values(table.column(0), self.columns.series, file.name)
        if not names:
            raise DataError("has no rows", source=self.uri)
        series = pc.unique(pa.chunked_array(names).combine_chunks())
        self._series_type = series.type
        labels = sorted(
            {str(s) for s in series.to_pylist()},
            key=_natural if pa.types.is_integer(series.type) else str,
        )
        index = pd.DatetimeIndex(np.unique(np.concatenate(stamps)).astype("datetime64[ns]"))
        return index, tuple(labels)

    def _catalogued(self) -> tuple[pd.DatetimeIndex, tuple[str, ...]]:
        with self._lock:
            if self._catalog is None:
                self._catalog = self._scan()
            return self._catalog

    def timestamps(self) -> pd.DatetimeIndex:
        return self._catalogued()[0]

    def variables(self) -> tuple[str, ...]:
        return self._catalogued()[1]

    def plan(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> list[tuple[_LongFile, list[int]]]:
        """The files and row groups a load of ``variables`` over ``[first, last]`` reads."""
        low, high = _ns(first), _ns(last)
        keys = sorted(self._keys(variables))
        planned = []
        for file in self.files:
            if file.year is not None and not first.year <= file.year <= last.year:
                continue
            groups = [
                g.index
                for g in file.row_groups
                if (g.times is None or (g.times[0] <= high and g.times[1] >= low))
                and (g.series is None or _any_between(keys, *g.series))
            ]
            if groups:
                planned.append((file, groups))
        return planned

    def _keys(self, variables: Sequence[str]) -> list[Any]:
        """Series names as the series column stores them (text or integers)."""
        if pa.types.is_integer(self._series_column_type()):
            return [int(v) for v in variables]
        return list(variables)

    def _series_column_type(self) -> pa.DataType:
        """The series column's value type, from the first file's footer (no scan)."""
        if self._series_type is None:
            field = self.files[0].schema.field(self.columns.series)
            value = field.type
            self._series_type = value.value_type if pa.types.is_dictionary(value) else value
        return self._series_type

    def load(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        """The shard as a (window timestamps x variables) float64 frame (module docstring)."""
        self.check_variables(variables)
        index = self.timestamps()
        window = index[index.slice_indexer(first, last)]
        return pd.DataFrame(self._load(variables, window), index=window, columns=list(variables))

    def load_window(
        self,
        variables: Sequence[str],
        first: pd.Timestamp,
        last: pd.Timestamp,
        stamps: NDArray[np.datetime64],
    ) -> tuple[FloatArray, NDArray[np.datetime64]]:
        """The planned window at ``stamps`` without the time-index scan (variables were
        checked when the run was planned)."""
        window = pd.DatetimeIndex(stamps)
        return self._load(variables, window), window.to_numpy()

    def _load(self, variables: Sequence[str], window: pd.DatetimeIndex) -> FloatArray:
        """The shard over the rows ``window`` of the time index (window rows x variables)."""
        stamps = window.as_unit("ns").asi8
        width = len(variables)
        values = np.full(len(window) * width, np.nan)
        counts = np.zeros(len(window) * width, dtype=np.int64)
        if len(window) and width:
            shard = pa.array(self._keys(variables), type=self._series_column_type())
            for file, groups in self.plan(variables, window[0], window[-1]):
                for group in groups:
                    block = self._block(file, group)
                    if isinstance(block, _Block):
                        block.put(shard, stamps, values, counts, file.name)
                    else:
                        self._scatter(block, shard, stamps, values, counts, file.name)
        self._refuse_duplicates(counts, window, variables)
        return values.reshape(len(window), width)

    def _scatter(
        self,
        table: pa.Table,
        shard: pa.Array,
        stamps: np.ndarray,
        values: np.ndarray,
        counts: np.ndarray,
        path: str,
    ) -> None:
        """Put the rows of ``table`` that belong to the shard and window into ``values``."""
        times = _nanoseconds(table.column(1), self.columns.time, path)
        in_window = (times >= stamps[0]) & (times <= stamps[-1])
        codes = _codes(table.column(0), shard, in_window)
        in_shard = codes >= 0
        if not in_shard.any():
            return
        keep = np.flatnonzero(in_window)[in_shard]
        times, codes = times[keep], codes[in_shard]
        rows = np.searchsorted(stamps, times)
        if not np.array_equal(stamps[np.minimum(rows, len(stamps) - 1)], times):
            raise DataError(
                "holds timestamps the time index read at the start lacks; did the data "
                "change during the run?",
                source=path,
            )
        flat = rows * len(shard) + codes
        column = table.column(2).cast(pa.float64())
        values[flat] = np.asarray(column.to_numpy(), dtype=np.float64)[keep]
        np.add.at(counts, flat, 1)

    def _block(self, file: _LongFile, group: int) -> _Block | pa.Table:
        """Row group ``group`` of ``file``: its kept block, a new block (kept), or the table
        read when the budget is spent or its rows are too sparse for a block."""
        key = (file.path, group)
        with self._lock:
            kept = self._blocks.get(key)
        if kept is not None:
            return kept
        table = file.read(group, [self.columns.series, self.columns.time, self.columns.value])
        if self._blocks_bytes >= BLOCK_CACHE_BYTES:
            return table  # a block only pays for itself when it is read again
        block = _Block.of(table, self.columns, file.name)
        if block is None:
            return table
        with self._lock:
            if self._blocks_bytes + block.nbytes <= BLOCK_CACHE_BYTES:
                self._blocks[key] = block
                self._blocks_bytes += block.nbytes
        return block

    def _refuse_duplicates(
        self, counts: np.ndarray, window: pd.DatetimeIndex, variables: Sequence[str]
    ) -> None:
        repeated = np.flatnonzero(counts > 1)
        if len(repeated):
            row, column = divmod(int(repeated[0]), len(variables))
            raise DataError(
                f"series {variables[column]!r} has {counts[repeated[0]]} rows at "
                f"{window[row]}; each (series, timestamp) must appear once",
                source=self.uri,
            )


def _natural(label: str) -> int:
    return int(label)


def _ns(stamp: pd.Timestamp) -> int:
    return int(pd.Timestamp(stamp).as_unit("ns").value)


def _any_between(keys: list[Any], low: Any, high: Any) -> bool:
    """Whether some of the sorted ``keys`` lies in ``[low, high]``."""
    position = bisect.bisect_left(keys, low)
    return position < len(keys) and keys[position] <= high


def data_files(folder: Path) -> list[Path]:
    """The .csv/.parquet files under ``folder``, in sub-folders too (hive partitions), sorted;
    names starting with ``.`` or ``_`` (``_SUCCESS``, ``_metadata``, ...) are not data."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in SUFFIXES
        and p.is_file()
        and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )


def parquet_layout(file: Any, source: str) -> LongColumns | None:
    """The long convention of a Parquet file's columns; None when it is wide or unreadable
    (the in-memory reader then says what is wrong with it)."""
    try:
        names = pq.read_schema(file).names
    except (OSError, ValueError, pa.ArrowException):
        return None
    return long_columns(names, source)


def open_local(uri: str, input_format: str) -> DataSource:
    """A local file or folder: long Parquet by shard and window, anything else in memory."""
    path = Path(uri.removeprefix("file://")).expanduser()
    files = data_files(path) if path.is_dir() else [path] if path.is_file() else []
    if files and all(file_format(f, input_format) == "parquet" for f in files):
        layout = parquet_layout(files[0], str(files[0]))
        if layout is not None:
            return LongParquetSource(
                uri, [str(f.resolve()) for f in files], pafs.LocalFileSystem(), layout
            )
    return FileSource(uri, input_format)
