"""Local CSV and Parquet data: one file or a folder of files, wide or long.

The table readers and panel builders here are shared with the S3 source (``data/s3.py``).

Wide files have a time column (``timestamp``, ``date``, ``time``, ``datetime`` or ``ds``;
else the first column) and one column per variable. Long files have one row per (series,
timestamp) in one of the ``LONG_CONVENTIONS``: ``unique_id, ds, y`` (Nixtla/mlforecast) or
``variable, timestamp, value`` (Pulse); other columns are ignored. A folder may split the
panel any way (one file per variable, per year, ...) as long as no two files hold the same
variable at the same time. Long Parquet is read by ``data/long.py`` (a shard at a time);
what is read here is parsed whole, once per process.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import numpy as np
import pandas as pd

from recursive_training.data.common import InMemorySource, validated_panel
from recursive_training.exceptions import DataError

TIME_COLUMNS = ("timestamp", "date", "time", "datetime", "ds")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class LongColumns:
    """The columns of a long table, as the file spells them."""

    series: str
    time: str
    value: str


LONG_CONVENTIONS: Final = (
    ("Nixtla/mlforecast", ("unique_id",), ("ds",), ("y",)),
    ("Pulse", ("variable",), TIME_COLUMNS[:4], ("value",)),
)
"""(name, series column, time column candidates, value column), matched without case."""


def describe_conventions() -> str:
    """How the accepted long layouts are spelled, for error messages."""
    spelled = []
    for name, (series,), times, (value,) in LONG_CONVENTIONS:
        others = f" (or {', '.join(times[1:])})" if len(times) > 1 else ""
        spelled.append(f"{series}, {times[0]}{others}, {value} ({name})")
    return f"long data needs the columns {' or '.join(spelled)}"


def long_columns(columns: Sequence[Hashable], source: str) -> LongColumns | None:
    """The long convention ``columns`` follow (first match), or None for a wide table;
    a series column without the rest of a convention is an error naming ``source``."""
    lowered = {str(c).lower(): str(c) for c in columns}
    for _, series, times, values in LONG_CONVENTIONS:
        found = [
            next((lowered[n] for n in names if n in lowered), None)
            for names in (series, times, values)
        ]
        if all(found):
            return LongColumns(*found)  # type: ignore[arg-type]
    if lowered.keys() & {"unique_id", "variable"}:
        raise DataError(
            f"has a series column but not a full long layout (columns: "
            f"{', '.join(map(str, columns))}); {describe_conventions()}",
            source=source,
        )
    return None


def file_format(name: str | Path, requested: str) -> str:
    """The format to read the file or object ``name`` with: the requested one, or by extension."""
    if requested != "auto":
        return requested
    suffix = Path(name).suffix
    try:
        return SUFFIXES[suffix.lower()]
    except KeyError:
        raise DataError(
            f"cannot tell the format from the extension {suffix!r}; "
            f"use .csv or .parquet, or pass --input-format",
            source=str(name),
        ) from None


def read_table(file: Path | IO[bytes], fmt: str, source: str) -> pd.DataFrame:
    """Read one file into a plain frame (index reset), translating reader errors."""
    try:
        if fmt == "csv":
            return pd.read_csv(file)
        frame = pd.read_parquet(file)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"cannot read as {fmt.upper()}: {e}", source=source) from e
    return index_as_column(frame)


def index_as_column(frame: pd.DataFrame) -> pd.DataFrame:
    """Move a timestamp index (as pandas restores it from Parquet) into the first column."""
    if isinstance(frame.index, pd.DatetimeIndex):
        frame = frame.rename_axis(str(frame.index.name or "timestamp")).reset_index()
    return frame


def time_column(columns: Sequence[Hashable]) -> Hashable:
    """The time column of a table: the first one named like a time, else the first one."""
    lowered = {str(c).lower(): c for c in columns}
    return next((lowered[n] for n in TIME_COLUMNS if n in lowered), columns[0])


def panel_from_table(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Turn a wide or long table into a validated wide panel."""
    if table.empty or len(table.columns) < 2:
        raise DataError(
            "has no data rows or only one column; expected a time column and values", source=source
        )
    layout = long_columns(list(table.columns), source)
    if layout is not None:
        table = table[[layout.time, layout.series, layout.value]].set_axis(
            ["timestamp", "variable", "value"], axis=1
        )
    stamps_column = time_column(list(table.columns))
    stamps = pd.to_datetime(table[stamps_column], errors="coerce", utc=True).dt.tz_localize(None)
    unparsed = stamps.isna() & table[stamps_column].notna()
    if unparsed.any():
        row = int(np.flatnonzero(unparsed.to_numpy())[0])
        raise DataError(
            f"column {stamps_column!r}, row {row + 1}: {table[stamps_column].iloc[row]!r} "
            "is not a date",
            source=source,
        )
    values = table.drop(columns=[stamps_column]).set_index(pd.DatetimeIndex(stamps, name=None))
    if {str(c).lower() for c in values.columns} == {"variable", "value"}:
        values.columns = [str(c).lower() for c in values.columns]
        values = _pivot_long(values, source)
    return validated_panel(values, source)


def _pivot_long(values: pd.DataFrame, source: str) -> pd.DataFrame:
    keys = pd.MultiIndex.from_arrays([values.index, values["variable"].astype(str)])
    if keys.duplicated().any():
        stamp, name = keys[int(np.flatnonzero(keys.duplicated())[0])]
        raise DataError(f"duplicate timestamp {stamp} for variable {name!r}", source=source)
    return values.pivot(columns="variable", values="value").rename_axis(index=None, columns=None)


def combine_panels(panels: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """Merge per-file panels, refusing any variable that two files hold at the same time."""
    combined = panels[0][1]
    owner = {c: panels[0][0] for c in combined.columns}
    for name, panel in panels[1:]:
        for column in panel.columns.intersection(combined.columns):
            both = panel[column].dropna().index.intersection(combined[column].dropna().index)
            if len(both):
                raise DataError(
                    f"{owner[column]} and {name} both hold variable {column!r} at {both[0]}",
                    source=name.rpartition("/")[0] or ".",
                )
        combined = combined.combine_first(panel)
        owner.update({c: name for c in panel.columns if c not in owner})
    return combined.sort_index()


class FileSource(InMemorySource):
    """A local file or folder, read once per process and sliced per batch."""

    def __init__(self, uri: str, input_format: str = "auto") -> None:
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.exists():
            raise DataError("no such file or folder; check --input-data", source=uri)
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file()
            )
            if not files:
                raise DataError("the folder holds no .csv or .parquet files", source=uri)
        else:
            files = [path]
        panels = [
            (str(f), panel_from_table(read_table(f, file_format(f, input_format), str(f)), str(f)))
            for f in files
        ]
        super().__init__(uri, combine_panels(panels))
