"""The kustomize base and overlays in manifests/ render, say what they promise, and are
accepted by the real API server (server-side dry run), as a GitOps tool would apply them; the
base's run policy is the chart's and refuses at `kubectl apply` what it forbids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.controlplane import ControlPlane
from tests.k8s.test_chart import assets, by_kind  # noqa: F401 (assets is a fixture)
from tests.k8s.test_chart import render as helm_render
from tests.k8s.test_operator_crd import rejection, training_run
from tests.k8s.test_run_policy import DENIED, admission_policy, wait_in_force
from trainingrun_operator.constants import DEFAULT_IMAGE

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
    objects = render(control_plane, "overlays/release")
    container = operator_container(objects)
    wanted = "registry.example.com/pulse/pulse-recursive-training:0.1.0"
    assert container["image"] == wanted
    assert env(container)["PULSE_OPERATOR_IMAGE"] == wanted  # stamped into the run's pods
    # Runs may name it: the operator's run policy and the admission policy list it alone.
    assert env(container)["PULSE_OPERATOR_ALLOWED_IMAGE_PREFIXES"] == wanted
    (policy,) = by_kind(objects, "ValidatingAdmissionPolicy").values()
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["image_prefixes"] == f'["{wanted}"]'


def test_single_namespace_overlay_watches_one_namespace(control_plane: ControlPlane) -> None:
    assert env(operator_container(render(control_plane, "base")))["PULSE_OPERATOR_NAMESPACES"] == ""
    overlay = env(operator_container(render(control_plane, "overlays/single-namespace")))
    assert overlay["PULSE_OPERATOR_NAMESPACES"] == "research"


def test_base_run_policy_is_the_charts_with_its_default_values(
    control_plane: ControlPlane,
    assets: Path,  # noqa: F811
) -> None:
    """manifests/base/run-policy.yaml and the chart's policy are generated from one builder:
    with the chart's default values they match and check the same, with the same lists."""
    (chart,) = by_kind(helm_render(assets), "ValidatingAdmissionPolicy").values()
    (base,) = by_kind(render(control_plane, "base"), "ValidatingAdmissionPolicy").values()
    assert base["spec"] == chart["spec"]
    assert {v["name"]: v["expression"] for v in base["spec"]["variables"]}["image_prefixes"] == (
        f'["{DEFAULT_IMAGE}"]'
    )


def test_base_run_policy_refuses_a_disallowed_image_at_apply(
    pulse_install: ControlPlane, namespace: str
) -> None:
    """The kustomize install's admission policy, as `kubectl kustomize` renders it, refuses a
    run with another image at `kubectl apply`, naming the rule, and admits the base's image."""
    with admission_policy(pulse_install, render(pulse_install, "base")):
        wait_in_force(pulse_install, namespace)
        other = training_run(namespace, "other-image", image="registry.example/miner:1")
        message = rejection(pulse_install, other)
        assert (
            f"{DENIED}spec.image registry.example/miner:1 is not allowed by the run policy "
            f"(allowedImagePrefixes: {DEFAULT_IMAGE})"
        ) in message, message
        pulse_install.apply(training_run(namespace, "base-image", image=DEFAULT_IMAGE))
