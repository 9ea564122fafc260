"""The CLI end to end against a real S3-compatible server (moto in server mode).

Data is read from S3, results, state and predictions are written to S3 and read back with
plain boto3; the same run from local files and from S3 gives identical numbers; and each
failure a user can meet (missing bucket, wrong key, bad credentials, access denied, an
endpoint that is not there or goes away mid-run) ends with one clear line, exit status 1
and no results object.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recursive_training.state import TrainingState

from .datasets import layout, put_files, write_files
from .servers import Cli, MotoServer, TcpProxy, aws_environment, free_port

MODEL_ARGS = ("--batch-size-days", "120", "--lags", "3", "--rules", "momentum(5),cross,model")
# Fields of the results that depend on where and when a run happened, not on what it learned.
RUN_FIELDS = {"run_id", "created", "seconds", "config", "config_hash", "resumed_from", "engine",
              "files"}
BATCH_RUN_FIELDS = {"seconds", "workers"}


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key in ``bucket`` under ``prefix``."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def get(s3: Any, bucket: str, key: str) -> bytes:
    """An object's bytes, read with plain boto3."""
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def learned(document: dict[str, Any]) -> dict[str, Any]:
    """What a results document says was learned, without when/where the run happened."""
    kept = {k: v for k, v in document.items() if k not in RUN_FIELDS}
    kept["data"] = {k: v for k, v in kept["data"].items() if k != "source"}
    kept["batches"] = [{k: v for k, v in b.items() if k not in BATCH_RUN_FIELDS}
                       for b in kept["batches"]]
    return kept


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error line, after checking it failed the way a user error should."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    "name",
    ["wide-csv-object", "wide-parquet-per-year", "long-csv-per-variable", "long-parquet-object"],
)
def test_same_results_from_s3_as_from_local_files(
    name: str, cli: Cli, s3: Any, bucket: str, s3_server: MotoServer, tmp_path: Path
) -> None:
    path, files = layout(name)
    write_files(tmp_path / "local", files)
    put_files(s3, bucket, files, prefix="data/")

    local = cli("--input-data", str(tmp_path / "local" / path), "--output-dir",
                str(tmp_path / "out"), *MODEL_ARGS)
    assert local.returncode == 0, local.stderr
    remote = cli("--input-data", f"s3://{bucket}/data/{path}", "--output-dir", f"s3://{bucket}/run",
                 "--s3-endpoint-url", s3_server.endpoint, *MODEL_ARGS)
    assert remote.returncode == 0, remote.stderr

    document = json.loads(get(s3, bucket, "run/results.json"))
    files = document["files"]
    assert keys(s3, bucket, "run/") == sorted(
        f"run/{name}" for name in ["results.json", *files.values()]
    )
    expected = json.loads((tmp_path / "out" / "results.json").read_text())
    assert document["data"]["source"] == f"s3://{bucket}/data/{path}"
    assert learned(document) == learned(expected)
    state = TrainingState.from_bytes(get(s3, bucket, f"run/{files['state']}"), "s3 state")
    local_state = TrainingState.from_bytes(
        (tmp_path / "out" / expected["files"]["state"]).read_bytes(), "local"
    )
    for name in ("xtx", "xty", "yty", "n"):
        np.testing.assert_array_equal(
            getattr(state.stats[0].moments, name), getattr(local_state.stats[0].moments, name)
        )
    for name in ("rule_hits", "rule_misses"):
        np.testing.assert_array_equal(
            getattr(state.stats[0], name), getattr(local_state.stats[0], name)
        )
    predictions = pd.read_parquet(io.BytesIO(get(s3, bucket, f"run/{files['predictions']}")))
    local_predictions = pd.read_parquet(tmp_path / "out" / expected["files"]["predictions"])
    pd.testing.assert_frame_equal(predictions, local_predictions)
    metrics = pd.read_parquet(io.BytesIO(get(s3, bucket, f"run/{files['metrics']}")))
    local_metrics = pd.read_parquet(tmp_path / "out" / expected["files"]["metrics"])
    pd.testing.assert_frame_equal(metrics, local_metrics)


def test_results_carry_content_type_and_run_metadata(
    cli: Cli, s3: Any, bucket: str, s3_server: MotoServer
) -> None:
    path, files = layout("wide-parquet-per-year")
    put_files(s3, bucket, files)
    done = cli("--s3-data-bucket", bucket, "--s3-data-prefix", path, "--s3-results-bucket", bucket,
               "--s3-results-prefix", "runs/first", "--s3-endpoint-url", s3_server.endpoint,
               *MODEL_ARGS)
    assert done.returncode == 0, done.stderr
    document = json.loads(get(s3, bucket, "runs/first/results.json"))
    assert document["config"]["input_data"] == f"s3://{bucket}/{path}"
    for key, content_type in [("results.json", "application/json"),
                              (document["files"]["state"], "application/octet-stream"),
                              (document["files"]["predictions"],
                               "application/vnd.apache.parquet"),
                              (document["files"]["metrics"], "application/vnd.apache.parquet"),
                              (document["files"]["rules"], "application/vnd.apache.parquet")]:
        head = s3.head_object(Bucket=bucket, Key=f"runs/first/{key}")
        assert head["ContentType"] == content_type
        assert head["Metadata"] == {"run-id": document["run_id"],
                                    "config-hash": document["config_hash"]}


def test_results_file_elsewhere_and_no_secret_in_logs_or_results(
    cli: Cli, s3: Any, bucket: str, s3_server: MotoServer, tmp_path: Path
) -> None:
    path, files = layout("wide-csv-object")
    put_files(s3, bucket, files)
    done = cli("--input-data", f"s3://{bucket}/{path}", "--output-dir", f"s3://{bucket}/run",
               "--s3-output-file", f"s3://{bucket}/index/run.json", "--s3-endpoint-url",
               s3_server.endpoint, "--log-level", "DEBUG", "--log-dir", str(tmp_path / "logs"),
               *MODEL_ARGS)
    assert done.returncode == 0, done.stderr
    assert keys(s3, bucket, "index/") == ["index/run.json"]
    (log_file,) = (tmp_path / "logs").iterdir()
    results = get(s3, bucket, "index/run.json").decode()
    files = json.loads(results)["files"]
    assert sorted(files.values()) == [f"s3://{bucket}/{key}" for key in keys(s3, bucket, "run/")]
    written = done.stdout + done.stderr + log_file.read_text() + results
    environment = aws_environment()
    assert environment["AWS_SECRET_ACCESS_KEY"] not in written
    assert environment["AWS_ACCESS_KEY_ID"] not in written  # not even in DEBUG request dumps


def test_resume_from_state_in_s3(cli: Cli, s3: Any, bucket: str, s3_server: MotoServer) -> None:
    path, files = layout("wide-parquet-per-year")
    put_files(s3, bucket, files)
    common = ("--input-data", f"s3://{bucket}/{path}", "--s3-endpoint-url", s3_server.endpoint,
              *MODEL_ARGS)
    first = cli(*common, "--end-date", "2017-06-01", "--output-dir", f"s3://{bucket}/first")
    assert first.returncode == 0, first.stderr
    second = cli(*common, "--resume-from", f"s3://{bucket}/first/results.json",
                 "--output-dir", f"s3://{bucket}/second")
    assert second.returncode == 0, second.stderr
    document = json.loads(get(s3, bucket, "second/results.json"))
    assert document["resumed_from"] == f"s3://{bucket}/first/results.json"
    assert document["data"]["start"].startswith("2017-06-01")

    missing = cli(*common, "--resume-from", f"s3://{bucket}/first/nope.npz",
                  "--output-dir", f"s3://{bucket}/third")
    line = one_line_error(missing)
    assert f"s3://{bucket}/first/nope.npz" in line and "no such object" in line
    assert keys(s3, bucket, "third/") == []


def test_earlier_results_are_kept_unless_overwrite(
    cli: Cli, s3: Any, bucket: str, s3_server: MotoServer
) -> None:
    args = ("--input-data", "builtin:synthetic?n_variables=2&years=2&seed=3", "--output-dir",
            f"s3://{bucket}/run", "--s3-endpoint-url", s3_server.endpoint)
    assert cli(*args).returncode == 0
    first = get(s3, bucket, "run/results.json")
    line = one_line_error(cli(*args))
    assert f"s3://{bucket}/run/results.json already holds the results" in line
    assert "--overwrite" in line
    assert get(s3, bucket, "run/results.json") == first
    assert cli(*args, "--overwrite").returncode == 0
    assert json.loads(get(s3, bucket, "run/results.json"))["run_id"] != json.loads(first)["run_id"]


@pytest.mark.parametrize(
    ("input_key", "expected"),
    [
        ("data/panel.csv", "bucket {missing!r} does not exist"),
        ("data/pannel.csv", "is neither an object nor a folder holding .csv or .parquet objects"),
        ("empty/", "is neither an object nor a folder holding .csv or .parquet objects"),
    ],
)
def test_missing_bucket_or_key_is_one_clear_line(
    input_key: str, expected: str, cli: Cli, s3: Any, bucket: str, s3_server: MotoServer
) -> None:
    put_files(s3, bucket, layout("wide-csv-object")[1], prefix="data/")
    missing = f"{bucket}-missing"
    source_bucket = missing if "does not exist" in expected else bucket
    done = cli("--input-data", f"s3://{source_bucket}/{input_key}", "--output-dir",
               f"s3://{bucket}/run", "--s3-endpoint-url", s3_server.endpoint)
    line = one_line_error(done)
    assert expected.format(missing=missing) in line
    assert f"s3://{source_bucket}/{input_key}" in line
    assert keys(s3, bucket, "run/") == []


def test_missing_results_bucket_fails_before_training(
    cli: Cli, s3_server: MotoServer, bucket: str
) -> None:
    done = cli("--output-dir", f"s3://{bucket}-gone/run", "--s3-endpoint-url", s3_server.endpoint)
    line = one_line_error(done)
    assert f"bucket '{bucket}-gone' does not exist" in line
    assert "Planned" not in done.stderr


def test_unreachable_endpoint_fails_fast_after_bounded_retries(cli: Cli, bucket: str) -> None:
    began = time.monotonic()
    done = cli("--input-data", f"s3://{bucket}/data/", "--s3-endpoint-url",
               f"http://127.0.0.1:{free_port()}", "--s3-max-attempts", "3",
               "--s3-connect-timeout", "1")
    line = one_line_error(done)
    assert "is unreachable" in line and "3 attempts" in line and "--s3-endpoint-url" in line
    assert time.monotonic() - began < 60


def test_an_endpoint_that_never_answers_fails_within_the_default_timeouts(
    cli: Cli, bucket: str
) -> None:
    """A local socket accepts connections (the kernel completes the handshake for its
    backlog) and never sends a byte: the defaults must give up within about 30 s."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        began = time.monotonic()
        done = cli("--input-data", f"s3://{bucket}/data/", "--s3-endpoint-url",
                   f"http://127.0.0.1:{silent.getsockname()[1]}")
        took = time.monotonic() - began
    line = one_line_error(done)
    assert "did not answer within --s3-read-timeout 8s in 3 attempts" in line
    assert "--s3-max-attempts" in line
    assert took < 35, f"{took:.0f} s"


def test_server_gone_mid_run_leaves_no_results(
    s3: Any, bucket: str, s3_server: MotoServer, tmp_path: Path
) -> None:
    put_files(s3, bucket, layout("wide-parquet-per-year")[1])
    proxy = TcpProxy(s3_server.port)
    process = subprocess.Popen(
        [sys.executable, "-m", "recursive_training.run_training", "--input-data",
         f"s3://{bucket}/years/", "--output-dir", f"s3://{bucket}/run", "--s3-endpoint-url",
         proxy.endpoint, "--s3-max-attempts", "2", "--s3-connect-timeout", "1", *MODEL_ARGS],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path,
        env=aws_environment(),
    )
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:  # the driver has listed and indexed the data: batches next
            seen.append(line)
            if "Planned" in line:
                break
        proxy.stop()
        out, rest = process.communicate(timeout=120)
    finally:
        proxy.stop()
        if process.poll() is None:
            process.kill()
            process.wait()
    done = subprocess.CompletedProcess(process.args, process.returncode, out, "".join(seen) + rest)
    line = one_line_error(done)
    assert "unreachable" in line and proxy.endpoint in line
    assert keys(s3, bucket, "run/") == []


@pytest.fixture
def iam_server(moto_server_factory: Any) -> tuple[MotoServer, dict[str, str]]:
    """A server that checks signatures and IAM policies, and the keys of a user who may do
    everything in S3 except replace ``run/results.json``."""
    server = moto_server_factory()
    server.client().create_bucket(Bucket="guarded")
    put_files(server.client(), "guarded", layout("wide-csv-object")[1])
    iam = server.client("iam")
    iam.create_user(UserName="trainer")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:PutObject",
         "Resource": "arn:aws:s3:::guarded/run/results.json"},
    ]}
    iam.put_user_policy(UserName="trainer", PolicyName="train", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="trainer")["AccessKey"]
    server.enforce_auth()
    return server, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                    "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        ({"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "secret access key does not match"),
        ({"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000"}, "access key id is not known"),
    ],
)
def test_bad_credentials_are_one_clear_line(
    credentials: dict[str, str], expected: str, cli: Cli,
    iam_server: tuple[MotoServer, dict[str, str]],
) -> None:
    server, good = iam_server
    done = cli("--input-data", "s3://guarded/panel.csv", "--output-dir", "s3://guarded/other",
               "--s3-endpoint-url", server.endpoint, **{**good, **credentials})
    line = one_line_error(done)
    assert expected in line and "AWS_ACCESS_KEY_ID" in line
    assert "not-the-secret" not in done.stderr


def test_access_denied_on_results_removes_the_run_files(
    cli: Cli, iam_server: tuple[MotoServer, dict[str, str]]
) -> None:
    server, good = iam_server
    done = cli("--input-data", "s3://guarded/panel.csv", "--output-dir", "s3://guarded/run",
               "--s3-endpoint-url", server.endpoint, *MODEL_ARGS, **good)
    line = one_line_error(done)
    assert "cannot write s3://guarded/run/results.json: access denied" in line
    viewer = server.client(key=good["AWS_ACCESS_KEY_ID"], secret=good["AWS_SECRET_ACCESS_KEY"])
    assert keys(viewer, "guarded", "run/") == []
