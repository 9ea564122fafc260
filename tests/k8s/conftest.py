"""Fixtures of the k8s tier: one real control plane per session, a fresh namespace per test.

The binaries come from KUBEBUILDER_ASSETS or from the cache that
`hack/envtest.sh` fills. Without them the tier is skipped with the command
to run, unless PULSE_REQUIRE_K8S=1 (set by CI, whose setup step provides
them): then it fails, so a broken setup can never pass as "all skipped".
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.kueue import KueueManager

from .controlplane import ControlPlane, LoggedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVTEST_SCRIPT = REPO_ROOT / "hack" / "envtest.sh"


def _required() -> bool:
    """True when the environment promised a control plane (CI)."""
    return os.environ.get("PULSE_REQUIRE_K8S") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when PULSE_REQUIRE_K8S=1, because something the k8s tier needs is missing."""
    if _required():
        pytest.fail(f"{reason} (PULSE_REQUIRE_K8S=1, so this is an error)", pytrace=False)
    pytest.skip(reason)


def _find_assets() -> Path | None:
    """The assets dir `hack/envtest.sh find` reports (it honours KUBEBUILDER_ASSETS), or None."""
    result = subprocess.run(
        ["bash", str(ENVTEST_SCRIPT), "find"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        return None
    return Path(result.stdout.strip())


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver + kube-controller-manager, shared by the session."""
    assets = _find_assets()
    if assets is None:
        unavailable('no Kubernetes control-plane binaries: run `eval "$(hack/envtest.sh)"` first')
    # Kept after the run (pytest keeps the last basetemps), so logs survive a failure.
    with ControlPlane(assets, tmp_path_factory.mktemp("control-plane")) as plane:
        yield plane


@pytest.fixture
def controller_manager(control_plane: ControlPlane) -> ControlPlane:
    """The control plane, provided it runs kube-controller-manager (GC, Job controller, ...)."""
    if not control_plane.has_controller_manager:
        unavailable(
            f"no kube-controller-manager in {control_plane.assets_dir}: run hack/envtest.sh"
        )
    return control_plane


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace of its own for one test, deleted afterwards without waiting."""
    name = f"pulse-test-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    if control_plane.has_controller_manager:
        # Pods are admitted only once the ServiceAccount controller made "default".
        control_plane.kubectl(
            "wait", "--for=create", "serviceaccount/default", f"--namespace={name}", "--timeout=60s"
        )
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tails of the control-plane logs to the report of a failed test that used it."""
    report = yield
    funcargs = getattr(item, "funcargs", {})
    plane = funcargs.get("control_plane")
    if report.failed and isinstance(plane, ControlPlane):
        report.sections.append(("control plane logs", plane.log_tails()))
    for name in ("pulse_operator", "dask_controller", "kueue_operator", "kueue_controller"):
        process = funcargs.get(name)
        if report.failed and isinstance(process, OperatorProcess | KueueManager):
            report.sections.append((f"{name} log", process.log_tail()))
    return report


@pytest.fixture(scope="session")
def pulse_install(control_plane: ControlPlane) -> ControlPlane:
    """The control plane with everything manifests/base installs except the Deployments and
    the run policy (tests/k8s/test_run_policy.py applies that)."""
    from trainingrun_operator.manifests import build_install

    install = build_install()
    for file in ("crd.yaml", "dask-crds.yaml", "namespace.yaml", "rbac.yaml"):
        for manifest in install[file]:
            control_plane.apply(manifest)
    crds = [*install["crd.yaml"], *install["dask-crds.yaml"]]
    names = [f"crd/{crd['metadata']['name']}" for crd in crds]
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return control_plane


class OperatorProcess(LoggedProcess):
    """A controller process (ours or dask-kubernetes') run under a ServiceAccount kubeconfig."""

    def __init__(
        self,
        name: str,
        args: list[str],
        kubeconfig: Path,
        log_dir: Path,
        liveness_url: str = "",
        metrics_url: str = "",
    ) -> None:
        """Prepare; nothing runs until start()."""
        self.name = name
        self.liveness_url = liveness_url
        self.metrics_url = metrics_url
        self.args = args
        self.kubeconfig = kubeconfig
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        """Start the process with only the ServiceAccount's credentials."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        return self


def _python() -> str:
    """The interpreter running the tests (the project venv)."""
    return sys.executable


@pytest.fixture(scope="session")
def dask_controller(
    pulse_install: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The real dask-kubernetes controller, under the RBAC manifests/base grants it."""
    from trainingrun_operator.constants import DASK_CONTROLLER_NAME, DEFAULT_NAMESPACE

    if not pulse_install.has_controller_manager:
        unavailable(
            "no kube-controller-manager: the Dask controller tests need its GC and Job controller"
        )
    kubeconfig = pulse_install.kubeconfig_for_service_account(
        DEFAULT_NAMESPACE, DASK_CONTROLLER_NAME
    )
    args = [
        _python(), "-m", "kopf", "run", "--standalone", "--all-namespaces",
        "-m", "dask_kubernetes.operator.controller",
    ]  # fmt: skip
    process = OperatorProcess("dask-controller", args, kubeconfig, tmp_path_factory.mktemp("dask"))
    yield process.start()
    process.stop()


def operator_process(
    plane: ControlPlane, namespace: str, log_dir: Path, *extra_args: str
) -> OperatorProcess:
    """The TrainingRun operator watching `namespace` with `extra_args` (not started)."""
    from trainingrun_operator.constants import DEFAULT_NAMESPACE, OPERATOR_NAME

    from .controlplane import free_port

    kubeconfig = plane.kubeconfig_for_service_account(DEFAULT_NAMESPACE, OPERATOR_NAME)
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    metrics_port = free_port()
    args = [
        _python(), "-m", "trainingrun_operator.main", f"--namespace={namespace}",
        "--resync-seconds=1", "--log-level=DEBUG", f"--liveness-endpoint={liveness}",
        f"--metrics-port={metrics_port}", *extra_args,
    ]  # fmt: skip
    return OperatorProcess("pulse-operator", args, kubeconfig, log_dir, liveness,
                           f"http://127.0.0.1:{metrics_port}/metrics")  # fmt: skip


@pytest.fixture
def pulse_operator(
    pulse_install: ControlPlane, dask_controller: OperatorProcess, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The TrainingRun operator watching the test's namespace (started; restartable)."""
    process = operator_process(pulse_install, namespace, tmp_path)
    yield process.start()
    process.stop()
