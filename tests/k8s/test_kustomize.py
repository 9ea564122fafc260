"""The kustomize base and overlays in manifests/ render, say what they promise, and are
accepted by the real API server (server-side dry run), as a GitOps tool would apply them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.controlplane import ControlPlane

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
KUSTOMIZATIONS = ["base", "overlays/release", "overlays/single-namespace"]


def render(plane: ControlPlane, folder: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a folder under manifests/, as objects."""
    output = plane.kubectl("kustomize", str(MANIFESTS / folder)).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The pulse-operator Deployment's container."""
    (deployment,) = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "pulse-operator"
    ]
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def env(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment by name."""
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_kustomization_is_accepted_by_the_api_server(
    control_plane: ControlPlane, folder: str
) -> None:
    control_plane.kubectl(
        "apply", "--server-side", f"--filename={MANIFESTS / 'base' / 'namespace.yaml'}"
    )
    done = control_plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=pulse-tests",
        f"--kustomize={MANIFESTS / folder}",
    )
    assert "customresourcedefinition.apiextensions.k8s.io/trainingruns.pulse.dev" in done.stdout
    assert "deployment.apps/pulse-operator" in done.stdout


def test_release_overlay_pins_the_image_everywhere(control_plane: ControlPlane) -> None:
    container = operator_container(render(control_plane, "overlays/release"))
    wanted = "registry.example.com/pulse/pulse-recursive-training:0.1.0"
    assert container["image"] == wanted
    assert env(container)["PULSE_OPERATOR_IMAGE"] == wanted  # stamped into the run's pods


def test_single_namespace_overlay_watches_one_namespace(control_plane: ControlPlane) -> None:
    assert env(operator_container(render(control_plane, "base")))["PULSE_OPERATOR_NAMESPACES"] == ""
    overlay = env(operator_container(render(control_plane, "overlays/single-namespace")))
    assert overlay["PULSE_OPERATOR_NAMESPACES"] == "research"
