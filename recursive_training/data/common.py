"""The data-source interface and the checks every source's frame must pass.

A source is a panel of time series: one float column per variable, indexed by a sorted,
unique, timezone-naive DatetimeIndex. The driver asks a source only for its timestamps
(to plan batches); each batch then asks for its own window of rows, so no process holds
the whole history unless the format forces it to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import pandas as pd

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
        self._frame = validated_panel(frame, uri)

    def timestamps(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self._frame.index)

    def variables(self) -> tuple[str, ...]:
        return tuple(self._frame.columns)

    def load(
        self, variables: Sequence[str], first: pd.Timestamp, last: pd.Timestamp
    ) -> pd.DataFrame:
        self.check_variables(variables)
        return self._frame.loc[first:last, list(variables)]


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
