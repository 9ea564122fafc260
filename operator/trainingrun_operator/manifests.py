"""Everything one install needs, as a list of manifests: the source of ``manifests/base/``.

The TrainingRun CRD, RBAC, Deployments and the run policy's admission policy come from this
package's builders; the dask-kubernetes CRDs are read from the installed dask-kubernetes
wheel, from the copy its own Helm chart ships: the ``customresources/*.yaml`` sources with
their ``$ref``s resolved and their ``*.patch.yaml`` JSON patches applied by its release build.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from trainingrun_operator.constants import DEFAULT_IMAGE, DEFAULT_NAMESPACE
from trainingrun_operator.crd import build_crd
from trainingrun_operator.deployment import (
    build_dask_controller_deployment,
    build_operator_deployment,
    build_operator_disruption_budget,
)
from trainingrun_operator.objects import Manifest
from trainingrun_operator.policy import build_admission_policy
from trainingrun_operator.rbac import build_dask_controller_rbac, build_operator_rbac
from trainingrun_operator.settings import OperatorSettings

DASK_RESOURCES = ("daskcluster", "daskworkergroup", "daskjob", "daskautoscaler")
# The admission policy (and binding) of the run policy with the default lists; the chart's is
# named after its release.
RUN_POLICY_NAME = "pulse-run-policy"


def dask_crds_dir() -> Path:
    """The resolved CRDs inside the installed dask-kubernetes wheel (found, not imported)."""
    spec = importlib.util.find_spec("dask_kubernetes")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("dask-kubernetes is not installed: pip install '.[operator]'")
    chart = (
        Path(spec.origin).parent / "operator" / "deployment" / "helm" / "dask-kubernetes-operator"
    )
    return chart / "crds"


def build_dask_crds() -> list[Manifest]:
    """The dask-kubernetes CRDs as its chart ships them (``$ref``s resolved, patches applied)."""
    # The C loader when PyYAML has it: these files are 900 kB together.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [
        yaml.load((dask_crds_dir() / f"{name}.yaml").read_text(), Loader=loader)
        for name in DASK_RESOURCES
    ]


def build_namespace(name: str) -> Manifest:
    """A Namespace."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def build_install(
    namespace: str = DEFAULT_NAMESPACE,
    image: str = DEFAULT_IMAGE,
    settings: OperatorSettings | None = None,
) -> dict[str, list[Manifest]]:
    """Every manifest of an install, grouped by the file it is rendered to."""
    settings = settings or OperatorSettings(image=image)
    return {
        "crd.yaml": [build_crd()],
        "dask-crds.yaml": build_dask_crds(),
        "namespace.yaml": [build_namespace(namespace)],
        "rbac.yaml": [
            *build_operator_rbac(namespace),
            *build_dask_controller_rbac(namespace),
        ],
        "deployments.yaml": [
            build_operator_deployment(namespace, settings, image),
            build_operator_disruption_budget(namespace),
            build_dask_controller_deployment(namespace, image),
        ],
        "run-policy.yaml": build_admission_policy(RUN_POLICY_NAME, settings.policy),
    }


def render(documents: list[Manifest]) -> str:
    """A multi-document YAML stream, keys in builder order."""
    return "---\n".join(
        yaml.safe_dump(document, sort_keys=False, width=100) for document in documents
    )
