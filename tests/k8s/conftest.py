"""Fixtures of the k8s tier: one real control plane per session, a fresh namespace per test.

The binaries come from KUBEBUILDER_ASSETS or from the cache that
`hack/envtest.sh` fills. Without them the tier is skipped with the command
to run, unless PULSE_REQUIRE_K8S=1 (set by CI, whose setup step provides
them): then it fails, so a broken setup can never pass as "all skipped".
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from .controlplane import ControlPlane

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
    plane = getattr(item, "funcargs", {}).get("control_plane")
    if report.failed and isinstance(plane, ControlPlane):
        report.sections.append(("control plane logs", plane.log_tails()))
    return report
