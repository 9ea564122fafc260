"""The data-source interface and the checks every source's frame must pass.

A source is a panel of time series: one float column per variable, indexed by a sorted,
unique, timezone-naive DatetimeIndex. The driver asks a source only for its timestamps
(to plan batches); each batch then asks for its own window of rows, so no process holds
the whole history unless the format forces it to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from recursive_training.arrays import FloatArray
from recursive_training.exceptions import DataError


class DataSource(ABC):
    """A readable panel of time series (see the module docstring)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @abstractmethod
    def timestamps(self) -> pd.DatetimeIndex:
        """Every row's timestamp, sorted and unique."""

    @abstractmethod
    def variables(self) -> tuple[str, ...]:
        """The names of all variables the source holds."""

    @abstractmethod
    def load(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        """Rows with ``first <= timestamp <= last`` of ``variables``, as float64 columns."""

    def load_array(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> tuple[FloatArray, NDArray[np.datetime64]]:
        """What ``load`` returns, as row-major (rows x variables) float64 values and the rows'
        timestamps.

        The tasks read windows this way; a source that holds arrays overrides it to skip
        building a frame (with thousands of series, the column index alone costs more than
        the arithmetic of a batch).
        """
        frame = self.load(variables, first, last)
        # row-major whatever the frame's layout: the models sum in memory order, so the layout
        # decides the last bits of every result
        return np.ascontiguousarray(frame.to_numpy(dtype=np.float64)), frame.index.to_numpy()

    def load_window(
        self,
        variables: Sequence[str],
        first: pd.Timestamp,
        last: pd.Timestamp,
        stamps: NDArray[np.datetime64],
    ) -> tuple[FloatArray, NDArray[np.datetime64]]:
        """``load_array`` of a planned window whose timestamps ``stamps`` (rows of
        ``timestamps()`` from ``first`` to ``last``) the caller knows: a source that would
        otherwise scan its files for the time index (long Parquet) uses them instead."""
        return self.load_array(variables, first, last)

    def check_variables(self, variables: Sequence[str]) -> None:
        """Fail with the list of available names when a variable is unknown."""
        available = self.variables()
        known = set(available)
        missing = [v for v in variables if v not in known]
        if missing:
            shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
            raise DataError(
                f"unknown variable{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))}; the data has: {shown}",
                source=self.uri,
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class InMemorySource(DataSource):
    """A source whose whole panel is parsed into memory once (builtin data, local files)."""

    def __init__(self, uri: str, frame: pd.DataFrame) -> None:
        super().__init__(uri)
        panel = validated_panel(frame, uri)
        self._index = pd.DatetimeIndex(panel.index)
        self._stamps = self._index.to_numpy()
        self._names = tuple(str(name) for name in panel.columns)
        self._positions = {name: j for j, name in enumerate(self._names)}
        self._values: FloatArray = panel.to_numpy(dtype=np.float64)

    def timestamps(self) -> pd.DatetimeIndex:
        return self._index

    def variables(self) -> tuple[str, ...]:
        return self._names

    def load(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        values, _ = self.load_array(variables, first, last)
        rows = self._index.slice_indexer(first, last)
        return pd.DataFrame(values, index=self._index[rows], columns=list(variables))

    def load_array(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> tuple[FloatArray, NDArray[np.datetime64]]:
        return self._rows(variables, self._index.slice_indexer(first, last))

    def load_window(
        self,
        variables: Sequence[str],
        first: pd.Timestamp,
        last: pd.Timestamp,
        stamps: NDArray[np.datetime64],
    ) -> tuple[FloatArray, NDArray[np.datetime64]]:
        """The planned rows found by one binary search (a pandas slice lookup cost more than
        the arithmetic of a small batch)."""
        start = int(np.searchsorted(self._stamps, stamps[0])) if len(stamps) else 0
        rows = slice(start, start + len(stamps))
        if not np.array_equal(self._stamps[rows], stamps):
            return self.load_array(variables, first, last)
        return self._rows(variables, rows)

    def _rows(
        self, variables: Sequence[str], rows: slice
    ) -> tuple[FloatArray, NDArray[np.datetime64]]:
        """``variables`` at the rows ``rows`` of the panel, and their timestamps."""
        if tuple(variables) == self._names:
            return self._values[rows].copy(), self._stamps[rows]  # a copy: callers may fill it
        self.check_variables(variables)
        return self._values[rows][:, [self._positions[v] for v in variables]], self._stamps[rows]


def check_sorted(index: pd.Index, source: str) -> None:
    """Fail at the first timestamp that comes before its predecessor."""
    if index.is_monotonic_increasing:
        return
    position = int(np.flatnonzero(index[1:] < index[:-1])[0])
    raise DataError(
        f"timestamps are not sorted: {index[position + 1]} (row {position + 2}) comes after "
        f"{index[position]}; sort the file by time",
        source=source,
    )


def validated_panel(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check and normalize a wide frame: datetime index, unique, sorted, numeric columns."""
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex):
        raise DataError("the index is not made of timestamps", source=source)
    if index.tz is not None:
        frame = frame.tz_convert("UTC").tz_localize(None)
        index = frame.index
    if index.hasnans:
        position = int(np.flatnonzero(index.isna())[0])
        raise DataError(f"row {position + 1} has no timestamp", source=source)
    duplicated = index.duplicated()
    if duplicated.any():
        stamp = index[int(np.flatnonzero(duplicated)[0])]
        raise DataError(
            f"duplicate timestamp {stamp}; each timestamp must appear once", source=source
        )
    check_sorted(index, source)
    columns = {}
    for name in frame.columns:
        column = frame[name]
        numeric = pd.to_numeric(column, errors="coerce")
        bad = numeric.isna() & column.notna()
        if bad.any():
            stamp = column.index[int(np.flatnonzero(bad.to_numpy())[0])]
            raise DataError(
                f"variable {name!r} has a non-numeric value {column[stamp]!r} at {stamp}",
                source=source,
            )
        columns[str(name)] = numeric.astype("float64")
    return pd.DataFrame(columns, index=frame.index)


def query_options(
    query: str, types: dict[str, type[int] | type[float]], uri: str
) -> dict[str, int | float]:
    """The ``key=value&...`` options of a builtin source, each converted by ``types``."""
    values: dict[str, int | float] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key not in types:
            raise DataError(f"unknown option {key!r}; options are {', '.join(types)}", source=uri)
        try:
            values[key] = types[key](raw)
        except ValueError:
            raise DataError(f"option {key}={raw!r} is not a number", source=uri) from None
    return values
