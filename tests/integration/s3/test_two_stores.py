"""Data read from one S3 store, outputs written to another, each with its own credentials.

Two moto servers that check signatures and IAM policies: on the data server only the
reader's keys exist (and may only read), on the results server only the writer's. A run
that used one store's keys on the other would be refused, so a run that succeeds shows each
location was reached with its own endpoint and credentials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .datasets import fill_two_stores, layout, write_files
from .servers import Cli, MotoServer
from .test_s3_cli import MODEL_ARGS, get, keys, learned, one_line_error


@pytest.fixture
def stores(
    moto_server_factory: Any,
) -> tuple[MotoServer, dict[str, str], MotoServer, dict[str, str]]:
    """The data server (bucket `market`, a reader) and the results server (bucket `results`,
    a writer)."""
    data, results = moto_server_factory(), moto_server_factory()
    _, reader, writer = fill_two_stores(data, results)
    return data, reader, results, writer


def test_results_go_to_their_own_store_with_their_own_credentials(
    cli: Cli, stores: tuple[MotoServer, dict[str, str], MotoServer, dict[str, str]],
    tmp_path: Path,
) -> None:  # fmt: skip
    """Credentials of the outputs from OUTPUT_AWS_* variables, the data's from the AWS chain:
    the results store holds the run's files, the data store nothing new, and the numbers
    equal a run on local files."""
    data, reader, results, writer = stores
    path, files = layout("wide-csv-object")
    write_files(tmp_path / "local", files)
    local = cli("--input-data", str(tmp_path / "local" / path), "--output-dir",
                str(tmp_path / "out"), *MODEL_ARGS)  # fmt: skip
    assert local.returncode == 0, local.stderr

    done = cli(
        "--input-data", f"s3://market/{path}", "--s3-endpoint-url", data.endpoint,
        "--output-dir", "s3://results/run", "--s3-output-endpoint-url", results.endpoint,
        "--s3-output-credentials-env", "OUTPUT_AWS_", *MODEL_ARGS,
        AWS_ACCESS_KEY_ID=reader["key"], AWS_SECRET_ACCESS_KEY=reader["secret"],
        OUTPUT_AWS_ACCESS_KEY_ID=writer["key"], OUTPUT_AWS_SECRET_ACCESS_KEY=writer["secret"],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    writer_client = results.client(**writer)
    document = json.loads(get(writer_client, "results", "run/results.json"))
    assert keys(writer_client, "results", "run/") == sorted(
        f"run/{name}" for name in ["results.json", *document["files"].values()]
    )
    assert keys(data.client(**reader), "market") == [path]
    expected = json.loads((tmp_path / "out" / "results.json").read_text())
    assert learned(document) == learned(expected)
    assert writer["secret"] not in done.stderr + json.dumps(document)
    assert reader["secret"] not in done.stderr + json.dumps(document)


def test_a_profile_writes_the_outputs_and_resume_reads_them_back(
    cli: Cli, stores: tuple[MotoServer, dict[str, str], MotoServer, dict[str, str]],
    tmp_path: Path,
) -> None:  # fmt: skip
    """--s3-output-profile: the writer's keys from a shared credentials file; a second run
    resumes from the first's results in the results store (an output, read with its
    settings) and writes next to them."""
    data, reader, results, writer = stores
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[results]\naws_access_key_id = {writer['key']}\n"
        f"aws_secret_access_key = {writer['secret']}\n"
    )
    common = (
        "--input-data", "s3://market/panel.csv", "--s3-endpoint-url", data.endpoint,
        "--s3-output-endpoint-url", results.endpoint, "--s3-output-profile", "results",
        *MODEL_ARGS,
    )  # fmt: skip
    environment = {"AWS_ACCESS_KEY_ID": reader["key"], "AWS_SECRET_ACCESS_KEY": reader["secret"],
                   "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}  # fmt: skip
    first = cli(*common, "--end-date", "2017-06-01", "--output-dir", "s3://results/first",
                **environment)  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = cli(*common, "--output-dir", "s3://results/second",
                 "--resume-from", "s3://results/first/results.json", **environment)  # fmt: skip
    assert second.returncode == 0, second.stderr
    document = json.loads(get(results.client(**writer), "results", "second/results.json"))
    assert document["resumed_from"] == "s3://results/first/results.json"
    assert document["data"]["start"].startswith("2017-06-01")


def test_missing_output_credentials_are_one_clear_line(
    cli: Cli, stores: tuple[MotoServer, dict[str, str], MotoServer, dict[str, str]],
) -> None:  # fmt: skip
    """The named variables are not set: one line naming them, exit 1, nothing written."""
    data, reader, results, writer = stores
    done = cli(
        "--input-data", "s3://market/panel.csv", "--s3-endpoint-url", data.endpoint,
        "--output-dir", "s3://results/run", "--s3-output-endpoint-url", results.endpoint,
        "--s3-output-credentials-env", "OUTPUT_AWS_", *MODEL_ARGS,
        AWS_ACCESS_KEY_ID=reader["key"], AWS_SECRET_ACCESS_KEY=reader["secret"],
        OUTPUT_AWS_ACCESS_KEY_ID=writer["key"],
    )  # fmt: skip
    line = one_line_error(done)
    assert "OUTPUT_AWS_SECRET_ACCESS_KEY is not set" in line and results.endpoint in line
    assert keys(results.client(**writer), "results") == []
