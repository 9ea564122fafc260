"""Fixtures of the S3 tests: a real S3-compatible HTTP server and the CLI run against it.

The server is moto in server mode, started as a subprocess (``servers.MotoServer``) once
per session. A subprocess rather than ``ThreadedMotoServer``: the CLI under test is a
subprocess too, so test, CLI and server are three processes talking plain HTTP as in
production, and moto's in-process patching can never leak into the code under test.
Each test gets a fresh bucket; tests that need IAM checks start their own server.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .servers import Cli, MotoServer, aws_environment


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One S3 server (no auth checks) shared by the session."""
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def moto_server_factory(tmp_path: Path) -> Iterator[Callable[[], MotoServer]]:
    """Start extra servers for one test (IAM checks change server state); all stop after it."""
    servers: list[MotoServer] = []

    def start() -> MotoServer:
        server = MotoServer(tmp_path / f"moto-{len(servers)}.log")
        servers.append(server)
        return server.__enter__()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def s3(s3_server: MotoServer) -> Any:
    """A plain boto3 S3 client of the shared server, to set up and check buckets."""
    return s3_server.client()


@pytest.fixture
def bucket(s3: Any) -> str:
    """A new, empty bucket for this test."""
    name = f"pulse-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """``cli(*args, AWS_X=...)``: run the CLI in ``tmp_path`` with the test AWS environment."""

    def run(*args: str, **environment: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "recursive_training.run_training", *args],
            capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False,
            env=aws_environment(**environment),
        )

    return run
