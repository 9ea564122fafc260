"""What the S3 tests run: a moto S3 server process, a TCP proxy, the CLI's environment.

``MotoServer`` runs ``moto_server`` (moto in server mode, from the venv's bin) on a free
127.0.0.1 port (or another local address: the e2e cluster's pods reach it on the node's
bridge), waits for it with a bounded readiness poll and stops it by its own PID.
``TcpProxy`` sits between the CLI and a server so a test can make the endpoint vanish in
the middle of a run while the server itself (and what the run left in it) stays readable.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import boto3

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
ACCESS_KEY = "pulse-test-key"
SECRET_KEY = "pulse-test-secret-do-not-log"
REGION = "us-east-1"
READY_SECONDS = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class MotoServer:
    """A ``moto_server`` subprocess on a local address; a context manager that stops it by PID."""

    def __init__(
        self, log_path: Path, environment: dict[str, str] | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.host = host
        self.port = free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.log_path = log_path
        self.environment = environment or {}
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoServer:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(MOTO_SERVER), "-H", self.host, "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.environment},
            )
        deadline = time.monotonic() + READY_SECONDS
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not start; see {self.log_path}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Terminate the server process (this one, by its PID) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def enforce_auth(self) -> None:
        """From now on check every request's signature and IAM policies (moto's reset-auth)."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",
            headers={"Content-Type": "text/plain"},  # a form body would hide the count
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200

    def add_user(self, name: str, actions: list[str]) -> dict[str, str]:
        """An IAM user allowed `actions` on every S3 resource; its keys ({key, secret}).

        Create users before ``enforce_auth``: the test's own keys are not a user of moto's.
        """
        iam = self.client("iam")
        iam.create_user(UserName=name)
        statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
        policy = {"Version": "2012-10-17", "Statement": [statement]}
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}

    def client(self, service: str = "s3", **credentials: str) -> Any:
        """A boto3 client for this server (test credentials unless others are given)."""
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=credentials.get("key", ACCESS_KEY),
            aws_secret_access_key=credentials.get("secret", SECRET_KEY),
        )


class TcpProxy:
    """Forwards 127.0.0.1:port to a server; ``stop()`` makes the server vanish mid-run."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def stop(self) -> None:
        """Close the listening port and every open connection: the endpoint is gone."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread on Linux
        self.listener.close()
        with self.lock:
            for connection in self.sockets:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()


def aws_environment(**overrides: str) -> dict[str, str]:
    """A CLI subprocess's environment: the test credentials, nothing AWS from this host."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k != "DASK_SCHEDULER_ADDRESS"
    }
    environment.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    environment.update(overrides)
    return environment


class Cli(Protocol):
    """Runs ``pulse-train`` as a subprocess; keyword arguments override the environment."""

    def __call__(self, *args: str, **environment: str) -> subprocess.CompletedProcess[str]: ...
