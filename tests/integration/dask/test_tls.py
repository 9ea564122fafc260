"""Mutual TLS of a run's Dask cluster, with real ``dask scheduler``/``dask worker`` processes
started with the files and settings the operator gives a run's pods (trainingrun_operator.tls).

The run's own client works and gets the numbers of a serial run; a client with another run's
certificate, with the CA but no certificate, or without TLS at all is refused by the
scheduler and never appears among its clients.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask
import pytest
from distributed import Client, Security

from recursive_training.stages import TrainingPipeline
from tests.integration.dask.conftest import DASK, START_SECONDS, _stop, free_port
from tests.integration.dask.test_remote_engine import assert_same, settings
from trainingrun_operator import tls

pytestmark = pytest.mark.integration
REFUSED_WITHIN_S = 5


def write_files(folder: Path, run_name: str) -> Path:
    """A run's CA and certificate (as the operator issues them) written to `folder`."""
    folder.mkdir(parents=True)
    now = datetime.datetime.now(datetime.UTC)
    for name, content in tls.issue(run_name, ["127.0.0.1", "localhost"], now).items():
        (folder / name).write_bytes(content)
    return folder


def pod_env(files: Path) -> dict[str, str]:
    """The environment of a run's pod (tls.dask_env) with the Secret mounted at `files`."""
    return {e["name"]: e["value"] for e in tls.dask_env(str(files))}


def run_security(files: Path, with_cert: bool = True) -> Security:
    """A client's TLS settings: the run's CA, and its certificate unless `with_cert` is False."""
    cert = {"tls_client_cert": str(files / tls.CERT_KEY),
            "tls_client_key": str(files / tls.KEY_KEY)} if with_cert else {}  # fmt: skip
    security: Security = Security(  # type: ignore[no-untyped-call]
        tls_ca_file=str(files / tls.CA_KEY), require_encryption=True, **cert
    )
    return security


def handshake_without_certificate(address: str, ca_file: Path) -> str:
    """Open TLS to `address` trusting `ca_file` but showing no certificate; read once."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    with socket.create_connection((host, int(port)), timeout=REFUSED_WITHIN_S) as raw:
        try:
            with context.wrap_socket(raw) as conn:
                # TLS 1.3: the server checks the client's certificate after the handshake.
                return "refused" if conn.recv(1) == b"" else "accepted"
        except (ssl.SSLError, ConnectionResetError):
            return "refused"
        except TimeoutError:
            return "accepted"  # the scheduler kept the connection open, waiting for us


@contextmanager
def tls_cluster(folder: Path, files: Path) -> Iterator[str]:
    """A scheduler and one worker speaking only mutual TLS with the run's files."""
    address = f"tls://127.0.0.1:{free_port()}"
    env = {**{k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"},
           **pod_env(files)}  # fmt: skip
    commands = {
        "scheduler": [DASK, "scheduler", "--protocol=tls", "--host=127.0.0.1",
                      f"--port={address.rsplit(':', 1)[1]}", "--dashboard-address=127.0.0.1:0"],
        "worker": [DASK, "worker", address, "--nthreads=1", "--no-dashboard",
                   f"--local-directory={folder}"],
    }  # fmt: skip
    processes = []
    try:
        for name, command in commands.items():
            with (folder / f"{name}.log").open("wb") as log:
                processes.append(subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env
                ))  # fmt: skip
        with Client(address, security=run_security(files), timeout=START_SECONDS,
                    set_as_default=False) as client:  # fmt: skip
            client.wait_for_workers(1, timeout=START_SECONDS)
        yield address
    finally:
        for process in reversed(processes):
            _stop(process)


@pytest.fixture(scope="module")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files of run "a"."""
    return write_files(tmp_path_factory.mktemp("tls") / "a", "a")


def client_config(files: Path) -> dict[str, object]:
    """The run's TLS files as dask config (what the driver pod's environment sets)."""
    return {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": str(files / tls.CA_KEY),
        "distributed.comm.tls.client.cert": str(files / tls.CERT_KEY),
        "distributed.comm.tls.client.key": str(files / tls.KEY_KEY),
    }


def test_the_runs_own_driver_gets_the_serial_numbers_over_mutual_tls(
    tmp_path: Path, run_files: Path
) -> None:
    """The pipeline, configured as the driver pod is (dask config, tls:// address), runs on
    the TLS cluster and agrees with a serial run."""
    serial = TrainingPipeline().execute(settings())
    with tls_cluster(tmp_path, run_files) as address, dask.config.set(client_config(run_files)):
        remote = TrainingPipeline().execute(settings(dask_scheduler_address=address))
    assert_same(remote, serial)
    assert remote.engine == f"Dask scheduler {address}"


def test_only_a_client_with_the_runs_certificate_gets_in(tmp_path: Path, run_files: Path) -> None:
    """Another run's certificate, the CA without a certificate, and plain TCP are refused;
    the scheduler counts only the run's own client."""
    other = write_files(tmp_path / "b", "b")
    with tls_cluster(tmp_path, run_files) as address:
        attempts = {
            "another run's certificate": (address, run_security(other)),
            "plain TCP": (address.replace("tls://", "tcp://"), Security()),  # type: ignore[no-untyped-call]
        }
        for what, (target, security) in attempts.items():
            with (
                pytest.raises((OSError, TimeoutError)),
                Client(target, security=security, timeout=REFUSED_WITHIN_S, set_as_default=False),
            ):
                pytest.fail(f"{what}: connected")
        # distributed will not even try TLS without a client certificate: a bare TLS client
        # that trusts the CA finds the scheduler demands one.
        assert handshake_without_certificate(address, run_files / tls.CA_KEY) == "refused"
        with Client(address, security=run_security(run_files), timeout=START_SECONDS,
                    set_as_default=False) as client:  # fmt: skip
            assert client.submit(sum, [1, 2]).result(timeout=START_SECONDS) == 3
            clients = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients))
            assert len(clients) == 2, clients  # this one and the scheduler's own
