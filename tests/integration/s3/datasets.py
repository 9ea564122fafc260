"""The data of the S3 tests: one panel, in the layouts users store it in.

Wide or long, CSV or Parquet, one object or a folder split by year or by variable; the
same bytes go to a local folder and to a bucket, so the two runs can be compared.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

VARIABLES = ["spx_close", "us_10y_yield", "gdp_growth"]


def make_panel() -> pd.DataFrame:
    """Three years of three random-walk business-day series (gaps included)."""
    index = pd.bdate_range("2016-01-01", periods=780, name="date")
    rng = np.random.default_rng(42)
    values = np.cumsum(rng.standard_normal((len(index), len(VARIABLES))), axis=0) + 100
    frame = pd.DataFrame(values, index=index, columns=VARIABLES)
    frame.iloc[rng.choice(len(index), 12, replace=False), 1] = np.nan
    return frame


def long_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The panel as (date, variable, value) rows, sorted by time."""
    table = frame.reset_index().melt(id_vars="date", var_name="variable", value_name="value")
    return table.dropna().sort_values(["date", "variable"], kind="stable", ignore_index=True)


def parquet(frame: pd.DataFrame, **options: Any) -> bytes:
    """A frame as Parquet bytes."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, **options)
    return buffer.getvalue()


def layout(name: str) -> tuple[str, dict[str, bytes]]:
    """A data layout: the path to pass as input, and its files (relative path -> bytes)."""
    frame = make_panel()
    if name == "wide-csv-object":
        return "panel.csv", {"panel.csv": frame.to_csv().encode()}
    if name == "wide-parquet-per-year":
        # small row groups, so a batch reads only a few of each object's row groups
        return "years/", {f"years/{year}.parquet": parquet(part, row_group_size=40)
                          for year, part in frame.groupby(pd.DatetimeIndex(frame.index).year)}
    if name == "long-csv-per-variable":
        return "series", {f"series/{v}.csv": long_table(frame[[v]]).to_csv(index=False).encode()
                          for v in VARIABLES}
    assert name == "long-parquet-object"
    return "long.parquet", {"long.parquet": parquet(long_table(frame), index=False,
                                                    row_group_size=500)}


def put_files(s3: Any, bucket: str, files: dict[str, bytes], prefix: str = "") -> None:
    """Upload ``files`` under ``prefix`` in ``bucket``."""
    for relative, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}{relative}", Body=data)


def fill_two_stores(data: Any, results: Any) -> tuple[str, dict[str, str], dict[str, str]]:
    """Market data in `data` (bucket `market`, read by a `reader`) and an empty bucket
    `results` in `results` (written by a `writer`), both servers checking credentials;
    return the data's key and the two users' keys."""
    path, files = layout("wide-csv-object")
    data.client().create_bucket(Bucket="market")
    put_files(data.client(), "market", files)
    results.client().create_bucket(Bucket="results")
    reader = data.add_user("reader", ["s3:GetObject", "s3:ListBucket"])
    writer = results.add_user("writer", ["s3:*"])
    data.enforce_auth()
    results.enforce_auth()
    return path, reader, writer


def write_files(root: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` under the local folder ``root``."""
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
