"""Fixtures of the e2e tier: a Docker engine, the project image, a single-node cluster.

The tier skips with a message when no engine answers ``docker info`` (run
hack/docker-setup.sh), unless PULSE_REQUIRE_DOCKER=1 (CI), where a missing engine fails.
The image is built once per session by hack/build-image.sh (BuildKit reuses every cached
layer, so a rebuild of an unchanged tree takes seconds), or reused without building when
the tree is clean and an image labelled with the current commit exists; PULSE_IMAGE names
a prebuilt image to test instead. Every container and network a test starts carries the
session's label and name prefix, and all of them are removed at the end of the session.

The cluster tests need root (hack/local-cluster.sh runs a kubelet); they skip without it
unless PULSE_REQUIRE_CLUSTER=1 (CI), where a missing cluster fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from tests.e2e.cluster import SCRIPT as CLUSTER_SCRIPT
from tests.e2e.cluster import KubeCluster
from tests.integration.s3.servers import MotoServer

ROOT = Path(__file__).resolve().parents[2]
SETUP_HINT = "no Docker engine: run hack/docker-setup.sh"
LABEL_KEY = "dev.pulse.e2e-session"
# A cold build is a few minutes; a warm one seconds. Bounded so CI never hangs on it.
BUILD_TIMEOUT_S = 1800


def _run(args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command (argument list, no shell) and capture its text output."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def _engine_problem() -> str | None:
    """Why no engine can be used, or None when ``docker info`` answers."""
    try:
        result = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    except FileNotFoundError:
        return "the docker CLI is not installed"
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 30 s"
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or ["docker info failed"])[-1]
    return None


@dataclass(frozen=True)
class Docker:
    """The engine as the tests use it: runs ``docker`` and names things for clean-up."""

    session: str

    @property
    def label(self) -> str:
        """``key=value`` label put on every container and network of this session."""
        return f"{LABEL_KEY}={self.session}"

    def name(self, role: str) -> str:
        """Container or network name for ``role``, unique to this session."""
        return f"pulse-e2e-{self.session}-{role}"

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``docker ARGS...``; the caller checks the return code."""
        return _run(["docker", *args], timeout=timeout)

    def leftovers(self, kind: str) -> list[str]:
        """IDs of this session's containers or networks that still exist."""
        every = ["--all"] if kind == "container" else []  # stopped containers too
        listed = self(kind, "ls", "--quiet", *every, "--filter", f"label={self.label}")
        return listed.stdout.split()

    def cleanup(self) -> None:
        """Remove this session's containers, then its networks (by label); loud on a leak.

        A few attempts, because the engine can refuse a removal while a container is still
        stopping; anything left after them fails the session's teardown with the engine's
        message rather than leaking silently.
        """
        errors: list[str] = []
        for kind in ("container", "network"):
            for _ in range(3):
                ids = self.leftovers(kind)
                if not ids:
                    break
                force = ["--force"] if kind == "container" else []
                removed = self(kind, "rm", *force, *ids)
                if removed.returncode != 0:
                    errors.append(removed.stderr.strip())
                    time.sleep(1)
            if self.leftovers(kind):
                raise RuntimeError(f"could not remove {kind}s labelled {self.label}: {errors}")


def unavailable(message: str, require_variable: str) -> NoReturn:
    """Skip for a missing component, or fail when `require_variable`=1 says it must exist."""
    if os.environ.get(require_variable) == "1":
        pytest.fail(f"{require_variable}=1 but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    """An answering Docker engine (skip or, with PULSE_REQUIRE_DOCKER=1, fail without)."""
    problem = _engine_problem()
    if problem is not None:
        unavailable(f"{SETUP_HINT} ({problem})", "PULSE_REQUIRE_DOCKER")
    engine = Docker(session=uuid.uuid4().hex[:8])
    yield engine
    engine.cleanup()


def project_version() -> str:
    """The version in pyproject.toml, which tags the image."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


def _current_revision() -> str | None:
    """Short commit of a clean work tree, or None when it is dirty or not a git tree."""
    head = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain"])
    if head.returncode != 0 or dirty.returncode != 0 or dirty.stdout.strip():
        return None
    return head.stdout.strip()


@pytest.fixture(scope="session")
def image(docker: Docker) -> str:
    """Tag of the project image under test, built by hack/build-image.sh when needed."""
    if os.environ.get("PULSE_IMAGE"):
        return os.environ["PULSE_IMAGE"]
    tag = f"pulse-recursive-training:{project_version()}"
    revision = _current_revision()
    fmt = '{{index .Config.Labels "org.opencontainers.image.revision"}}'
    labelled = docker("image", "inspect", "--format", fmt, tag)
    if revision is not None and labelled.returncode == 0 and labelled.stdout.strip() == revision:
        return tag
    try:
        built = _run([str(ROOT / "hack" / "build-image.sh")], timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hack/build-image.sh took more than {BUILD_TIMEOUT_S} s", pytrace=False)
    if built.returncode != 0:
        tail = "\n".join(built.stderr.splitlines()[-40:])
        pytest.fail(f"hack/build-image.sh failed ({built.returncode}):\n{tail}", pytrace=False)
    return built.stdout.strip().splitlines()[-1]


@pytest.fixture
def writable_dir(tmp_path: Path) -> Path:
    """A host folder the image's user (uid 10001) can write, for bind-mounting results."""
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:
        os.chown(out, 10001, 10001)
    else:
        out.chmod(0o777)
    return out


# --- the single-node cluster (hack/local-cluster.sh) ---------------------------------

CLUSTER_HINT = "no single-node cluster: run tests as root with Docker (hack/local-cluster.sh)"
# A cold `up` builds the node binaries (minutes); hack/test.sh builds them beforehand.
CLUSTER_UP_TIMEOUT_S = 1800


def _cluster_problem() -> str | None:
    """Why hack/local-cluster.sh cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (kubelet, containerd and iptables need it)"
    if not Path("/proc/sys/net/bridge").exists() and _run(["modprobe", "br_netfilter"]).returncode:
        return "the kernel has no br_netfilter"
    return None


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run hack/local-cluster.sh; fail the session with its stderr tail if it fails."""
    try:
        result = _run([str(CLUSTER_SCRIPT), *args], timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hack/local-cluster.sh {' '.join(args)} took over {timeout:.0f} s",
                    pytrace=False)  # fmt: skip
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-40:])
        pytest.fail(f"hack/local-cluster.sh {' '.join(args)} failed:\n{tail}", pytrace=False)
    return result


@pytest.fixture(scope="session")
def local_cluster(image: str) -> Iterator[KubeCluster]:
    """The single-node cluster with the project image loaded; skip (or fail) without one.

    A cluster that was already up is used and left running; otherwise the session starts
    it and takes it down at the end, which also removes every pod it ran.
    """
    problem = _cluster_problem()
    if problem is not None:
        unavailable(f"{CLUSTER_HINT} ({problem})", "PULSE_REQUIRE_CLUSTER")
    was_up = _run([str(CLUSTER_SCRIPT), "status"]).returncode == 0
    if not was_up:
        _script("up", timeout=CLUSTER_UP_TIMEOUT_S)
    else:  # left up by an earlier session, perhaps with enforcement switched off
        _script("network-policies", "on", timeout=300)
    try:
        _script("load", image, timeout=600)
        kubeconfig = Path(_script("kubeconfig", timeout=10).stdout.strip())
        assets = _run([str(ROOT / "hack" / "envtest.sh"), "find"])
        yield KubeCluster(kubeconfig=kubeconfig, bin_dir=Path(assets.stdout.strip()))
    finally:
        if not was_up:
            _script("down", timeout=300)


Say = Callable[[str], None]
# The bucket the example TrainingRuns write to.
BUCKET = "pulse-results"


@pytest.fixture(scope="session")
def say(pytestconfig: pytest.Config) -> Say:
    """Print a measured figure in the test output, also when the test passes."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None or capture is None:
            return
        # What capsys.disabled() does, usable from session-scoped fixtures too.
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[e2e-cluster] {line}")

    return write


@pytest.fixture(scope="session")
def node_s3(local_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[MotoServer]:  # fmt: skip
    """An S3 server on the node's bridge address (reachable by pods, not from outside)."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with MotoServer(log, host=local_cluster.node_ip) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


# --- the chart on the node ----------------------------------------------------------

CHART = ROOT / "charts" / "pulse-recursive-training"
RELEASE, RELEASE_NAMESPACE = "pulse", "pulse-system"
# Small requests so a run's four pods and both controllers fit on a 2-CPU node.
RUN_CPU, RUN_MEMORY = "300m", "1Gi"


def install_release(cluster: KubeCluster, image: str, *values: str) -> None:
    """`helm upgrade --install --wait` of the chart running `image`, with extra `values`
    (`--set` flags) on top of the test defaults; an upgrade without them restores those."""
    repository, tag = image.rsplit(":", 1)
    cluster.helm(
        "upgrade", "--install", RELEASE, str(CHART), f"--namespace={RELEASE_NAMESPACE}",
        "--create-namespace", "--wait", "--timeout=10m",
        f"--set=image.repository={repository}", f"--set=image.tag={tag}",
        # Loaded into the node by hand: there is no registry to pull from.
        "--set=image.pullPolicy=Never",
        f"--set=operator.runDefaults.cpu={RUN_CPU}",
        f"--set=operator.runDefaults.memory={RUN_MEMORY}",
        *values,
    )  # fmt: skip


@contextlib.contextmanager
def chart_release(cluster: KubeCluster, image: str, say: Say,
                  *values: str) -> Iterator[KubeCluster]:  # fmt: skip
    """The chart installed with `helm install --wait`, running the image under test, with
    `values` (`--set=...`) on top; uninstalled, with its namespace, on exit."""
    started = time.monotonic()
    install_release(cluster, image, *values)
    say(f"helm install --wait: {time.monotonic() - started:.1f} s")
    try:
        yield cluster
    finally:
        cluster.helm("uninstall", RELEASE, f"--namespace={RELEASE_NAMESPACE}", "--wait")
        cluster.kubectl("delete", "namespace", RELEASE_NAMESPACE, "--wait", timeout=300)


@pytest.fixture(scope="module")
def pulse_release(local_cluster: KubeCluster, image: str, say: Say) -> Iterator[KubeCluster]:
    """The chart installed with its default values (but small run requests)."""
    with chart_release(local_cluster, image, say) as release:
        yield release
