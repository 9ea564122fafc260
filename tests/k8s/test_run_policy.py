"""The run policy on a real API server: the chart's ValidatingAdmissionPolicy refuses what a
run may not use at `kubectl apply`, and the operator refuses it again before it creates pods.

The policy is rendered by the real helm from the chart and applied as is; the operator's
settings are read from the same rendering's Deployment environment, so the test also shows
that both ends get the same rules, and `violations()` must agree with the API server on
every case.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainingrun_operator.policy import violations
from trainingrun_operator.settings import OperatorSettings
from trainingrun_operator.spec import RunSpec

from .conftest import OperatorProcess
from .controlplane import ControlPlane, KubectlError
from .kubelet import dask_cluster, eventually, get
from .test_chart import RELEASE_NAMESPACE, assets, by_kind, render  # noqa: F401 (assets is a fixture)
from .test_operator_crd import training_run
from .test_operator_lifecycle import events, wait_phase

pytestmark = pytest.mark.k8s

POLICY = "pulse-pulse-recursive-training-run-policy"
VALUES = (
    "--set=runPolicy.allowedCredentialSecrets={s3-read,s3-write}",
    "--set=runPolicy.allowedS3Endpoints={https://minio.storage.svc:9000}",
)
DENIED = "denied request: "

# (case, spec, the rule the refusal names or None when the run is admitted)
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("defaults", {}, None),
    ("the chart image", {"image": "pulse-recursive-training:0.1.0"}, None),
    (
        "allowed secrets and endpoint",
        {
            "data": {
                "uri": "s3://in/x.csv",
                "credentialsSecret": "s3-read",
                "endpoint": "https://minio.storage.svc:9000",
            },
            "output": {"uri": "s3://out/run", "credentialsSecret": "s3-write"},
        },
        None,
    ),
    ("image", {"image": "evil.example/miner:1"}, "spec.image evil.example/miner:1"),
    (
        "image sharing a prefix",
        {"image": "pulse-recursive-training:0.1.0-evil"},
        "spec.image pulse-recursive-training:0.1.0-evil",
    ),
    ("dask image", {"dask": {"image": "evil.example/miner:1"}}, "spec.dask.image"),
    ("service account", {"serviceAccountName": "admin-sa"}, "spec.serviceAccountName admin-sa"),
    (
        "data secret",
        {"data": {"uri": "s3://in/x.csv", "credentialsSecret": "db-admin"}},
        "spec.data.credentialsSecret db-admin",
    ),
    (
        "output secret",
        {"output": {"uri": "s3://out/run", "credentialsSecret": "db-admin"}},
        "spec.output.credentialsSecret db-admin",
    ),
    (
        "endpoint",
        {"data": {"uri": "s3://in/x.csv", "endpoint": "https://attacker.example"}},
        "spec.data.endpoint https://attacker.example",
    ),
    (
        "output endpoint",
        {"output": {"uri": "s3://out/run", "endpoint": "https://attacker.example"}},
        "spec.output.endpoint https://attacker.example",
    ),
]


@contextlib.contextmanager
def admission_policy(plane: ControlPlane, objects: list[dict[str, Any]]) -> Iterator[None]:
    """The ValidatingAdmissionPolicy and binding among `objects` applied to the API server
    (removed afterwards: the control plane is shared by the session)."""
    kinds = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    policy = [o for o in objects if o["kind"] in kinds]
    assert len(policy) == 2, [o["kind"] for o in objects]
    for manifest in policy:
        plane.apply(manifest)
    try:
        yield
    finally:
        for manifest in policy:
            plane.kubectl("delete", manifest["kind"], manifest["metadata"]["name"],
                          "--ignore-not-found")  # fmt: skip


@pytest.fixture
def run_policy(pulse_install: ControlPlane, assets: Path) -> Iterator[list[dict[str, Any]]]:  # noqa: F811
    """The chart's policy objects applied to the API server."""
    objects = render(assets, *VALUES)
    with admission_policy(pulse_install, objects):
        yield objects


def operator_settings(objects: list[dict[str, Any]]) -> OperatorSettings:
    """The settings the chart's operator Deployment starts with (its PULSE_OPERATOR_* env)."""
    deployment = by_kind(objects, "Deployment")["pulse-pulse-recursive-training"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # The downward-API values (the Lease's namespace, the pod name) as a kubelet fills them.
    downward = {"metadata.namespace": RELEASE_NAMESPACE, "metadata.name": "pulse-operator-0"}
    return OperatorSettings.from_env({
        e["name"]: e["value"] if "value" in e else downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in container["env"]
    })  # fmt: skip


def test_admission_refuses_what_the_policy_forbids_and_names_the_rule(
    pulse_install: ControlPlane, run_policy: list[dict[str, Any]], namespace: str
) -> None:
    """Each forbidden image, ServiceAccount, Secret and endpoint is refused at apply with a
    message naming the field and the rule; the defaults and allowed names are admitted; the
    operator's own check (same settings as the chart gives it) agrees case by case."""
    plane = pulse_install
    wait_in_force(plane, namespace)
    policy = operator_settings(run_policy).policy
    for index, (case, spec, rule) in enumerate(CASES):
        run = training_run(namespace, f"run-{index}", **spec)
        stored = {**run, "metadata": {**run["metadata"], "uid": "u"}}
        found = violations(RunSpec.from_body(stored), policy)
        if rule is None:
            plane.apply(run)
            assert found == [], case
            continue
        with pytest.raises(KubectlError) as refused:
            plane.apply(run)
        message = refused.value.stderr
        assert DENIED in message and rule in message, (case, message)
        # The message names the rule (the allow-list) that refused it.
        assert re.search(r"is not allowed by the run policy \(allowed\w+: ", message), message
        # The operator says the same words.
        assert len(found) == 1 and found[0] in message, (case, found, message)


def wait_in_force(plane: ControlPlane, namespace: str) -> None:
    """Wait until the API server refuses a forbidden run by its rule: it compiles a new
    policy and learns its binding asynchronously."""
    probe = training_run(namespace, "probe", image="evil.example/miner:1")

    def refuses() -> bool:
        try:
            plane.apply(probe)
        except KubectlError as e:
            return f"{DENIED}spec.image evil.example/miner:1 is not allowed" in e.stderr
        plane.kubectl("delete", "trainingrun", "probe", f"--namespace={namespace}")
        return False

    eventually(refuses, 30, "the run policy to be in force")


def test_the_operator_fails_a_forbidden_run_before_creating_anything(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """Without the admission policy (not installed, or the run predates it) the operator
    refuses the run itself: Failed with reason PolicyViolation naming the rule, no Dask
    cluster, no Job, no driver identity."""
    plane = pulse_install
    forbidden = training_run(namespace, image="evil.example/miner:1", serviceAccountName="admin-sa")
    # Another test's admission policy may still be in force for a moment after its removal.
    eventually(lambda: _admitted(plane, forbidden), 30, "the run to be admitted")
    failed = wait_phase(plane, namespace, "Failed")
    assert failed["message"] == (
        "spec.image evil.example/miner:1 is not allowed by the run policy "
        "(allowedImagePrefixes: pulse-recursive-training:0.1.0); "
        "spec.serviceAccountName admin-sa is not allowed by the run policy "
        "(allowedServiceAccountNames: none; leave it unset to use the run's own)"
    )
    assert {c["type"]: c["reason"] for c in failed["conditions"]}["Failed"] == "PolicyViolation"
    assert "PolicyViolation" in events(plane, namespace)
    for kind, name in (("daskcluster", dask_cluster(plane, namespace)), ("job", "run-driver"),
                       ("role", "run-driver"), ("serviceaccount", "run-driver")):  # fmt: skip
        assert get(plane, kind, name, namespace) is None, kind


def _admitted(plane: ControlPlane, manifest: dict[str, Any]) -> bool:
    """Apply `manifest`; False when an admission policy refused it."""
    try:
        plane.apply(manifest)
    except KubectlError as e:
        if DENIED not in e.stderr:
            raise
        return False
    return True
