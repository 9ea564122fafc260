"""S3 data: ``s3://bucket/key`` names one CSV/Parquet object or a folder of them.

The formats and layouts are those of local files (``data/files.py``: wide or long, split
by variable or by time, any way that holds each variable at each time once), read with
the same parsers, so the same data gives the same panel from S3 as from a disk.

What each process reads, and when (everything is cached on the source, which
``open_source`` caches per process):

* the folder is listed once (only objects directly under it, like a local folder);
* the time index is built from every object's time column: a Parquet object is read
  through ranged GETs, so only its footer and its time column are fetched; a CSV object
  has to be fetched whole, and its parsed panel is kept so it is never fetched again;
* a batch's ``load`` skips objects whose time range or variables it does not need, and
  from a Parquet object fetches only the row groups whose time statistics overlap the
  batch window, and only the columns of the wanted variables.

Every read of an object is pinned to the ETag it was listed with, so an object replaced
during the run fails with a clear error instead of mixing two versions.
"""

from __future__ import annotations

import io
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recursive_training import s3
from recursive_training.data.common import DataSource
from recursive_training.data.files import (
    SUFFIXES,
    combine_panels,
    file_format,
    index_as_column,
    panel_from_table,
    read_table,
    time_column,
)
from recursive_training.data.long import LongParquetSource, parquet_layout
from recursive_training.exceptions import DataError
from recursive_training.s3 import S3Object
from recursive_training.s3_location import S3Location, S3Settings

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

INDEX_THREADS = 8
"""Objects whose time columns are fetched at once when the time index is built."""

_ROWS = "\x00rows"
"""A placeholder value column, so a time column alone can go through ``panel_from_table``."""


class _RangedFile(io.RawIOBase):
    """A read-only, seekable file over one S3 object; each read is one ranged GET."""

    def __init__(self, item: S3Object, settings: S3Settings) -> None:
        super().__init__()
        self._item = item
        self._settings = settings
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._item.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._item.size - self._position)
        if count <= 0:
            return 0
        data = s3.get_bytes(
            self._item.location,
            self._settings,
            DataError,
            etag=self._item.etag,
            byte_range=(self._position, self._position + count - 1),
        )
        view[: len(data)] = data
        self._position += len(data)
        return len(data)


class _Part(ABC):
    """One object of the source: its time index and variables (fetched once), its windows."""

    def __init__(self, item: S3Object, settings: S3Settings) -> None:
        self.item = item
        self.name = str(item.location)
        self.settings = settings
        self._lock = threading.Lock()
        self._index: tuple[pd.DatetimeIndex, tuple[str, ...]] | None = None

    def index(self) -> tuple[pd.DatetimeIndex, tuple[str, ...]]:
        """The object's sorted unique timestamps and its variables (fetched once per process)."""
        with self._lock:
            if self._index is None:
                self._index = self._open()
            return self._index

    @abstractmethod
    def _open(self) -> tuple[pd.DatetimeIndex, tuple[str, ...]]:
        """Fetch what the time index and the variable names need."""

    @abstractmethod
    def window(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        """Its rows with ``first <= timestamp <= last`` of ``variables`` (all held by it)."""


class _CsvPart(_Part):
    """A CSV object: fetched whole once, parsed once, sliced per batch."""

    _panel: pd.DataFrame

    def _open(self) -> tuple[pd.DatetimeIndex, tuple[str, ...]]:
        data = s3.get_bytes(self.item.location, self.settings, DataError, etag=self.item.etag)
        self._panel = panel_from_table(read_table(io.BytesIO(data), "csv", self.name), self.name)
        return pd.DatetimeIndex(self._panel.index), tuple(self._panel.columns)

    def window(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        self.index()
        return self._panel.loc[first:last, list(variables)]


class _ParquetPart(_Part):
    """A Parquet object: footer and time column once, then row groups per batch."""

    @cached_property
    def _file(self) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(_RangedFile(self.item, self.settings))
        except (OSError, ValueError, pa.ArrowException) as e:
            raise DataError(f"cannot read as PARQUET: {e}", source=self.name) from e

    @cached_property
    def _layout(self) -> tuple[list[str], str, str, bool]:
        """Columns as ``read_table`` shows them, the time column shown and stored, long or not."""
        schema = self._file.schema_arrow
        frame = schema.empty_table().to_pandas()
        from_index = isinstance(frame.index, pd.DatetimeIndex)
        columns = [str(c) for c in index_as_column(frame).columns]
        shown = str(time_column(columns))
        stored = shown
        if from_index and shown == columns[0]:
            stored = str((schema.pandas_metadata or {})["index_columns"][0])
        values = {c.lower() for c in columns if c != shown}
        return columns, shown, stored, values == {"variable", "value"}

    def _read(self, columns: list[str], row_groups: list[int] | None = None) -> pd.DataFrame:
        """Those stored columns of those row groups (all by default), as ``read_table`` would."""
        groups = list(range(self._file.num_row_groups)) if row_groups is None else row_groups
        try:
            table = self._file.read_row_groups(groups, columns=columns, use_pandas_metadata=True)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise DataError(f"cannot read as PARQUET: {e}", source=self.name) from e
        return index_as_column(table.to_pandas())

    def _value_columns(self, variables: Sequence[str]) -> list[str]:
        """The stored columns that hold ``variables``."""
        columns, shown, _, long = self._layout
        if long:
            return [c for c in columns if c.lower() in ("variable", "value")]
        return [c for c in columns if c != shown and c in variables]

    def _open(self) -> tuple[pd.DatetimeIndex, tuple[str, ...]]:
        # Only the time column (and a long table's variable column) is fetched; a constant
        # value column lets panel_from_table parse and check it exactly as for a local file.
        columns, shown, stored, long = self._layout
        if long:
            frame = self._read([stored, *(c for c in columns if c.lower() == "variable")])
            frame["value"] = 0.0
        else:
            frame = self._read([stored])
            frame[_ROWS] = 0.0
        times = panel_from_table(frame, self.name)
        variables = tuple(times.columns) if long else tuple(c for c in columns if c != shown)
        return pd.DatetimeIndex(times.index), variables

    def _row_groups(self, first: pd.Timestamp, last: pd.Timestamp) -> list[int]:
        """Row groups whose time statistics overlap ``[first, last]`` (all when unknown)."""
        stored = self._layout[2]
        metadata = self._file.metadata
        position = self._file.schema_arrow.get_field_index(stored)
        kind = self._file.schema_arrow.field(stored).type
        groups = list(range(metadata.num_row_groups))
        if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
            return groups
        statistics = [metadata.row_group(g).column(position).statistics for g in groups]
        return [
            group
            for group, stats in zip(groups, statistics, strict=True)
            if stats is None
            or not stats.has_min_max
            or (_naive(stats.min) <= last and _naive(stats.max) >= first)
        ]

    def window(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        self.index()
        groups = self._row_groups(first, last)
        if not groups:
            return pd.DataFrame(index=pd.DatetimeIndex([]), dtype="float64")
        read = self._read([self._layout[2], *self._value_columns(variables)], groups)
        panel = panel_from_table(read, self.name)
        return panel.loc[first:last, [v for v in variables if v in panel.columns]]


def _naive(value: Any) -> pd.Timestamp:
    """A Parquet statistic as a naive UTC timestamp, like the parsed time column."""
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


def open_s3(uri: str, input_format: str, settings: S3Settings) -> DataSource:
    """An object or folder in S3: long Parquet by shard and window (``data/long.py``, read
    through pyarrow's S3 filesystem, hive sub-folders included), anything else as above."""
    try:
        location = S3Location.parse(uri)
    except ValueError as e:
        raise DataError(f"{e}; check --input-data", source=uri) from None
    single = s3.find(location, settings, DataError)
    items = (
        [single]
        if single
        else [
            item
            for item in s3.list_folder(location, settings, DataError, recursive=True)
            if _is_data(item.location.key, location.key)
        ]
    )
    if not items:
        raise DataError(
            "is neither an object nor a folder holding .csv or .parquet objects; check "
            "--input-data (or --s3-data-bucket/--s3-data-prefix)",
            source=uri,
        )
    items.sort(key=lambda i: i.location.key)
    if all(file_format(str(i.location), input_format) == "parquet" for i in items):
        layout = parquet_layout(_RangedFile(items[0], settings), str(items[0].location))
        if layout is not None:
            paths = [f"{i.location.bucket}/{i.location.key}" for i in items]
            return LongParquetSource(uri, paths, s3.arrow_filesystem(settings), layout, "s3://")
    folder = location.key.rstrip("/")
    return S3Source(
        uri,
        input_format,
        settings,
        [i for i in items if single or "/" not in i.location.key[len(folder) + 1 :]],
    )


class S3Source(DataSource):
    """One object or a folder of objects in S3, read lazily and per batch (module docstring)."""

    def __init__(
        self, uri: str, input_format: str, settings: S3Settings, items: list[S3Object]
    ) -> None:
        """``items``: the object, or the objects directly in the folder, sorted by key."""
        super().__init__(uri)
        self._parts: list[_Part] = [
            (_CsvPart if file_format(str(item.location), input_format) == "csv" else _ParquetPart)(
                item, settings
            )
            for item in items
        ]

    @cached_property
    def _indexes(self) -> list[tuple[pd.DatetimeIndex, tuple[str, ...]]]:
        """Every object's time index and variables, fetched a few objects at a time."""
        with ThreadPoolExecutor(min(INDEX_THREADS, len(self._parts))) as pool:
            return list(pool.map(_Part.index, self._parts))

    @cached_property
    def _timestamps(self) -> pd.DatetimeIndex:
        stamps = [index for index, _ in self._indexes]
        return pd.DatetimeIndex(stamps[0].append(stamps[1:]).unique()).sort_values()

    def timestamps(self) -> pd.DatetimeIndex:
        return self._timestamps

    def variables(self) -> tuple[str, ...]:
        # first-seen order over the objects: the column order combine_panels gives
        return tuple(dict.fromkeys(name for _, names in self._indexes for name in names))

    def load(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        self.check_variables(variables)
        index = self.timestamps()
        window = index[(index >= first) & (index <= last)]
        panels = []
        for part, (stamps, names) in zip(self._parts, self._indexes, strict=True):
            held = [v for v in variables if v in names]
            if not held or stamps[0] > last or stamps[-1] < first:
                continue
            panel = part.window(held, first, last)
            if len(panel):
                panels.append((part.name, panel))
        frame = combine_panels(panels) if panels else pd.DataFrame(index=window, dtype="float64")
        return frame.reindex(index=window, columns=list(variables)).astype("float64")


def _is_data(key: str, folder: str) -> bool:
    """Whether the object ``key`` under ``folder`` is a data file: a .csv or .parquet name,
    no part of its path below the folder starting with ``.`` or ``_`` (``_SUCCESS``)."""
    parts = key[len(folder.rstrip("/")) :].strip("/").split("/")
    name = parts[-1]
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    return suffix in SUFFIXES and not any(p.startswith((".", "_")) for p in parts)
