"""What the S3 data source fetches: each batch only its objects, row groups and columns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recursive_training import s3 as s3_access
from recursive_training.data import open_source
from recursive_training.data.files import FileSource
from recursive_training.data.long import LongParquetSource
from recursive_training.data.panel import PanelSpec, write_panel
from recursive_training.exceptions import DataError
from recursive_training.s3_location import S3Settings

from .datasets import layout, parquet, put_files, write_files
from .servers import ACCESS_KEY, REGION, SECRET_KEY, MotoServer


@pytest.fixture
def fetched(
    s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[S3Settings, list[dict[str, Any]]]]:
    """Settings for the test server, and the parameters of every GetObject made with them."""
    for name, value in [("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                        ("AWS_DEFAULT_REGION", REGION)]:
        monkeypatch.setenv(name, value)
    settings = S3Settings(endpoint_url=s3_server.endpoint)
    calls: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params))

    client = s3_access.client(settings)
    client.meta.events.register("provide-client-params.s3.GetObject", record)
    yield settings, calls
    client.meta.events.unregister("provide-client-params.s3.GetObject", record)
    open_source.cache_clear()


def test_a_batch_reads_only_its_objects_and_row_groups(
    s3: Any, bucket: str, fetched: tuple[S3Settings, list[dict[str, Any]]], tmp_path: Any
) -> None:
    settings, calls = fetched
    path, files = layout("wide-parquet-per-year")
    put_files(s3, bucket, files)
    write_files(tmp_path, files)
    source = open_source(f"s3://{bucket}/{path}", "auto", settings)
    local = FileSource(str(tmp_path / path))
    assert source.timestamps().equals(local.timestamps())
    assert source.variables() == local.variables()

    calls.clear()
    first, last = pd.Timestamp("2017-03-01"), pd.Timestamp("2017-04-30")
    window = source.load(["spx_close"], first, last)
    pd.testing.assert_frame_equal(window, local.load(["spx_close"], first, last))
    assert {c["Key"] for c in calls} == {f"{path}2017.parquet"}
    fetched_bytes = sum(int(end) - int(start) + 1 for start, end in
                        (c["Range"].removeprefix("bytes=").split("-") for c in calls))
    assert fetched_bytes < len(files[f"{path}2017.parquet"]) / 2
    assert all(c["IfMatch"] for c in calls), "reads are pinned to the listed version"


def test_a_csv_object_is_fetched_once_per_process(
    s3: Any, bucket: str, fetched: tuple[S3Settings, list[dict[str, Any]]]
) -> None:
    settings, calls = fetched
    path, files = layout("long-csv-per-variable")
    put_files(s3, bucket, files)
    source = open_source(f"s3://{bucket}/{path}", "auto", settings)
    stamps = source.timestamps()
    for start in range(0, len(stamps) - 100, 100):
        source.load(source.variables(), stamps[start], stamps[start + 100])
    assert sorted(c["Key"] for c in calls) == sorted(files)


def test_a_hive_partitioned_long_panel_reads_the_same_from_s3(
    s3: Any, bucket: str, fetched: tuple[S3Settings, list[dict[str, Any]]], tmp_path: Any
) -> None:
    """unique_id/ds/y partitioned by year, through pyarrow's S3 filesystem: the same series,
    times and shard windows as the same files on disk; a file missing a column is named."""
    settings, _ = fetched
    spec = PanelSpec(n_series=40, years=3, seed=4)
    rows = pq.read_table(write_panel(spec, tmp_path / "panel.parquet", rows_per_group=5000))
    years = pc.year(rows.column("ds"))
    files = {}
    for year in sorted(set(years.to_pylist())):
        buffer = pa.BufferOutputStream()
        pq.write_table(rows.filter(pc.equal(years, year)), buffer, row_group_size=2000)
        files[f"panel/year={year}/part-0.parquet"] = buffer.getvalue().to_pybytes()
    files["panel/_SUCCESS"] = b""
    put_files(s3, bucket, files)
    write_files(tmp_path / "local", files)
    remote = open_source(f"s3://{bucket}/panel/", "auto", settings)
    local = open_source(str(tmp_path / "local" / "panel"))
    assert isinstance(remote, LongParquetSource) and isinstance(local, LongParquetSource)
    assert remote.timestamps().equals(local.timestamps())
    assert remote.variables() == local.variables() == tuple(spec.names)
    first, last = pd.Timestamp("2001-03-01"), pd.Timestamp("2002-02-28")
    shard = list(spec.names[10:20])
    window = remote.load(shard, first, last)
    pd.testing.assert_frame_equal(window, local.load(shard, first, last))
    assert [f.year for f, _ in remote.plan(shard, first, last)] == [2001, 2002]

    s3.put_object(Bucket=bucket, Key="panel/year=2003/part-1.parquet",
                  Body=parquet(pd.DataFrame({"unique_id": ["a"], "ds": [first], "price": [1.0]})))
    open_source.cache_clear()
    with pytest.raises(DataError, match=rf"s3://{bucket}/panel/year=2003/part-1.parquet: "
                                        r"has no column 'y'"):
        open_source(f"s3://{bucket}/panel/", "auto", settings).variables()
