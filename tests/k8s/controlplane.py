"""A real, throwaway Kubernetes control plane for tests (envtest style).

Runs etcd, kube-apiserver and kube-controller-manager from an assets directory
(see hack/envtest.sh) as child processes on free 127.0.0.1 ports, with
generated certificates, service-account signing keys and RBAC authorization.
There are no nodes, so pods are scheduled nowhere, but everything the API server
and the controllers do (schemas, CEL rules, RBAC, watches, garbage collection,
the Job controller) is real. Logs and certificates stay in the work dir.
"""

from __future__ import annotations

import ctypes
import datetime
import ipaddress
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE: Final = "10.0.0.0/24"
# Admission plugins a real cluster runs (most are on by default; listing them
# keeps the set explicit and stable across Kubernetes versions).
ADMISSION_PLUGINS: Final = (
    "NamespaceLifecycle",
    "LimitRanger",
    "ServiceAccount",
    "DefaultStorageClass",
    "PodSecurity",
    "Priority",
    "DefaultTolerationSeconds",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionWebhook",
    "ResourceQuota",
)
START_TIMEOUT_S: Final = 90.0
STOP_TIMEOUT_S: Final = 15.0
_PR_SET_PDEATHSIG: Final = 1


class ControlPlaneError(RuntimeError):
    """The control plane could not start or a kubectl call failed."""


class KubectlError(ControlPlaneError):
    """kubectl exited non-zero; carries its arguments and stderr."""

    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        """Keep what a test needs to explain the failure."""
        super().__init__(args, returncode, stderr)
        self.args_list = args
        self.returncode = returncode
        self.stderr = stderr

    def __str__(self) -> str:
        """One readable line: the command, its exit code and its message."""
        return f"kubectl {' '.join(self.args_list)} exited {self.returncode}: {self.stderr.strip()}"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no server outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LoggedProcess:
    """A long-running helper process whose output goes to `log_path`."""

    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def stop(self, kill: bool = False) -> None:
        """Stop the process by its own PID; SIGKILL when `kill`, as a crash would (else
        SIGTERM, then SIGKILL after 15 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the process's log."""
        if not self.log_path.is_file():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.log_path} ---\n" + "\n".join(tail)


class Pki:
    """A throwaway CA, the certificates signed by it and the service-account key pair."""

    def __init__(self, directory: Path) -> None:
        """Generate everything into `directory`."""
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca_key = self._new_key()
        now = datetime.datetime.now(datetime.UTC)
        self._not_before = now - datetime.timedelta(minutes=5)
        self._not_after = now + datetime.timedelta(days=1)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pulse-envtest-ca")])
        self._ca_cert = (
            self._builder(ca_name, ca_name, self._ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_cert = self._write_cert("ca.crt", self._ca_cert)
        self.ca_key = self._write_key("ca.key", self._ca_key)
        sa_key = self._new_key()
        self.sa_key = self._write_key("sa.key", sa_key)
        self.sa_pub = self.dir / "sa.pub"
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    @staticmethod
    def _new_key() -> rsa.RSAPrivateKey:
        """A fresh 2048-bit RSA key (what kubeadm uses)."""
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def _builder(
        self, subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey
    ) -> x509.CertificateBuilder:
        """A certificate builder with the validity window shared by all certificates."""
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
        )

    def _write_cert(self, name: str, cert: x509.Certificate) -> Path:
        """Write a PEM certificate and return its path."""
        path = self.dir / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def _write_key(self, name: str, key: rsa.RSAPrivateKey) -> Path:
        """Write an unencrypted PEM private key readable only by us and return its path."""
        path = self.dir / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def issue(
        self, name: str, common_name: str, organizations: tuple[str, ...] = (), server: bool = False
    ) -> tuple[Path, Path]:
        """Sign a client (or, with `server`, a loopback serving) certificate; return its files."""
        key = self._new_key()
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usage = (
            x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
            if server
            else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = (
            self._builder(x509.Name(attributes), self._ca_cert.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            # The names the in-cluster "kubernetes" Service would be reached by, plus loopback.
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self._ca_key, hashes.SHA256())
        return self._write_cert(f"{name}.crt", cert), self._write_key(f"{name}.key", key)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager started from `assets_dir`.

    Use as a context manager, or call start() and stop(). kube-controller-manager
    is started only if the assets dir has it (controller-runtime's envtest
    assets do not); `has_controller_manager` tells which.
    """

    def __init__(self, assets_dir: Path, work_dir: Path) -> None:
        """Prepare paths; nothing runs until start()."""
        self.assets_dir = assets_dir
        self.work_dir = work_dir
        self.logs_dir = work_dir / "logs"
        self.admin_kubeconfig = work_dir / "admin.kubeconfig"
        self.has_controller_manager = (assets_dir / "kube-controller-manager").is_file()
        self.server = ""
        self._pki: Pki | None = None
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: list[IO[bytes]] = []

    def __enter__(self) -> ControlPlane:
        """Start the control plane."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the control plane."""
        self.stop()

    def start(self) -> None:
        """Start etcd, kube-apiserver, kube-controller-manager in turn; wait until each works."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._pki = Pki(self.work_dir / "pki")
            etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url)
            if self.has_controller_manager:
                self._start_controller_manager()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop each started process by its own PID, newest first; keep logs, drop etcd data."""
        for name, process in reversed(list(self._processes.items())):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            (self.logs_dir / f"{name}.exit").write_text(f"{process.returncode}\n")
        self._processes.clear()
        for log_file in self._log_files:
            log_file.close()
        self._log_files.clear()
        shutil.rmtree(self.work_dir / "etcd-data", ignore_errors=True)

    def log_tails(self, lines: int = 30) -> str:
        """The last `lines` lines of every component's log, for a failure report."""
        parts = []
        for log in sorted(self.logs_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log} (last {len(tail)} lines) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        kubeconfig: Path | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run the assets' kubectl (as admin by default); raise KubectlError if `check`."""
        command = [
            str(self.assets_dir / "kubectl"),
            f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
            # Its own discovery cache, so nothing is written to the user's ~/.kube.
            f"--cache-dir={self.work_dir / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise KubectlError(list(args), result.returncode, result.stderr)
        return result

    def kubectl_json(self, *args: str, kubeconfig: Path | None = None) -> dict[str, Any]:
        """Run kubectl with `--output=json` and return the decoded object."""
        output = self.kubectl(*args, "--output=json", kubeconfig=kubeconfig).stdout
        decoded: dict[str, Any] = json.loads(output)
        return decoded

    def apply(self, manifest: Mapping[str, Any], kubeconfig: Path | None = None) -> dict[str, Any]:
        """Server-side apply one object; return the object as the server stored it."""
        output = self.kubectl(
            "apply",
            "--server-side",
            "--field-manager=pulse-tests",
            "--filename=-",
            "--output=json",
            stdin=json.dumps(manifest),
            kubeconfig=kubeconfig,
        ).stdout
        decoded: dict[str, Any] = json.loads(output)
        return decoded

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create one object (a plain POST, as a client library does); return it as stored."""
        output = self.kubectl(
            "create", "--filename=-", "--output=json", stdin=json.dumps(manifest)
        ).stdout
        decoded: dict[str, Any] = json.loads(output)
        return decoded

    def serving_certificate(self, name: str) -> tuple[Path, Path]:
        """A loopback serving certificate and key signed by the control plane's CA."""
        assert self._pki is not None
        return self._pki.issue(name, name, server=True)

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, duration: str = "1h"
    ) -> Path:
        """Mint a ServiceAccount token (TokenRequest API); return a kubeconfig that uses it."""
        token = self.kubectl(
            "create", "token", name, f"--namespace={namespace}", f"--duration={duration}"
        ).stdout.strip()
        path = self.work_dir / "kubeconfigs" / f"{namespace}.{name}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        self._write_kubeconfig(path, user, {"token": token}, namespace)
        return path

    def _write_kubeconfig(
        self, path: Path, user: str, credentials: dict[str, str], namespace: str = "default"
    ) -> None:
        """Write a kubeconfig (JSON, which is valid YAML) for this API server."""
        assert self._pki is not None
        cluster = {"server": self.server, "certificate-authority": str(self._pki.ca_cert)}
        context = {"cluster": "envtest", "user": user, "namespace": namespace}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "envtest", "cluster": cluster}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": user, "context": context}],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)

    def _client_kubeconfig(self, name: str, user: str, groups: tuple[str, ...] = ()) -> Path:
        """Write a kubeconfig with a fresh client certificate for `user` in `groups`."""
        assert self._pki is not None
        cert, key = self._pki.issue(name, user, groups)
        path = self.work_dir / f"{name}.kubeconfig"
        credentials = {"client-certificate": str(cert), "client-key": str(key)}
        self._write_kubeconfig(path, user, credentials)
        return path

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start one component from the assets dir with its output in logs/<name>.log."""
        log_file = (self.logs_dir / f"{name}.log").open("wb")
        self._log_files.append(log_file)
        process = subprocess.Popen(
            [str(self.assets_dir / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
            preexec_fn=die_with_parent,
        )
        self._processes[name] = process
        return process

    def _wait(self, name: str, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready()` until true; fail early with the log tail if the process exits."""
        process = self._processes[name]
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {process.returncode}\n{self.log_tails()}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{name}: {what} not reached in {START_TIMEOUT_S:.0f}s\n{self.log_tails()}"
        )

    def _start_etcd(self) -> str:
        """Start a single-member etcd on loopback; return its client URL."""
        client = f"http://127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        self._spawn(
            "etcd",
            [
                "--name=envtest",
                f"--data-dir={self.work_dir / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=envtest={peer}",
                # Test data is thrown away: skipping fsync makes every write far cheaper.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", lambda: _http_ok(f"{client}/health"), "/health")
        return client

    def _start_apiserver(self, etcd_url: str) -> None:
        """Start kube-apiserver: TLS, client certificates, service-account tokens, RBAC."""
        assert self._pki is not None
        pki = self._pki
        port = free_port()
        serving_cert, serving_key = pki.issue("apiserver", "kube-apiserver", server=True)
        proxy_cert, proxy_key = pki.issue("front-proxy-client", "front-proxy-client")
        self.server = f"https://127.0.0.1:{port}"
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={serving_cert}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                # Front-proxy (aggregation) authentication, as kubeadm sets it up; the
                # controller manager's delegated authentication reads this CA too.
                f"--requestheader-client-ca-file={pki.ca_cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={proxy_cert}",
                f"--proxy-client-key-file={proxy_key}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=RBAC",
                f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
                "--allow-privileged=true",
                # The "kubernetes" Service cannot get endpoints on loopback (the API
                # rejects 127.0.0.1 there), and no pod runs here to use them.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        # /readyz is public (system:public-info-viewer) and turns 200 only after
        # the RBAC bootstrap roles and the CRD/etcd post-start hooks are done.
        self._wait("kube-apiserver", lambda: _http_ok(f"{self.server}/readyz", context), "/readyz")
        # Named "admin" so it lands at self.admin_kubeconfig.
        self._client_kubeconfig("admin", "pulse-envtest-admin", ("system:masters",))

    def _start_controller_manager(self) -> None:
        """Start kube-controller-manager under its bootstrap RBAC identity."""
        assert self._pki is not None
        pki = self._pki
        kubeconfig = self._client_kubeconfig(
            "kube-controller-manager", "system:kube-controller-manager"
        )
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.work_dir / 'controller-manager-certs'}",
                "--leader-elect=false",
                # Each controller (garbage collector, job, namespace, ...) talks to the
                # API as its own ServiceAccount, so RBAC is exercised as in a real cluster.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            ],
        )
        # The ServiceAccount controller creating "default" in namespace default
        # proves the controllers run and can write through RBAC.
        self._wait(
            "kube-controller-manager",
            lambda: self.kubectl("get", "serviceaccount/default", check=False).returncode == 0,
            "the default ServiceAccount",
        )


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """True when GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            status: int = response.status
            return status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return False
