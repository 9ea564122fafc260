"""`kubectl apply -k` of the kustomize base on the real node does what `helm install` does.

The overlay a GitOps user would keep: the generated base, plus the run defaults lowered so
a run's pods fit on this 2-CPU node. The operator it installs runs the shipped example to
Succeeded with the same checks as the Helm install (tests/e2e/test_cluster.py), and the
base's run policy refuses a run with another image at `kubectl apply`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.cluster import ClusterError, KubeCluster, eventually
from tests.e2e.conftest import ROOT, RUN_CPU, RUN_MEMORY, Say
from tests.e2e.test_cluster import EXAMPLE, namespace_with_credentials, run_example_and_check
from tests.integration.s3.servers import MotoServer

pytestmark = pytest.mark.timeout(900)

BASE = ROOT / "manifests" / "base"
NAMESPACE = "pulse-system"


def overlay(image: str, folder: Path) -> dict[str, object]:
    """A kustomization in `folder` over the base: the image under test, small run defaults."""
    repository, tag = image.rsplit(":", 1)
    env = {"PULSE_OPERATOR_IMAGE": image, "PULSE_OPERATOR_CPU": RUN_CPU,
           "PULSE_OPERATOR_MEMORY": RUN_MEMORY}  # fmt: skip
    deployment = next(
        doc for doc in yaml.safe_load_all((BASE / "deployments.yaml").read_text())
        if doc["metadata"]["name"] == "pulse-operator"
    )  # fmt: skip
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    names = [item["name"] for item in container["env"]]
    path = "/spec/template/spec/containers/0/env/{}/value"
    patch = [{"op": "replace", "path": path.format(names.index(key)), "value": value}
             for key, value in env.items()]  # fmt: skip
    patches = [{"target": {"kind": "Deployment", "name": "pulse-operator"},
                "patch": yaml.safe_dump(patch)}]  # fmt: skip
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize refuses an absolute path as a base ("new root cannot be absolute").
        "resources": [os.path.relpath(BASE, folder)],
        "images": [{"name": "pulse-recursive-training", "newName": repository, "newTag": tag}],
        "patches": patches,
    }


@pytest.fixture(scope="module")
def kustomize_install(
    local_cluster: KubeCluster, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeCluster]:
    """The base applied server-side (as Argo CD and Flux do), both controllers available."""
    folder = tmp_path_factory.mktemp("overlay")
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(overlay(image, folder)))
    # CRDs may still carry a removed Helm release's field manager: take them over.
    local_cluster.kubectl("apply", "--server-side", "--force-conflicts",
                          f"--kustomize={folder}", timeout=300)  # fmt: skip
    local_cluster.kubectl("wait", "--for=condition=Available", "deployment", "--all",
                          f"--namespace={NAMESPACE}", "--timeout=300s", timeout=320)  # fmt: skip
    yield local_cluster
    local_cluster.kubectl("delete", f"--kustomize={folder}", "--wait", timeout=300)


def test_kubectl_apply_k_runs_the_example(
    kustomize_install: KubeCluster, node_s3: MotoServer, say: Say, tmp_path: Path
) -> None:
    """The example run reaches Succeeded under the kustomize-installed operator."""
    with namespace_with_credentials(kustomize_install, node_s3):
        run_example_and_check(kustomize_install, node_s3, say, tmp_path)


def test_kubectl_apply_k_refuses_a_run_with_another_image(kustomize_install: KubeCluster) -> None:
    """The base's run policy is in force: the example with another image is refused at
    `kubectl apply`, by a message that names the field and the rule."""
    cluster, namespace = kustomize_install, "pulse-e2e-policy"
    run = yaml.safe_load(EXAMPLE.read_text())
    run["metadata"].update(name="other-image", namespace=namespace)
    run["spec"]["image"] = "registry.example/miner:1"
    cluster.kubectl("create", "namespace", namespace)
    try:

        def refusal() -> str | None:
            try:
                cluster.kubectl("apply", "--filename=-", stdin=yaml.safe_dump(run))
            except ClusterError as e:
                return str(e)
            # Admitted before the API server had the policy: take it back, try again.
            cluster.kubectl("delete", "trainingrun", "other-image", f"--namespace={namespace}")
            return None

        message = eventually(refusal, 30, "the run policy to refuse the run")
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait", timeout=300)
    assert (
        "denied request: spec.image registry.example/miner:1 is not allowed by the run policy "
        "(allowedImagePrefixes: "
    ) in message, message
