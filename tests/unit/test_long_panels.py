"""Long panels (``unique_id, ds, y`` and ``timestamp, variable, value``) read a shard at a time.

Every load is checked against an independent pandas pivot of the same rows; pruning is
checked by counting the bytes the source actually reads through a counting filesystem.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from recursive_training.data import long, open_source
from recursive_training.data.files import LongColumns
from recursive_training.data.long import LongParquetSource
from recursive_training.data.panel import PanelSpec, write_panel
from recursive_training.exceptions import DataError

pytestmark = pytest.mark.unit

NIXTLA = ("unique_id", "ds", "y")
PULSE = ("variable", "timestamp", "value")


@pytest.fixture(autouse=True)
def _fresh_sources() -> Iterator[None]:
    """Sources are cached per process by URI; every test writes new files at its own paths."""
    open_source.cache_clear()
    yield
    open_source.cache_clear()


def random_long(seed: int, n_series: int = 12, days: int = 400) -> pd.DataFrame:
    """Rows of random series with gaps (missing rows), in a shuffled order."""
    rng = np.random.default_rng(seed)
    stamps = pd.bdate_range("2018-01-01", periods=days)
    frame = pd.DataFrame(
        {
            "unique_id": np.repeat([f"id{i:02d}" for i in range(n_series)], days),
            "ds": np.tile(stamps, n_series),
            "y": rng.standard_normal(n_series * days) * 10.0 ** rng.integers(-2, 3),
        }
    )
    frame = frame[rng.random(len(frame)) > 0.1]
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def reference(rows: pd.DataFrame, names: list[str], first: str, last: str) -> pd.DataFrame:
    """The wide window as pandas builds it: pivot, every timestamp of any series, the shard."""
    wide = rows.pivot(index="ds", columns="unique_id", values="y").sort_index()
    wide.index = pd.DatetimeIndex(wide.index).as_unit("ns")
    return wide.loc[first:last].reindex(columns=names).rename_axis(index=None, columns=None)


@pytest.mark.parametrize("convention", [NIXTLA, PULSE])
def test_a_shard_equals_a_pandas_pivot(tmp_path: Path, convention: tuple[str, str, str]) -> None:
    rows = random_long(1)
    path = tmp_path / "panel.parquet"
    rows.set_axis(list(convention), axis=1).to_parquet(path, row_group_size=700)
    source = open_source(str(path))
    assert isinstance(source, LongParquetSource)
    assert source.variables() == tuple(sorted(rows["unique_id"].unique()))
    expected_stamps = pd.DatetimeIndex(sorted(rows["ds"].unique())).as_unit("ns")
    assert source.timestamps().equals(expected_stamps)
    shard = ["id07", "id02", "id03"]
    got = source.load(shard, pd.Timestamp("2018-03-01"), pd.Timestamp("2018-09-30"))
    pd.testing.assert_frame_equal(got, reference(rows, shard, "2018-03-01", "2018-09-30"))


def test_folders_hive_partitions_time_zones_and_integer_ids(tmp_path: Path) -> None:
    rows = random_long(2, n_series=9, days=600)
    rows["unique_id"] = rows["unique_id"].str.removeprefix("id").astype("int64")
    rows["year"] = rows["ds"].dt.year
    rows["shard"] = rows["unique_id"] % 3
    stored = rows.assign(ds=rows["ds"].dt.tz_localize("Europe/Paris"))
    folder = tmp_path / "hive"
    pq.write_to_dataset(
        pa.Table.from_pandas(stored, preserve_index=False), folder, partition_cols=["year", "shard"]
    )
    (folder / "_SUCCESS").write_text("")
    source = open_source(str(folder))
    assert isinstance(source, LongParquetSource)
    assert source.variables() == tuple(str(i) for i in range(9))
    utc = rows.assign(ds=stored["ds"].dt.tz_convert("UTC").dt.tz_localize(None))
    got = source.load(["4", "0"], pd.Timestamp("2019-06-01"), pd.Timestamp("2020-02-01"))
    expected = reference(
        utc.assign(unique_id=utc["unique_id"].astype(str)), ["4", "0"], "2019-06-01", "2020-02-01"
    )
    pd.testing.assert_frame_equal(got, expected)
    opened = {
        file.year
        for file, _ in source.plan(["4"], pd.Timestamp("2019-06-01"), pd.Timestamp("2019-12-31"))
    }
    assert opened == {2019}, "other years' files are not even opened"


class CountingHandler(pafs.FileSystemHandler):  # type: ignore[misc]
    """A local filesystem that counts the bytes read from each file.

    Only reading is implemented: the source under test only opens files for reading.
    """

    def __init__(self) -> None:
        self.local = pafs.LocalFileSystem()
        self.read: Counter[str] = Counter()

    def open_input_file(self, path: str) -> Any:
        counts = self.read
        inner = Path(path).open("rb")  # noqa: SIM115 (closed by pyarrow through PythonFile)

        class Counted(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def seekable(self) -> bool:
                return True

            def seek(self, offset: int, whence: int = 0) -> int:
                return inner.seek(offset, whence)

            def tell(self) -> int:
                return inner.tell()

            def readinto(self, buffer: Any) -> int:
                count = inner.readinto(buffer)
                counts[path] += count
                return count

            def close(self) -> None:
                inner.close()
                super().close()

        return pa.PythonFile(Counted(), mode="r")

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path: str) -> str:
        return path

    def _not_needed(self, *args: Any) -> Any:
        raise NotImplementedError("the source only opens files for reading")

    copy_file = create_dir = delete_dir = delete_dir_contents = delete_file = _not_needed
    delete_root_dir_contents = get_file_info = get_file_info_selector = move = _not_needed
    open_append_stream = open_input_stream = open_output_stream = _not_needed


def test_a_shard_reads_only_its_row_groups(tmp_path: Path) -> None:
    """Sorted by (unique_id, ds) with whole series per row group, a tenth of the series
    over a year reads a small fraction of the bytes, and the same values as a full read."""
    spec = PanelSpec(n_series=200, years=4, seed=3)
    path = write_panel(spec, tmp_path / "panel.parquet", rows_per_group=20 * spec.n_rows)
    handler = CountingHandler()
    columns = LongColumns("unique_id", "ds", "y")
    source = LongParquetSource("counted", [str(path)], pafs.PyFileSystem(handler), columns)
    shard = list(source.variables()[35:75])  # s00034 .. s00073: row groups 2, 3 and 4
    before = handler.read[str(path)]  # the driver's scan of the series and time columns
    first, last = pd.Timestamp("2001-01-01"), pd.Timestamp("2001-12-31")
    got = source.load(shard, first, last)
    read = handler.read[str(path)] - before
    groups = [g for _, gs in source.plan(shard, first, last) for g in gs]
    assert groups == [2, 3, 4]
    metadata = pq.ParquetFile(path).metadata
    their_bytes = sum(
        metadata.row_group(g).column(c).total_compressed_size for g in groups for c in range(3)
    )
    assert 0 < read <= their_bytes + metadata.serialized_size + (64 << 10)
    assert read < 0.35 * path.stat().st_size, "3 row groups of 11"
    whole = pq.read_table(path).to_pandas()
    expected = reference(whole.astype({"unique_id": str}), shard, "2001-01-01", "2001-12-31")
    pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize("budget", [2**30, 0], ids=["blocks-kept", "no-budget"])
def test_windows_read_again_come_from_kept_blocks_and_equal_a_pandas_pivot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """Row groups sorted by series then time (gaps included) become blocks kept for the next
    windows: a window read again reads no byte, and every window of every shard equals the
    pivot; with no budget left every load reads its row groups again, with the same values."""
    monkeypatch.setattr(long, "BLOCK_CACHE_BYTES", budget)
    rows = random_long(3).sort_values(["unique_id", "ds"], ignore_index=True)
    path = tmp_path / "panel.parquet"
    rows.to_parquet(path, row_group_size=700)  # about two series a group, split mid-series
    handler = CountingHandler()
    columns = LongColumns(*NIXTLA)
    source = LongParquetSource("counted", [str(path)], pafs.PyFileSystem(handler), columns)
    names = list(source.variables())
    windows = [
        (["id07", "id02", "id03"], "2018-03-01", "2018-09-30"),
        (names, "2018-01-01", "2019-06-28"),
        (["id11"], "2018-06-05", "2018-06-05"),
        (["id07", "id02", "id03"], "2018-03-01", "2018-09-30"),
    ]
    read = []
    for shard, first, last in windows:
        before = handler.read[str(path)]
        got = source.load(shard, pd.Timestamp(first), pd.Timestamp(last))
        read.append(handler.read[str(path)] - before)
        pd.testing.assert_frame_equal(got, reference(rows, shard, first, last))
    if budget:
        assert read[1] > 0 and read[2] == read[3] == 0, read
    else:
        assert read[3] == read[0] > 0, read


def test_a_row_given_twice_in_two_row_groups_is_refused(tmp_path: Path) -> None:
    rows = random_long(4, n_series=4).sort_values(["unique_id", "ds"], ignore_index=True)
    again = rows[rows["unique_id"] == "id01"].iloc[[5]]
    stamp = again["ds"].iloc[0]
    path = tmp_path / "panel.parquet"
    pd.concat([rows, again]).to_parquet(path, row_group_size=len(rows))
    source = open_source(str(path))
    with pytest.raises(DataError, match=rf"series 'id01' has 2 rows at {stamp}; each"):
        source.load(["id00", "id01"], stamp - pd.Timedelta(days=30), stamp)


def test_a_task_given_its_window_timestamps_never_scans_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's first load of a planned window (timestamps carried by the batch) reads
    only the shard's row groups: no pass over the id and time columns of the whole panel,
    and the same values as a load through the time index."""
    spec = PanelSpec(n_series=200, years=4, seed=4)
    path = write_panel(spec, tmp_path / "panel.parquet", rows_per_group=20 * spec.n_rows)
    columns = LongColumns("unique_id", "ds", "y")
    driver = LongParquetSource("driver", [str(path)], pafs.LocalFileSystem(), columns)
    shard = list(driver.variables()[35:75])
    first, last = pd.Timestamp("2001-01-01"), pd.Timestamp("2001-12-31")
    expected = driver.load(shard, first, last)
    stamps = driver.timestamps()[driver.timestamps().slice_indexer(first, last)].to_numpy()
    handler = CountingHandler()
    worker = LongParquetSource("worker", [str(path)], pafs.PyFileSystem(handler), columns)

    def no_scan(self: LongParquetSource) -> None:
        raise AssertionError("the worker scanned the files for the time index")

    monkeypatch.setattr(LongParquetSource, "_scan", no_scan)
    values, got_stamps = worker.load_window(shard, first, last, stamps)
    np.testing.assert_array_equal(values, expected.to_numpy())
    np.testing.assert_array_equal(got_stamps, expected.index.to_numpy())
    metadata = pq.ParquetFile(path).metadata
    planned = sum(
        metadata.row_group(g).column(c).total_compressed_size for g in (2, 3, 4) for c in range(3)
    )
    assert handler.read[str(path)] <= planned + metadata.serialized_size + (64 << 10)


def test_csv_in_either_convention_and_in_any_row_order(tmp_path: Path) -> None:
    rows = random_long(4)
    rows.to_csv(tmp_path / "nixtla.csv", index=False)
    rows.set_axis(list(PULSE), axis=1).to_csv(tmp_path / "pulse.csv", index=False)
    expected = reference(rows, ["id01", "id05"], "2018-01-01", "2019-06-01")
    for name in ("nixtla.csv", "pulse.csv"):
        got = open_source(str(tmp_path / name)).load(
            ["id01", "id05"], pd.Timestamp("2018-01-01"), pd.Timestamp("2019-06-01")
        )
        pd.testing.assert_frame_equal(got, expected, check_freq=False, check_index_type=False)


def write(tmp_path: Path, frame: pd.DataFrame, name: str = "bad.parquet") -> str:
    path = tmp_path / name
    frame.to_parquet(path, index=False)
    return str(path)


def good_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "unique_id": ["a", "a", "b"],
            "ds": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-01"]),
            "y": [1.0, 2.0, 3.0],
        }
    )


def load_all(uri: str) -> pd.DataFrame:
    source = open_source(uri)
    return source.load(list(source.variables()), pd.Timestamp.min, pd.Timestamp.max)


@pytest.mark.parametrize(
    ("frame", "fragments"),
    [
        (
            good_rows().drop(columns="y"),
            [
                "unique_id",
                "not a full long layout",
                "unique_id, ds, y (Nixtla/mlforecast)",
                "variable, timestamp",
            ],
        ),
        (good_rows().assign(y=["1", "x", "3"]), ["column 'y' holds", "string, not numbers"]),
        (good_rows().assign(ds=["2020-01-01"] * 3), ["column 'ds' holds", "not timestamps"]),
        (
            pd.concat([good_rows(), good_rows().iloc[:1]]),
            ["series 'a' has 2 rows at 2020-01-01", "must appear once"],
        ),
        (
            good_rows().assign(ds=pd.to_datetime([None, "2020-01-01", "2020-01-02"])),
            ["1 rows with no 'ds'"],
        ),
    ],
    ids=["missing-column", "non-numeric", "text-times", "duplicate", "no-time"],
)
def test_bad_long_parquet_fails_with_one_line_naming_the_file(
    tmp_path: Path, frame: pd.DataFrame, fragments: list[str]
) -> None:
    path = write(tmp_path, frame)
    with pytest.raises(DataError) as caught:
        load_all(path)
    message = str(caught.value)
    assert "\n" not in message and path in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_file_of_a_folder_without_the_columns_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "panel"
    folder.mkdir()
    write(folder, good_rows(), "a.parquet")
    bad = write(folder, good_rows().rename(columns={"y": "price"}), "b.parquet")
    with pytest.raises(
        DataError,
        match=rf"{bad}: has no column 'y' \(columns: unique_id, ds, "
        r"price\); long data needs",
    ):
        load_all(str(folder))


def test_unknown_series_are_named(tmp_path: Path) -> None:
    source = open_source(write(tmp_path, good_rows(), "ok.parquet"))
    with pytest.raises(DataError, match=r"unknown variable 'zz'; the data has: a, b"):
        source.load(["a", "zz"], pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-02"))


def test_statistics_are_found_after_a_nested_column(tmp_path: Path) -> None:
    """Parquet leaf columns and Arrow fields differ after a struct: pruning must not mix them."""
    rows = good_rows().assign(ds=pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-02"]))
    table = pa.Table.from_pandas(rows, preserve_index=False)
    tags = pa.array([{"source": "x", "quality": 1}] * len(rows))
    pq.write_table(table.add_column(0, "tags", tags), tmp_path / "nested.parquet", row_group_size=2)
    source = open_source(str(tmp_path / "nested.parquet"))
    first, last = pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-02")
    assert [groups for _, groups in source.plan(["b"], first, last)] == [[1]]
    got = source.load(["b", "a"], first, last)
    pd.testing.assert_frame_equal(got, reference(rows, ["b", "a"], "2020-01-01", "2020-01-02"))
