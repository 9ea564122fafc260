"""The CLI as a user runs it: a subprocess, its exit status, its one-line errors, its files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PROJECT = Path(__file__).resolve().parents[2]
SMALL = "builtin:synthetic?n_variables=3&years=3&seed=5"


def pulse_train(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m recursive_training.run_training ARGS`` and capture its output."""
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:recursive_training"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "recursive_training.run_training", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
        check=False,
    )


@pytest.fixture
def panel() -> pd.DataFrame:
    """A small valid wide panel."""
    index = pd.bdate_range("2015-01-01", periods=400)
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        np.cumsum(rng.standard_normal((400, 2)), axis=0) + 50,
        index=index,
        columns=["spx_close", "us_10y_yield"],
    ).rename_axis("date")


def test_default_run_writes_results_state_and_predictions(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = pulse_train(
        "--output-dir", str(out), "--input-data", SMALL, "--log-dir", str(tmp_path / "logs")
    )
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "results.json").read_text())
    assert document["kind"] == "pulse.dev/TrainingResults" and document["schema_version"] == 3
    assert document["data"]["variables"] == ["spx_close", "us_10y_yield", "gdp_growth"]
    run_id = document["run_id"]
    assert document["files"] == {
        "state": f"state-{run_id}.npz",
        "predictions": f"predictions-{run_id}.parquet",
        "metrics": f"metrics-{run_id}.parquet",
        "rules": f"rules-{run_id}.parquet",
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.json", *document["files"].values()]
    )
    assert "mean skill vs persistence" in done.stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    (log_file,) = (tmp_path / "logs").iterdir()
    assert "Planned" in log_file.read_text()


def test_runs_as_a_script_a_module_and_a_console_command(tmp_path: Path) -> None:
    script = [sys.executable, str(PROJECT / "recursive_training" / "run_training.py"), "--help"]
    command = shutil.which("pulse-train", path=str(Path(sys.executable).parent))
    assert command is not None, "the console script is not installed (pip install -e .)"
    for argv in (
        script,
        [sys.executable, "-m", "recursive_training.run_training", "--help"],
        [command, "--help"],
    ):
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False
        )
        assert done.returncode == 0, done.stderr
        assert "--batch-size-days" in done.stdout and "examples:" in done.stdout
    done = subprocess.run(
        [*script[:2], "--input-data", SMALL, "--output-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_yaml_config_is_overridden_by_flags(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"input_data: '{SMALL}'\nlags: 4\nbatch-size-days: 200\nhorizon: 2\n")
    done = pulse_train("--config", str(config), "--lags", "2", "--output-dir", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    echoed = json.loads((tmp_path / "o" / "results.json").read_text())["config"]
    assert (echoed["lags"], echoed["batch_size_days"], echoed["horizon"]) == (2, 200, 2)


def test_refuses_to_overwrite_results_without_the_flag(tmp_path: Path) -> None:
    assert pulse_train("--input-data", SMALL, "--output-dir", str(tmp_path)).returncode == 0
    before = (tmp_path / "results.json").read_bytes()
    done = pulse_train("--input-data", SMALL, "--output-dir", str(tmp_path))
    assert done.returncode == 1 and "--overwrite" in done.stderr
    assert (tmp_path / "results.json").read_bytes() == before
    assert (
        pulse_train("--input-data", SMALL, "--output-dir", str(tmp_path), "--overwrite").returncode
        == 0
    )


def write_csv(path: Path, text: str) -> str:
    """Write a CSV file and return its path."""
    path.write_text(text)
    return str(path)


BAD_FILES = {
    "duplicate": (
        "date,a\n2020-01-01,1\n2020-01-02,2\n2020-01-02,3\n",
        "duplicate timestamp 2020-01-02",
    ),
    "unsorted": ("date,a\n2020-01-01,1\n2020-01-03,2\n2020-01-02,3\n", "not sorted"),
    "non_numeric": (
        "date,a\n2020-01-01,1\n2020-01-02,abc\n2020-01-03,3\n",
        "non-numeric value 'abc'",
    ),
    "bad_date": ("date,a\n2020-01-01,1\nyesterday,2\n", "'yesterday' is not a date"),
    "one_column": ("date\n2020-01-01\n", "only one column"),
    "long_duplicate": (
        "timestamp,variable,value\n2020-01-01,a,1\n2020-01-01,a,2\n",
        "duplicate timestamp",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_fail_with_a_clear_line_naming_the_file(tmp_path: Path, case: str) -> None:
    text, message = BAD_FILES[case]
    path = write_csv(tmp_path / f"{case}.csv", text)
    assert_clean_failure(tmp_path, [message, path], "--input-data", path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("duplicate", "series 'a' has 2 rows at 2016-12-01"),
        ("missing", "long data needs the columns unique_id, ds, y (Nixtla/mlforecast)"),
    ],
)
def test_bad_long_parquet_fails_with_a_clear_line_naming_the_file(
    tmp_path: Path, case: str, message: str
) -> None:
    stamps = pd.bdate_range("2015-01-01", periods=700)
    rows = pd.concat(
        pd.DataFrame({"unique_id": name, "ds": stamps, "y": np.arange(700.0) * (i + 1)})
        for i, name in enumerate("ab")
    )
    if case == "duplicate":  # found by the batch that loads 2016-12-01, after planning
        rows = pd.concat([rows, rows[rows["ds"] == "2016-12-01"].iloc[:1]])
    else:
        rows = rows.rename(columns={"y": "price"})
    path = tmp_path / f"{case}.parquet"
    rows.to_parquet(path, index=False)
    assert_clean_failure(
        tmp_path, [message, str(path)], "--input-data", str(path), "--batch-size-days", "90"
    )


def assert_clean_failure(tmp_path: Path, fragments: list[str], *args: str) -> None:
    """Exit 1, the fragments in one error line, no traceback, no results left behind."""
    out = tmp_path / "results-out"
    done = pulse_train(*args, "--output-dir", str(out), cwd=tmp_path)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    errors = [
        line for line in done.stderr.splitlines() if "ERROR" in line or line.startswith("error")
    ]
    assert len(errors) == 1, done.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--lags", "0"], ["lags (--lags)", "greater than or equal to 1"]),
        (["--batch-size-days", "-3"], ["batch_size_days", "greater than 0"]),
        (["--ridge-alpha", "lots"], ["--ridge-alpha", "must be a number or auto"]),
        (["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
        (["--rules", "momentum(5),astrology"], ["unknown rule 'astrology'"]),
        (["--rules", "cross(spx_close->nope)"], ["names variable 'nope'"]),
        (["--max-workers", "2"], ["max_workers needs use_dask"]),
        (["--start-date", "2010-01-01", "--end-date", "2009-01-01"], ["must be before end_date"]),
        (["--start-date", "someday"], ["start_date (--start-date)"]),
        (["--variables", "spx_close,gold"], ["unknown variable 'gold'", "the data has: spx_close"]),
        (
            ["--start-date", "1990-01-01", "--end-date", "1991-01-01"],
            ["no rows between 1990-01-01 and 1991-01-01"],
        ),
        (
            ["--input-data", "builtin:macro", "--batch-size-days", "30"],
            ["shorter than the spacing", "--batch-size-days 9"],
        ),
        (["--input-data", "missing.csv"], ["missing.csv", "no such file"]),
        (["--input-data", "builtin:nonsense"], ["unknown builtin data set"]),
        (["--input-data", "builtin:synthetic?years=abc"], ["years='abc' is not a number"]),
        (["--resume-from", "nowhere.npz"], ["nowhere.npz does not exist"]),
        (["--config", "absent.yaml"], ["cannot read config file absent.yaml"]),
        (["--lags", "400", "--end-date", "2001-01-01"], ["holds no complete sample"]),
    ],
)
def test_bad_flags_fail_with_a_clear_line(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    assert_clean_failure(tmp_path, fragments, "--input-data", SMALL, *args)


def test_bad_config_file_names_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("lags: 3\nbatch_sise_days: 30\n")
    assert_clean_failure(
        tmp_path, ["run.yaml", "unknown setting(s) batch_sise_days"], "--config", str(config)
    )
    config.write_text("lags: [3\n")
    assert_clean_failure(tmp_path, ["not valid YAML"], "--config", str(config))


def test_unreadable_parquet_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "prices.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    assert_clean_failure(
        tmp_path, [str(broken), "cannot read as PARQUET"], "--input-data", str(broken)
    )


def test_resume_state_of_another_layout_is_refused(tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert (
        pulse_train(
            "--input-data", SMALL, "--output-dir", str(first), "--end-date", "2001-06-01"
        ).returncode
        == 0
    )
    assert_clean_failure(
        tmp_path,
        ["cannot resume", "lags=5", "lags=3"],
        "--input-data",
        SMALL,
        "--resume-from",
        str(first / "results.json"),
        "--lags",
        "3",
    )
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert_clean_failure(
        tmp_path,
        ["junk.npz is not a Pulse training state file"],
        "--input-data",
        SMALL,
        "--resume-from",
        str(tmp_path / "junk.npz"),
    )


def test_wide_long_and_folder_layouts_give_the_same_model(
    tmp_path: Path, panel: pd.DataFrame
) -> None:
    panel.to_csv(tmp_path / "wide.csv")
    long = panel.stack().rename("value").rename_axis(["timestamp", "variable"]).reset_index()
    long.to_parquet(tmp_path / "long.parquet", index=False)
    folder = tmp_path / "by_variable"
    folder.mkdir()
    for name in panel.columns:
        panel[[name]].to_parquet(folder / f"{name}.parquet")
    # the mlforecast convention, rows in any order, partitioned by year (hive)
    nixtla = long.set_axis(["ds", "unique_id", "y"], axis=1).sample(frac=1.0, random_state=3)
    by_year = nixtla.assign(year=nixtla["ds"].dt.year)
    by_year.to_parquet(tmp_path / "nixtla", partition_cols=["year"])
    coefficients = []
    for source in ("wide.csv", "long.parquet", "by_variable", "nixtla"):
        out = tmp_path / f"out-{source}"
        done = pulse_train(
            "--input-data",
            str(tmp_path / source),
            "--output-dir",
            str(out),
            "--batch-size-days",
            "90",
        )
        assert done.returncode == 0, done.stderr
        coefficients.append(json.loads((out / "results.json").read_text())["model"]["coefficients"])
    assert coefficients[0] == coefficients[1] == coefficients[2] == coefficients[3]


def test_macro_data_runs_offline(tmp_path: Path) -> None:
    done = pulse_train(
        "--input-data",
        "builtin:macro",
        "--variables",
        "realgdp,cpi,unemp",
        "--batch-size-days",
        "1825",
        "--lags",
        "2",
        "--output-dir",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "results.json").read_text())["data"]
    assert data["start"].startswith("1959-01-01") and data["rows"] == 203


def test_a_variable_without_values_is_named_and_a_sparse_one_warned_about(
    tmp_path: Path, panel: pd.DataFrame
) -> None:
    panel = panel.assign(empty=np.nan, sparse=panel["spx_close"])
    panel.loc[panel.index[:300], "sparse"] = np.nan
    data = tmp_path / "panel.csv"
    panel.to_csv(data)
    assert_clean_failure(
        tmp_path,
        ["panel.csv", "no usable values for variable 'empty'", "--variables"],
        "--input-data",
        str(data),
    )
    done = pulse_train(
        "--input-data",
        str(data),
        "--variables",
        "spx_close,sparse",
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    (warning,) = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert "'sparse' has values for only" in warning


def test_an_earlier_run_survives_a_failed_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert pulse_train("--input-data", SMALL, "--output-dir", str(out)).returncode == 0
    (out / "blocker").write_text("")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    done = pulse_train(
        "--input-data",
        SMALL,
        "--output-dir",
        str(out),
        "--overwrite",
        "--output-file",
        "blocker/results.json",
        "--lags",
        "2",
    )
    assert done.returncode == 1
    assert f"{out / 'blocker'} is a file, not a folder" in done.stderr
    assert "Planned" not in done.stderr, "the output was not checked before training"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_from_a_results_file_and_no_unsafe_hint_for_a_pickle(tmp_path: Path) -> None:
    first = tmp_path / "first"
    args = ("--input-data", SMALL, "--lags", "2")
    done = pulse_train(*args, "--output-dir", str(first), "--end-date", "2001-06-01")
    assert done.returncode == 0, done.stderr
    done = pulse_train(
        *args,
        "--output-dir",
        str(tmp_path / "second"),
        "--resume-from",
        str(first / "results.json"),
    )
    assert done.returncode == 0, done.stderr
    second = json.loads((tmp_path / "second" / "results.json").read_text())
    assert second["data"]["start"].startswith("2001-06-01")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, header=np.array([{"kind": "x"}], dtype=object))
    assert_clean_failure(
        tmp_path,
        ["pickled.npz", "holds pickled Python objects"],
        *args,
        "--resume-from",
        str(pickled),
    )
    assert "allow_pickle" not in pulse_train(*args, "--resume-from", str(pickled)).stderr


def test_an_absurd_number_of_batches_is_refused_before_planning(tmp_path: Path) -> None:
    assert_clean_failure(
        tmp_path,
        ["makes 8005 batches, more than --max-batches 5000", "--batch-size-days"],
        "--end-date",
        "9999-01-01",
    )
    assert_clean_failure(
        tmp_path,
        ["makes 1095 batches, more than --max-batches 1000"],
        "--input-data",
        SMALL,
        "--batch-size-days",
        "1",
        "--max-batches",
        "1000",
    )


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    """stdout is a pipe whose reader has already gone, as with ``| head -1`` once it has
    its line."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "recursive_training.run_training",
                "--input-data",
                SMALL,
                "--output-dir",
                str(tmp_path / "out"),
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert (tmp_path / "out" / "results.json").is_file()
