"""The Helm chart: lint, schema, sync with the Python builders, and a real install.

charts/pulse-recursive-training/crds/ and templates/_generated.tpl are written by
hack/generate_manifests.py (tests/unit/test_operator_manifests.py checks that drift);
here `helm template` output is compared with the builders, every rendered object goes
through the API server's validation, and `helm install --wait` succeeds on a control
plane of its own (the shared one holds manifests/base objects that Helm would refuse to
adopt), with this test playing kubelet so the Deployments become available.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainingrun_operator.crd import build_crd
from trainingrun_operator.deployment import (
    build_operator_deployment,
    build_operator_disruption_budget,
    spread_across_nodes,
)
from trainingrun_operator.manifests import build_dask_crds
from trainingrun_operator.rbac import (
    dask_controller_rules,
    kueue_rules,
    operator_lease_rules,
    operator_rules,
)
from trainingrun_operator.settings import OperatorSettings
from trainingrun_operator.workload import container_security_context, pod_security_context

from .conftest import _find_assets, unavailable
from .controlplane import ControlPlane
from .kubelet import eventually, set_phase

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pulse-recursive-training"
IRSA_VALUES = CHART / "examples" / "values-s3-irsa.yaml"
RELEASE = "pulse"
RELEASE_NAMESPACE = "pulse-system"
POLICY = "pulse-pulse-recursive-training-run-policy"
Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def assets() -> Path:
    """The envtest assets dir, with helm in it."""
    found = _find_assets()
    if found is None or not (found / "helm").is_file():
        unavailable('no helm in the envtest assets: run `eval "$(hack/envtest.sh)"` first')
    return found


def helm(
    assets: Path, *args: str, check: bool = True, plane: ControlPlane | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the assets' helm; against `plane` when given, else with no cluster at all."""
    command = [str(assets / "helm"), *args]
    if plane is not None:
        command.append(f"--kubeconfig={plane.admin_kubeconfig}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stderr}")
    return result


def render(assets: Path, *args: str) -> list[Manifest]:
    """The objects `helm template` renders for the chart with `args`."""
    output = helm(
        assets, "template", RELEASE, str(CHART), f"--namespace={RELEASE_NAMESPACE}", *args
    ).stdout
    return [document for document in yaml.safe_load_all(output) if document]


def by_kind(objects: list[Manifest], kind: str) -> dict[str, Manifest]:
    """The objects of `kind`, by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


# --- without a cluster -------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, IRSA_VALUES], ids=["defaults", "s3-irsa"])
def test_helm_lint_strict_passes(assets: Path, values: Path | None) -> None:
    """`helm lint --strict` passes with the default values and with the example values."""
    extra = [f"--values={values}"] if values else []
    result = helm(assets, "lint", "--strict", str(CHART), *extra)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_default_render_has_both_controllers_and_their_rbac(assets: Path) -> None:
    """Defaults: operator and Dask controller, each with ServiceAccount and ClusterRole."""
    objects = render(assets)
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == {
        "pulse-pulse-recursive-training",
        "pulse-pulse-recursive-training-dask",
    }
    for deployment in deployments.values():
        assert deployment["metadata"]["namespace"] == RELEASE_NAMESPACE
    dask = deployments["pulse-pulse-recursive-training-dask"]["spec"]
    assert dask["replicas"] == 1 and dask["strategy"] == {"type": "Recreate"}
    assert set(by_kind(objects, "ClusterRole")) == {
        "pulse-pulse-recursive-training",
        "pulse-pulse-recursive-training-dask",
    }
    assert len(by_kind(objects, "ClusterRoleBinding")) == 2
    assert not by_kind(objects, "ServiceMonitor")


def test_rbac_rules_are_the_builders(assets: Path) -> None:
    """The ClusterRoles' and the Lease Role's rules are those of trainingrun_operator.rbac."""
    objects = render(assets)
    roles = by_kind(objects, "ClusterRole")
    assert roles["pulse-pulse-recursive-training"]["rules"] == operator_rules()
    lease_role = by_kind(objects, "Role")["pulse-pulse-recursive-training"]
    assert lease_role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert lease_role["rules"] == operator_lease_rules()
    binding = by_kind(objects, "RoleBinding")["pulse-pulse-recursive-training"]
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["subjects"][0]["name"] == "pulse-pulse-recursive-training"
    assert roles["pulse-pulse-recursive-training-dask"]["rules"] == dask_controller_rules()


def test_kueue_enabled_adds_its_role_and_turns_the_route_on(assets: Path) -> None:
    """kueue.enabled: a ClusterRole with kueue_rules() bound to the operator, and
    PULSE_OPERATOR_KUEUE=true; by default neither the role nor the route."""
    name = "pulse-pulse-recursive-training-kueue"

    def route(objects: list[Manifest]) -> str:
        operator = by_kind(objects, "Deployment")["pulse-pulse-recursive-training"]
        env = operator["spec"]["template"]["spec"]["containers"][0]["env"]
        return str(next(e["value"] for e in env if e["name"] == "PULSE_OPERATOR_KUEUE"))

    default = render(assets)
    assert name not in by_kind(default, "ClusterRole") and route(default) == "false"
    enabled = render(assets, "--set=kueue.enabled=true")
    assert by_kind(enabled, "ClusterRole")[name]["rules"] == kueue_rules()
    binding = by_kind(enabled, "ClusterRoleBinding")[name]
    assert binding["roleRef"]["name"] == name
    assert binding["subjects"][0]["name"] == "pulse-pulse-recursive-training"
    assert route(enabled) == "true"


def test_crds_are_the_builders(assets: Path) -> None:
    """`helm template --include-crds` renders exactly the builders' CRDs."""
    crds = by_kind(render(assets, "--include-crds"), "CustomResourceDefinition")
    expected = {crd["metadata"]["name"]: crd for crd in [build_crd(), *build_dask_crds()]}
    assert crds.keys() == expected.keys()
    for name, crd in expected.items():
        assert crds[name] == crd, name


def test_operator_deployment_matches_the_builder(assets: Path) -> None:
    """Same settings variables, probes and hardening as build_operator_deployment()."""
    settings = OperatorSettings()
    built = build_operator_deployment(RELEASE_NAMESPACE, settings)["spec"]["template"]["spec"]
    ours = by_kind(render(assets), "Deployment")["pulse-pulse-recursive-training"]
    pod = ours["spec"]["template"]["spec"]
    container, built_container = pod["containers"][0], built["containers"][0]
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}
    built_env = {
        item["name"]: item.get("value", item.get("valueFrom")) for item in built_container["env"]
    }
    for name in [name for name in env if name.endswith("_SECONDS")]:
        # Helm prints the number 10 as "10", we as "10.0"
        assert float(env.pop(name)) == float(built_env.pop(name)), name
    assert env == built_env  # same variables, and the defaults agree value for value
    assert container["image"] == "pulse-recursive-training:0.1.0"
    for key in ("ports", "livenessProbe", "readinessProbe", "resources", "volumeMounts"):
        assert container[key] == built_container[key], key
    assert pod["securityContext"] == pod_security_context() == built["securityContext"]
    assert container["securityContext"] == container_security_context()
    assert pod["volumes"] == built["volumes"]


def test_two_replicas_one_leader_by_default(assets: Path) -> None:
    """Two operator pods that roll one at a time, prefer different nodes, and a PDB keeps one;
    with one replica no PDB (it would block every drain), with `affinity` set no default."""
    objects = render(assets)
    spec = by_kind(objects, "Deployment")["pulse-pulse-recursive-training"]["spec"]
    built = build_operator_deployment("ns", OperatorSettings())["spec"]
    assert spec["replicas"] == built["replicas"] == 2
    assert spec["strategy"] == built["strategy"]
    selector = spec["selector"]["matchLabels"]
    assert spec["template"]["spec"]["affinity"] == spread_across_nodes(selector)
    budget = by_kind(objects, "PodDisruptionBudget")["pulse-pulse-recursive-training"]
    assert budget["spec"] == {
        **build_operator_disruption_budget("ns")["spec"], "selector": {"matchLabels": selector},
    }  # fmt: skip
    assert spec["template"]["metadata"]["labels"].items() >= selector.items()
    single = render(assets, "--set=operator.replicas=1")
    assert not by_kind(single, "PodDisruptionBudget")
    node_affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["ops"]}]}]}}}  # fmt: skip
    own = render(assets, "--set-json=affinity=" + json.dumps(node_affinity))
    pod = by_kind(own, "Deployment")["pulse-pulse-recursive-training"]["spec"]["template"]
    assert pod["spec"]["affinity"] == node_affinity


def test_values_reach_the_operator(assets: Path) -> None:
    """Watched namespaces, log level, probe port and run defaults become PULSE_OPERATOR_*."""
    objects = render(
        assets,
        "--set=operator.watchNamespaces={a,b}",
        "--set=operator.logLevel=DEBUG",
        "--set=operator.probePort=9090",
        "--set=operator.runDefaults.memory=4Gi",
        "--set=image.tag=9.9",
        "--set=operator.leaderElection.leaseDurationSeconds=30",
    )
    container = by_kind(objects, "Deployment")["pulse-pulse-recursive-training"]["spec"][
        "template"
    ]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["PULSE_OPERATOR_LEASE_DURATION_SECONDS"] == "30"
    assert env["PULSE_OPERATOR_NAMESPACES"] == "a,b"
    assert env["PULSE_OPERATOR_LOG_LEVEL"] == "DEBUG"
    assert env["PULSE_OPERATOR_MEMORY"] == "4Gi"
    assert env["PULSE_OPERATOR_IMAGE"] == "pulse-recursive-training:9.9"
    assert env["PULSE_OPERATOR_LIVENESS_ENDPOINT"] == "http://0.0.0.0:9090/healthz"
    assert env["PULSE_OPERATOR_METRICS_PORT"] == "9090"
    assert container["ports"] == [
        {"name": "health", "containerPort": 9090},
        {"name": "metrics", "containerPort": 9090},
    ]


def test_toggles_leave_out_what_they_disable(assets: Path) -> None:
    """operator.enabled=false, daskController.enabled=false, rbac.create=false."""
    no_operator = render(assets, "--set=operator.enabled=false")
    assert set(by_kind(no_operator, "Deployment")) == {"pulse-pulse-recursive-training-dask"}
    assert "pulse-pulse-recursive-training" not in by_kind(no_operator, "ClusterRole")
    no_dask = render(assets, "--set=daskController.enabled=false")
    assert set(by_kind(no_dask, "Deployment")) == {"pulse-pulse-recursive-training"}
    no_rbac = render(assets, "--set=rbac.create=false")
    assert not by_kind(no_rbac, "ClusterRole") and not by_kind(no_rbac, "ClusterRoleBinding")


def test_uninstall_first_deletes_the_runs_as_the_operator(assets: Path) -> None:
    """A pre-delete hook Job runs trainingrun_operator.uninstall under the operator's account."""
    objects = render(assets, "--set=operator.watchNamespaces={research}")
    hook = by_kind(objects, "Job")["pulse-pulse-recursive-training-uninstall"]
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    pod = hook["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pulse-pulse-recursive-training"
    (container,) = pod["containers"]
    assert container["command"] == [
        "python", "-m", "trainingrun_operator.uninstall", "--timeout-seconds=300",
    ]  # fmt: skip
    assert container["env"] == [{"name": "PULSE_OPERATOR_NAMESPACES", "value": "research"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert not by_kind(render(assets, "--set=uninstall.deleteRuns=false"), "Job")


def test_the_run_policy_defaults_to_the_chart_image_and_run_accounts(assets: Path) -> None:
    """The admission policy's lists and the operator's variables are the same: by default
    the chart's image and no named account; runServiceAccounts' names are added; off: no
    policy objects (the operator still checks)."""

    def lists(objects: list[Manifest]) -> dict[str, list[str]]:
        policy = by_kind(objects, "ValidatingAdmissionPolicy")[POLICY]
        return {v["name"]: json.loads(v["expression"]) for v in policy["spec"]["variables"]}

    def operator_env(objects: list[Manifest]) -> dict[str, str]:
        pod = by_kind(objects, "Deployment")["pulse-pulse-recursive-training"]["spec"]["template"]
        return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}

    objects = render(assets)
    assert lists(objects) == {"image_prefixes": ["pulse-recursive-training:0.1.0"],
                              "service_accounts": [], "credential_secrets": ["*"],
                              "s3_endpoints": ["*"]}  # fmt: skip
    binding = by_kind(objects, "ValidatingAdmissionPolicyBinding")[POLICY]
    assert binding["spec"] == {"policyName": POLICY, "validationActions": ["Deny"]}
    env = operator_env(objects)
    assert env["PULSE_OPERATOR_ALLOWED_IMAGE_PREFIXES"] == "pulse-recursive-training:0.1.0"
    irsa = render(
        assets, f"--values={IRSA_VALUES}", "--set=runPolicy.allowedServiceAccountNames={x}"
    )
    assert lists(irsa)["service_accounts"] == ["x", "pulse-runs"]
    assert operator_env(irsa)["PULSE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS"] == "x,pulse-runs"
    off = render(assets, "--set=runPolicy.enabled=false")
    assert not by_kind(off, "ValidatingAdmissionPolicy")


def test_irsa_example_creates_an_annotated_run_service_account(assets: Path) -> None:
    """The S3/IRSA example: an annotated ServiceAccount, bound to no cluster-wide driver role
    (the operator binds each run's own Role to it)."""
    objects = render(assets, f"--values={IRSA_VALUES}")
    account = by_kind(objects, "ServiceAccount")["pulse-runs"]
    assert account["metadata"]["namespace"] == "research"
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    # No RoleBinding but the operator's own, on its Lease: drivers are bound run by run.
    assert set(by_kind(objects, "RoleBinding")) == {"pulse-pulse-recursive-training"}


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--set=foo=bar", "additional properties 'foo' not allowed"),
        ("--set=operator.replicas=two", "operator.replicas"),
        ("--set=operator.replicas=-1", "operator.replicas"),
        ("--set=operator.leaderElection.leaseDurationSeconds=0", "leaseDurationSeconds"),
        ("--set=operator.logLevel=LOUD", "operator.logLevel"),
        ("--set=rbac.scope=namespace", "rbac.scope"),
        ("--set=image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("--set=operator.enabled=yes", "operator.enabled"),
    ],
)  # fmt: skip
def test_schema_rejects_unknown_and_mistyped_values(assets: Path, flag: str, message: str) -> None:
    """values.schema.json makes `helm template` fail and name the offending value."""
    result = helm(assets, "template", RELEASE, str(CHART), flag, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr.replace("/", "."), result.stderr


def test_service_monitor_needs_its_crd(assets: Path) -> None:
    """Enabled without the Prometheus-operator API it fails clearly; with it, it renders."""
    result = helm(
        assets, "template", RELEASE, str(CHART),
        "--set=metrics.serviceMonitor.enabled=true", check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "ServiceMonitor CRD" in result.stderr
    objects = render(
        assets,
        "--set=metrics.serviceMonitor.enabled=true",
        "--api-versions=monitoring.coreos.com/v1/ServiceMonitor",
    )
    monitor = by_kind(objects, "ServiceMonitor")["pulse-pulse-recursive-training"]
    assert monitor["spec"]["endpoints"][0] == {"port": "metrics", "path": "/metrics",
                                               "interval": "30s"}  # fmt: skip
    service = by_kind(objects, "Service")["pulse-pulse-recursive-training-metrics"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    selected = monitor["spec"]["selector"]["matchLabels"].items()
    assert selected <= service["metadata"]["labels"].items()


def test_grafana_dashboard_is_loaded_by_label(assets: Path) -> None:
    """The dashboard ConfigMap carries the sidecar's label and the chart's dashboard JSON."""
    assert not any(name.endswith("-dashboard") for name in by_kind(render(assets), "ConfigMap"))
    objects = render(assets, "--set=metrics.grafanaDashboard.enabled=true",
                     "--set=metrics.grafanaDashboard.annotations.grafana_folder=Pulse")  # fmt: skip
    config_map = by_kind(objects, "ConfigMap")["pulse-pulse-recursive-training-dashboard"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Pulse"}
    shipped = json.loads((CHART / "dashboards" / "pulse-operator.json").read_text())
    assert json.loads(config_map["data"]["pulse-operator.json"]) == shipped


# --- against a real API server -----------------------------------------------------------


@pytest.fixture(scope="module")
def chart_plane(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of the chart's own, so nothing from manifests/base is in the way."""
    with ControlPlane(assets, tmp_path_factory.mktemp("chart-plane")) as plane:
        yield plane


def _apply_crds(plane: ControlPlane) -> None:
    """`kubectl apply --server-side -f crds/` (the documented upgrade path), then wait."""
    result = plane.kubectl("apply", "--server-side", f"--filename={CHART / 'crds'}")
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert len(names) == 5, result.stdout
    plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


def test_every_rendered_object_is_accepted_by_the_api_server(
    assets: Path, chart_plane: ControlPlane, tmp_path: Path
) -> None:
    """CRDs applied for real, then a server-side dry run of everything else the chart renders."""
    _apply_crds(chart_plane)
    for namespace in (RELEASE_NAMESPACE, "research"):
        chart_plane.kubectl("create", "namespace", namespace, check=False)
    objects = render(assets, f"--values={IRSA_VALUES}")
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    result = chart_plane.kubectl(
        "apply", "--dry-run=server", "--server-side", f"--filename={rendered}"
    )
    assert result.stdout.count("(server dry run)") == len(objects), result.stdout
    assert len(objects) >= 10


def _play_kubelet(plane: ControlPlane, namespace: str, stop: threading.Event) -> None:
    """Until `stop`: report every pod of `namespace` that is not Ready as Running and Ready."""
    while not stop.wait(0.5):
        pods = plane.kubectl_json("get", "pods", f"--namespace={namespace}")["items"]
        for pod in pods:
            conditions = pod.get("status", {}).get("conditions", [])
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                set_phase(plane, pod, "Running")


def test_helm_install_wait_succeeds(assets: Path, chart_plane: ControlPlane) -> None:
    """`helm install --wait` completes (the test plays kubelet), then the CRD upgrade works."""
    if not chart_plane.has_controller_manager:
        unavailable("no kube-controller-manager: Deployments never become available without it")
    chart_plane.kubectl("create", "namespace", RELEASE_NAMESPACE, check=False)
    stop = threading.Event()
    kubelet = threading.Thread(
        target=_play_kubelet, args=(chart_plane, RELEASE_NAMESPACE, stop), daemon=True
    )
    kubelet.start()
    try:
        result = helm(
            assets, "install", RELEASE, str(CHART), f"--namespace={RELEASE_NAMESPACE}",
            "--wait", "--timeout=180s", plane=chart_plane,
        )  # fmt: skip
    finally:
        stop.set()
        kubelet.join(30)
    assert "STATUS: deployed" in result.stdout
    assert "kubectl get tr" in result.stdout  # NOTES.txt: the next command
    for name, replicas in (
        ("pulse-pulse-recursive-training", 2), ("pulse-pulse-recursive-training-dask", 1),
    ):  # fmt: skip
        deployment = chart_plane.kubectl_json(
            "get", "deployment", name, f"--namespace={RELEASE_NAMESPACE}"
        )
        assert deployment["status"]["availableReplicas"] == replicas, name
    # The release owns its RBAC; CRDs exist and the documented upgrade command applies cleanly.
    status = helm(assets, "status", RELEASE, f"--namespace={RELEASE_NAMESPACE}", plane=chart_plane)
    assert "deployed" in status.stdout
    _apply_crds(chart_plane)
    eventually(
        lambda: chart_plane.kubectl("get", "tr", "--all-namespaces", check=False).returncode == 0,
        30,
        "the tr short name",
    )
