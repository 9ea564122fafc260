"""The test control plane is a real one: schemas, CEL, RBAC and garbage collection are enforced."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .controlplane import ControlPlane, KubectlError

pytestmark = pytest.mark.k8s

CEL_MESSAGE = "minReplicas must not exceed maxReplicas"


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def exists(plane: ControlPlane, kind: str, name: str, namespace: str) -> bool:
    """True when the admin can read the object."""
    result = plane.kubectl("get", kind, name, f"--namespace={namespace}", check=False)
    return result.returncode == 0


def config_map(name: str, namespace: str, **metadata: Any) -> dict[str, Any]:
    """A ConfigMap manifest with extra metadata fields."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, **metadata},
    }


@pytest.fixture
def widget_group(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """The API group of a Widget CRD (OpenAPI schema + CEL rule) unique to this test."""
    group = f"{namespace}.test.pulse.dev"
    spec_schema = {
        "type": "object",
        "required": ["minReplicas", "maxReplicas"],
        "properties": {
            "minReplicas": {"type": "integer", "minimum": 0},
            "maxReplicas": {"type": "integer", "minimum": 0},
        },
        "x-kubernetes-validations": [
            {"rule": "self.minReplicas <= self.maxReplicas", "message": CEL_MESSAGE}
        ],
    }
    version = {
        "name": "v1",
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}},
    }
    control_plane.apply(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"widgets.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [version],
            },
        }
    )
    control_plane.kubectl(
        "wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=60s"
    )
    yield group
    control_plane.kubectl("delete", "crd", f"widgets.{group}", "--wait=false")


def widget(group: str, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    """A Widget manifest."""
    return {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_server_reports_a_real_release_version(control_plane: ControlPlane) -> None:
    """Discovery names the Kubernetes release, not the v0.0.0-master of an unstamped build."""
    versions = json.loads(control_plane.kubectl("version", "--output=json").stdout)
    server = versions["serverVersion"]["gitVersion"]
    assert re.fullmatch(r"v1\.\d+\.\d+", server)
    assert versions["clientVersion"]["gitVersion"] == server


def test_crd_schema_and_cel_rule_are_enforced(
    control_plane: ControlPlane, namespace: str, widget_group: str
) -> None:
    """A valid object is stored; the schema and the CEL rule reject bad ones with their messages."""
    stored = control_plane.apply(
        widget(widget_group, namespace, "ok", minReplicas=1, maxReplicas=3)
    )
    assert stored["spec"] == {"minReplicas": 1, "maxReplicas": 3}

    with pytest.raises(KubectlError) as cel:
        control_plane.apply(
            widget(widget_group, namespace, "inverted", minReplicas=5, maxReplicas=2)
        )
    assert CEL_MESSAGE in cel.value.stderr

    with pytest.raises(KubectlError) as minimum:
        control_plane.apply(widget(widget_group, namespace, "neg", minReplicas=-1, maxReplicas=2))
    assert "spec.minReplicas" in minimum.value.stderr
    assert "should be greater than or equal to 0" in minimum.value.stderr

    # A plain create reaches schema validation; server-side apply would already fail
    # earlier, when it builds the typed patch.
    with pytest.raises(KubectlError) as schema:
        control_plane.create(
            widget(widget_group, namespace, "typo", minReplicas="2", maxReplicas=2)
        )
    assert "spec.minReplicas" in schema.value.stderr
    assert "must be of type integer" in schema.value.stderr

    names = control_plane.kubectl(
        "get", f"widgets.{widget_group}", f"--namespace={namespace}", "--output=name"
    ).stdout.split()
    assert names == [f"widget.{widget_group}/ok"]


def test_service_account_is_allowed_only_what_a_role_binding_grants(
    control_plane: ControlPlane, namespace: str
) -> None:
    """A ServiceAccount's token is forbidden until a RoleBinding grants access, then only that."""
    plane = control_plane
    plane.apply(config_map("settings", namespace))
    plane.kubectl("create", "serviceaccount", "reader", f"--namespace={namespace}")
    kubeconfig = plane.kubeconfig_for_service_account(namespace, "reader")

    def list_as_reader(resource: str) -> Any:
        """`kubectl get` as the ServiceAccount: the names listed, or the KubectlError."""
        try:
            return plane.kubectl("get", resource, "--output=name", kubeconfig=kubeconfig).stdout
        except KubectlError as error:
            return error

    denied = list_as_reader("configmaps")
    assert isinstance(denied, KubectlError)
    user = f"system:serviceaccount:{namespace}:reader"
    assert f'User "{user}" cannot list resource "configmaps"' in denied.stderr

    plane.kubectl(
        "create", "role", "configmap-reader", "--verb=get,list", "--resource=configmaps",
        f"--namespace={namespace}",
    )  # fmt: skip
    plane.kubectl(
        "create", "rolebinding", "reader-reads-configmaps", "--role=configmap-reader",
        f"--serviceaccount={namespace}:reader", f"--namespace={namespace}",
    )  # fmt: skip
    # The RBAC authorizer reads bindings through an informer: give it a moment to see this one.
    assert eventually(lambda: isinstance(list_as_reader("configmaps"), str), timeout=30)
    assert "configmap/settings" in list_as_reader("configmaps").split()

    still_denied = list_as_reader("secrets")
    assert isinstance(still_denied, KubectlError)
    assert f'User "{user}" cannot list resource "secrets"' in still_denied.stderr


def test_deleting_an_owner_garbage_collects_its_dependents(
    controller_manager: ControlPlane, namespace: str
) -> None:
    """kube-controller-manager's garbage collector deletes what the owner owned, and only that."""
    plane = controller_manager
    owner = plane.apply(config_map("owner", namespace))
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner"}
    reference["uid"] = owner["metadata"]["uid"]
    plane.apply(config_map("dependent", namespace, ownerReferences=[reference]))
    plane.apply(config_map("bystander", namespace))

    plane.kubectl("delete", "configmap", "owner", f"--namespace={namespace}")

    assert eventually(lambda: not exists(plane, "configmap", "dependent", namespace), timeout=90)
    assert exists(plane, "configmap", "bystander", namespace)


def test_job_controller_turns_a_job_into_a_pod(
    controller_manager: ControlPlane, namespace: str
) -> None:
    """The Job controller creates the Job's pod (no node runs it here, so it stays Pending)."""
    plane = controller_manager
    plane.kubectl(
        "create", "job", "hello", "--image=busybox", f"--namespace={namespace}", "--", "true"
    )

    def job_pods() -> list[Any]:
        """The pods made for the Job."""
        selector = "--selector=batch.kubernetes.io/job-name=hello"
        pods = plane.kubectl_json("get", "pods", selector, f"--namespace={namespace}")
        items: list[Any] = pods["items"]
        return items

    assert eventually(lambda: len(job_pods()) == 1, timeout=60)
    pod = job_pods()[0]
    assert pod["status"]["phase"] == "Pending"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
