"""manifests/base is generated from the builders and matches them; Dask RBAC matches its chart."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from trainingrun_operator.manifests import build_install, dask_crds_dir
from trainingrun_operator.rbac import dask_controller_rules

REPO = Path(__file__).resolve().parents[2]


def _generator() -> object:
    """hack/generate_manifests.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "generate_manifests", REPO / "hack" / "generate_manifests.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_manifests_match_the_builders() -> None:
    """Fails when someone edits a builder without regenerating, or edits the YAML by hand."""
    generator = _generator()
    drifted = [
        name
        for name, content in generator.expected_files().items()  # type: ignore[attr-defined]
        if not (REPO / "manifests" / "base" / name).is_file()
        or (REPO / "manifests" / "base" / name).read_text() != content
    ]
    assert not drifted, f"run `python hack/generate_manifests.py`: {drifted} differ"


def test_committed_chart_files_match_the_builders() -> None:
    """The chart's crds/ and templates/_generated.tpl (RBAC rules, ...) are the builders'.

    tests/k8s/test_chart.py checks that `helm template` of the chart renders them unchanged.
    """
    generator = _generator()
    chart = REPO / "charts" / "pulse-recursive-training"
    files = generator.chart_files()  # type: ignore[attr-defined]
    drifted = [
        name
        for name, content in files.items()
        if not (chart / name).is_file() or (chart / name).read_text() != content
    ]
    assert not drifted, f"run `python hack/generate_manifests.py`: {drifted} differ"
    generated_crds = {name for name in files if name.startswith("crds/")}
    committed_crds = {f"crds/{path.name}" for path in (chart / "crds").iterdir()}
    assert committed_crds == generated_crds, "a stale or hand-written file in the chart's crds/"


def test_manifests_parse_and_name_each_object_once() -> None:
    """Every rendered document is valid YAML and (kind, namespace, name) is unique."""
    seen = set()
    for path in sorted((REPO / "manifests" / "base").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] == "Kustomization":
                continue
            meta = document["metadata"]
            key = (document["kind"], meta.get("namespace"), meta["name"])
            assert key not in seen, key
            seen.add(key)
    assert ("CustomResourceDefinition", None, "daskclusters.kubernetes.dask.org") in seen


def test_dask_controller_rules_cover_its_own_charts_rules() -> None:
    """The Dask controller gets what its own chart grants (but peering: it runs standalone)."""
    chart = dask_crds_dir().parent / "templates" / "clusterrole.yaml"
    text = "\n".join(line for line in chart.read_text().splitlines() if "{{" not in line)
    ours = {
        (group, resource, verb)
        for rule in dask_controller_rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for rule in yaml.safe_load(text)["rules"]:
        if rule["resources"] == ["clusterkopfpeerings"] or "admissionregistration" in str(rule):
            continue
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert (group, resource, verb) in ours, (group, resource, verb)


def test_install_has_one_namespace_and_both_controllers() -> None:
    """One install: CRDs of both APIs, both controllers' RBAC and Deployments, the operator's
    two replicas with their PodDisruptionBudget."""
    install = build_install(namespace="ops", image="img:2")
    workloads = install["deployments.yaml"]
    deployments = {d["metadata"]["name"]: d for d in workloads if d["kind"] == "Deployment"}
    assert set(deployments) == {"pulse-operator", "dask-kubernetes-operator"}
    (budget,) = [d for d in workloads if d["kind"] == "PodDisruptionBudget"]
    operator = deployments["pulse-operator"]["spec"]
    assert budget["spec"]["selector"] == operator["selector"] and operator["replicas"] == 2
    for deployment in deployments.values():
        assert deployment["metadata"]["namespace"] == "ops"
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "img:2"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert (
        "dask_kubernetes.operator.controller"
        in deployments["dask-kubernetes-operator"]["spec"]["template"]["spec"]["containers"][0][
            "command"
        ]
    )
    assert [ns["metadata"]["name"] for ns in install["namespace.yaml"]] == ["ops"]


def test_generator_check_mode_passes_on_a_clean_tree() -> None:
    """`hack/generate_manifests.py --check` exits 0 when nothing drifted."""
    assert _generator().main(["--check"]) == 0  # type: ignore[attr-defined]
