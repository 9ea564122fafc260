"""The operator's pure builders: CRD, DaskCluster, driver Job, RBAC, settings; no cluster needed."""

from __future__ import annotations

import base64
import datetime
import re
from typing import Any

import pytest
from cryptography import x509
from dask_kubernetes.exceptions import ValidationError
from dask_kubernetes.operator.validation import validate_cluster_name

from recursive_training.run_training import create_config_from_args, parse_args
from trainingrun_operator.constants import RUN_NAME_MAX
from trainingrun_operator.crd import RULE_PATTERN, build_crd
from trainingrun_operator.exceptions import InvalidSpecError, SettingsError
from trainingrun_operator.rbac import build_operator_rbac, driver_rules
from trainingrun_operator.settings import OperatorSettings
from trainingrun_operator.spec import RunSpec
from trainingrun_operator.workload import (
    build_dask_cluster,
    build_driver_identity,
    build_driver_job,
    build_network_policy,
    build_tls_secret,
    driver_arguments,
)

SETTINGS = OperatorSettings()


def body(**spec: Any) -> dict[str, Any]:
    """A TrainingRun as the API server returns it."""
    return {
        "metadata": {"name": "run", "namespace": "team", "uid": "u-1", "generation": 1},
        "spec": {"output": {"uri": "s3://results/run"}, **spec},
    }


def pods(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec in a DaskCluster or Job."""
    if manifest["kind"] == "Job":
        return [manifest["spec"]["template"]["spec"]]
    return [manifest["spec"]["scheduler"]["spec"], manifest["spec"]["worker"]["spec"]]


def test_driver_arguments_are_a_valid_pulse_train_command_line() -> None:
    """The contract: the pipeline's own parser turns the driver's arguments into the run."""
    run = RunSpec.from_body(
        body(
            variables=["spx", "rates"],
            startDate="2001-01-01",
            endDate="2011-01-01",
            batchSizeDays=90,
            horizon=2,
            lags=3,
            ridgeAlpha=0.5,
            halfLifeDays=365.0,
            rules=["momentum(5)", "cross(spx->rates)"],
            fdr=0.05,
            intervals=[0.8, 0.975],
            data={"uri": "s3://data/prices", "format": "parquet", "endpoint": "http://minio:9000"},
        )
    )
    config = create_config_from_args(parse_args(driver_arguments(run, SETTINGS)))
    assert config.variables == ("spx", "rates")
    assert (config.batch_size_days, config.horizon, config.lags) == (90, 2, 3)
    assert config.ridge_alpha == 0.5 and config.half_life_days == 365.0
    assert config.rules == ("momentum(5)", "cross(spx->rates)") and config.fdr == 0.05
    assert config.intervals == (0.8, 0.975)
    assert config.input_data == "s3://data/prices" and config.input_format == "parquet"
    assert config.s3_endpoint_url == "http://minio:9000"
    assert config.output_dir == "s3://results/run"
    assert config.checkpoint_dir == "s3://results/run/checkpoints"
    assert config.dask_scheduler_address == "tls://run-dask-u-1-scheduler.team.svc.cluster.local:8786"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"structure": "ar", "exog": ["market"]}, ("ar", ("market",), "rms", 52)),
        ({"structure": "pooled", "exog": ["market", "rates"], "pooledScale": "none",
          "scaleWindow": 20}, ("pooled", ("market", "rates"), "none", 20)),
        ({}, ("var", (), "rms", 52)),
    ],
)  # fmt: skip
def test_spec_model_reaches_the_pipeline(
    model: dict[str, Any], expected: tuple[str, tuple[str, ...], str, int]
) -> None:
    """spec.model's structure, exog and pooled scale become the run's --model flags."""
    run = RunSpec.from_body(body(variables=["spx", "market", "rates"], model=model))
    config = create_config_from_args(parse_args(driver_arguments(run, SETTINGS)))
    assert (config.model, config.exog, config.pooled_scale, config.scale_window) == expected


@pytest.mark.parametrize(
    ("written", "size"), [("8Gi", 8 * 2**30), ("12GB", 12 * 10**9), ("1500000000", 1.5e9)]
)
def test_spec_model_max_memory_is_the_var_guards_budget(written: str, size: float) -> None:
    """spec.model.maxMemory becomes --max-memory; unset, the pipeline's own default applies."""
    run = RunSpec.from_body(body(model={"structure": "var", "maxMemory": written}))
    assert create_config_from_args(parse_args(driver_arguments(run, SETTINGS))).max_memory == size
    unset = RunSpec.from_body(body(model={}))
    assert create_config_from_args(parse_args(driver_arguments(unset, SETTINGS))).max_memory is None


def test_children_are_owned_by_the_run_and_labelled() -> None:
    """The garbage collector deletes both children with the run; labels name the run."""
    run = RunSpec.from_body(body())
    for child in (build_dask_cluster(run, SETTINGS), build_driver_job(run, SETTINGS)):
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "pulse.dev/v1alpha1",
            "kind": "TrainingRun",
            "name": "run",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert child["metadata"]["labels"]["pulse.dev/trainingrun"] == "run"
        assert child["metadata"]["namespace"] == "team"


def test_every_pod_is_hardened_and_gets_credentials_only_by_reference() -> None:
    """Non-root, read-only root, no escalation, no capabilities, RuntimeDefault; Secrets by name."""
    run = RunSpec.from_body(
        body(
            data={"credentialsSecret": "s3-read"},
            output={"uri": "s3://r/x", "credentialsSecret": "s3-write"},
        )
    )
    for manifest in (build_dask_cluster(run, SETTINGS), build_driver_job(run, SETTINGS)):
        for pod in pods(manifest):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == 10001
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            (container,) = pod["containers"]
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }
            assert container["volumeMounts"][0] == {"name": "tmp", "mountPath": "/tmp"}
            assert container["envFrom"] == [{"secretRef": {"name": "s3-read"}}]
            assert container["command"], "never rely on the image's ENTRYPOINT"
    # One Secret (the shipped examples: output only, with the endpoint and region in it):
    # every pod gets it whole, as before.
    alone = RunSpec.from_body(body(output={"uri": "s3://r/x", "credentialsSecret": "s3"}))
    for manifest in (build_dask_cluster(alone, SETTINGS), build_driver_job(alone, SETTINGS)):
        for pod in pods(manifest):
            assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3"}}]


def test_output_credentials_reach_only_the_driver_under_their_own_prefix() -> None:
    """Data keys as AWS_* on every pod; the output Secret's keys on the driver only, as
    PULSE_OUTPUT_AWS_*, named to the pipeline with the output endpoint."""
    run = RunSpec.from_body(
        body(
            data={"credentialsSecret": "s3-read", "endpoint": "http://data:9000"},
            output={"uri": "s3://r/x", "credentialsSecret": "s3-write",
                    "endpoint": "https://results.example"},
        )
    )  # fmt: skip
    (driver,) = pods(build_driver_job(run, SETTINGS))
    env = {item["name"]: item.get("valueFrom") for item in driver["containers"][0]["env"]}
    assert env["PULSE_OUTPUT_AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-write", "key": "AWS_ACCESS_KEY_ID", "optional": False}
    }
    assert env["PULSE_OUTPUT_AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["key"] == (
        "AWS_SECRET_ACCESS_KEY"
    )
    assert env["PULSE_OUTPUT_AWS_SESSION_TOKEN"]["secretKeyRef"]["optional"] is True
    args = driver["containers"][0]["args"]
    assert "--s3-endpoint-url=http://data:9000" in args
    assert "--s3-output-endpoint-url=https://results.example" in args
    assert "--s3-output-credentials-env=PULSE_OUTPUT_AWS_" in args
    for pod in pods(build_dask_cluster(run, SETTINGS)):
        names = [item["name"] for item in pod["containers"][0].get("env", [])]
        assert not [name for name in names if name.startswith("PULSE_OUTPUT_AWS_")]
    plain = RunSpec.from_body(body(output={"uri": "s3://r/x"}))
    assert not [a for a in build_driver_job(plain, SETTINGS)["spec"]["template"]["spec"][
        "containers"][0]["args"] if a.startswith("--s3-output")]  # fmt: skip


def test_driver_job_carries_retry_deadline_suspend_and_scheduling() -> None:
    """backoffLimit, activeDeadlineSeconds and suspend map onto the Job; scheduling onto pods."""
    run = RunSpec.from_body(
        body(
            backoffLimit=4,
            activeDeadlineSeconds=600,
            suspend=True,
            nodeSelector={"pool": "batch"},
            tolerations=[{"key": "batch", "operator": "Exists"}],
            image="registry/pulse:1",
        )
    )
    job = build_driver_job(run, SETTINGS)
    assert job["spec"]["backoffLimit"] == 4
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert job["spec"]["suspend"] is True
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "run-driver"
    assert pod["nodeSelector"] == {"pool": "batch"}
    assert pod["containers"][0]["image"] == "registry/pulse:1"
    env = {item["name"]: item for item in pod["containers"][0]["env"]}
    assert (
        env["PULSE_TRAININGRUN_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.namespace"
    )


def test_dask_cluster_has_scheduler_service_and_sized_workers() -> None:
    """Workers and threads come from spec.dask; the Service exposes comm and dashboard ports."""
    run = RunSpec.from_body(
        body(
            dask={
                "workers": 5,
                "threads": 2,
                "image": "dask:1",
                "resources": {"limits": {"cpu": "2"}},
            }
        )
    )
    cluster = build_dask_cluster(run, SETTINGS)
    assert cluster["metadata"]["name"] == "run-dask-u-1"
    assert cluster["spec"]["worker"]["replicas"] == 5
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    assert worker["command"] == ["tini", "--", "timeout", "--kill-after=5s", "0", "dask"]
    assert "--nthreads=2" in worker["args"]
    assert worker["image"] == "dask:1" and worker["resources"] == {"limits": {"cpu": "2"}}
    ports = {
        port["name"]: port["port"] for port in cluster["spec"]["scheduler"]["service"]["ports"]
    }
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}


def test_default_pods_request_cpu_without_a_limit_that_would_throttle_them() -> None:
    """Without spec.dask.resources: CPU requested, not limited; memory limited to its request."""
    run = RunSpec.from_body(body())
    cluster = build_dask_cluster(run, SETTINGS)
    pods = [cluster["spec"]["worker"]["spec"], cluster["spec"]["scheduler"]["spec"],
            build_driver_job(run, SETTINGS)["spec"]["template"]["spec"]]  # fmt: skip
    for pod in pods:
        resources = pod["containers"][0]["resources"]
        assert resources["requests"] == {"cpu": SETTINGS.cpu, "memory": SETTINGS.memory}
        assert resources["limits"] == {"memory": SETTINGS.memory}


def test_a_run_without_output_is_an_invalid_spec() -> None:
    """The schema requires output.uri; the parser still says which field is missing."""
    with pytest.raises(InvalidSpecError, match=r"spec\.output\.uri: is required"):
        RunSpec.from_body({"metadata": {"name": "r", "namespace": "n", "uid": "u"}, "spec": {}})


def test_crd_rule_pattern_accepts_exactly_the_pipelines_rules() -> None:
    """The CEL rule grammar agrees with recursive_training.rules on a sample of specs."""
    from recursive_training.exceptions import ConfigError
    from recursive_training.rules import parse_rule

    samples = [
        "momentum(5)",
        "mean_reversion(20)",
        "model",
        "cross",
        "cross(a->b)",
        "cross( a -> b )",
        "momentum()",
        "momentum(x)",
        "tarot",
        "cross(a)",
        "cross(->b)",
        "model(1)",
    ]
    for text in samples:
        try:
            parse_rule(text)
            pipeline_accepts = True
        except ConfigError:
            pipeline_accepts = False
        assert bool(re.fullmatch(RULE_PATTERN, text)) == pipeline_accepts, text


def test_crd_names_columns_and_status_subresource() -> None:
    """Group, short name, printer columns and the status subresource."""
    crd = build_crd()
    assert crd["metadata"]["name"] == "trainingruns.pulse.dev"
    assert crd["spec"]["names"]["shortNames"] == ["tr"]
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Progress",
        "Skill",
        "Age",
        "Queue",
        "Dashboard",
    ]


def test_rbac_is_least_privilege() -> None:
    """The driver may only get/patch run status; the operator never reads Secrets, and reads
    but never changes pods."""
    assert driver_rules("run") == [
        {
            "apiGroups": ["pulse.dev"],
            "resources": ["trainingruns/status"],
            "verbs": ["get", "patch"],
            "resourceNames": ["run"],
        }
    ]
    role = build_operator_rbac("pulse-system")[1]
    resources = {resource for rule in role["rules"] for resource in rule["resources"]}
    assert "*" not in resources
    # Secrets: created (each run's Dask TLS Secret), never read.
    assert [rule["verbs"] for rule in role["rules"] if "secrets" in rule["resources"]] == [
        ["create"]
    ]
    pod_verbs = [rule["verbs"] for rule in role["rules"] if "pods" in rule["resources"]]
    assert pod_verbs == [["get", "list", "watch"]]
    assert all("*" not in rule["verbs"] for rule in role["rules"])
    assert not any({"bind", "escalate"} & set(rule["verbs"]) for rule in role["rules"])


def test_each_run_has_its_own_driver_identity_owned_by_it() -> None:
    """A ServiceAccount, a Role naming the run alone and its binding, all owned by the run; a
    run that names a ServiceAccount gets the Role bound to it and no account of its own."""
    own = build_driver_identity(RunSpec.from_body(body()))
    assert [(m["kind"], m["metadata"]["name"]) for m in own] == [
        ("ServiceAccount", "run-driver"), ("Role", "run-driver"), ("RoleBinding", "run-driver"),
    ]  # fmt: skip
    for manifest in own:
        assert manifest["metadata"]["namespace"] == "team"
        [owner] = manifest["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("TrainingRun", "u-1", True)
    assert own[1]["rules"] == driver_rules("run")
    assert own[2]["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "run-driver",
    }  # fmt: skip
    assert own[2]["subjects"] == [{"kind": "ServiceAccount", "name": "run-driver",
                                   "namespace": "team"}]  # fmt: skip
    named = build_driver_identity(RunSpec.from_body(body(serviceAccountName="pulse-runs")))
    assert [m["kind"] for m in named] == ["Role", "RoleBinding"]
    assert named[1]["subjects"][0]["name"] == "pulse-runs"


def test_every_run_pod_speaks_mutual_tls_with_the_runs_own_certificate() -> None:
    """Scheduler, workers and driver mount the run's TLS Secret and make every Dask
    connection mutual TLS; the scheduler listens on tls:// and every address names it; the
    Secret is owned by the run and its certificate is signed by its CA for the Service's
    names. With TLS off nothing of it is there."""
    run = RunSpec.from_body(body())
    cluster, job = build_dask_cluster(run, SETTINGS), build_driver_job(run, SETTINGS)
    address = "tls://run-dask-u-1-scheduler.team.svc.cluster.local:8786"
    for pod in pods(cluster) + pods(job):
        assert {"name": "dask-tls", "secret": {"secretName": "run-dask-u-1-tls",
                                               "defaultMode": 0o400}} in pod["volumes"]  # fmt: skip
        (container,) = pod["containers"]
        assert {"name": "dask-tls", "mountPath": "/etc/pulse/dask-tls",
                "readOnly": True} in container["volumeMounts"]  # fmt: skip
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == "/etc/pulse/dask-tls/ca.crt"
        for role in ("SCHEDULER", "WORKER", "CLIENT"):
            assert env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] == "/etc/pulse/dask-tls/tls.key"
    scheduler = pods(cluster)[0]["containers"][0]
    assert "--protocol=tls" in scheduler["args"]
    worker_env = {e["name"]: e.get("value") for e in pods(cluster)[1]["containers"][0]["env"]}
    assert worker_env["DASK_SCHEDULER_ADDRESS"] == address
    assert f"--dask-scheduler-address={address}" in job["spec"]["template"]["spec"][
        "containers"][0]["args"]  # fmt: skip

    secret = build_tls_secret(run, datetime.datetime.now(datetime.UTC))
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    files = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(files["ca.crt"])
    cert = x509.load_pem_x509_certificate(files["tls.crt"])
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    host = "run-dask-u-1-scheduler.team.svc.cluster.local"
    assert host in names.get_values_for_type(x509.DNSName)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    other = build_tls_secret(run, datetime.datetime.now(datetime.UTC))
    assert other["data"]["ca.crt"] != secret["data"]["ca.crt"], "a new CA for every run"

    plain = OperatorSettings(dask_tls=False)
    for pod in pods(build_dask_cluster(run, plain)) + pods(build_driver_job(run, plain)):
        assert [v["name"] for v in pod["volumes"]] == ["tmp"]
        assert "REQUIRE_ENCRYPTION" not in str(pod["containers"][0]["env"])
    assert "tcp://run-dask-u-1-scheduler" in str(build_driver_job(run, plain))


def test_the_network_policy_admits_only_the_runs_pods_and_the_dashboard_namespaces() -> None:
    """Ingress to the run's Dask pods: from its own pods (any port), and to the dashboard port
    from the named namespaces only; owned by the run."""
    run = RunSpec.from_body(body())
    policy = build_network_policy(run, OperatorSettings(dashboard_namespaces=("pulse-system",)))
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"pulse.dev/trainingrun": "run",
                                        "pulse.dev/component": "dask"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"pulse.dev/trainingrun": "run"}}}]},
            {"from": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "pulse-system"}}}],
             "ports": [{"protocol": "TCP", "port": 8787}]},
        ],
    }  # fmt: skip
    # The pods it selects are the run's Dask pods, and its driver is among those it admits.
    cluster, job = build_dask_cluster(run, SETTINGS), build_driver_job(run, SETTINGS)
    assert cluster["metadata"]["labels"].items() >= policy["spec"]["podSelector"][
        "matchLabels"].items()  # fmt: skip
    driver_labels = job["spec"]["template"]["metadata"]["labels"]
    assert driver_labels["pulse.dev/trainingrun"] == "run"
    only_own = build_network_policy(run, SETTINGS)["spec"]["ingress"]
    assert len(only_own) == 1


def test_a_run_applied_again_under_its_name_shares_no_name_of_its_dask_cluster() -> None:
    """The DaskCluster (so its scheduler Service's DNS name), the TLS Secret and the
    NetworkPolicy carry the run's UID: a run deleted and applied again at once never reaches
    a name cluster DNS may still resolve to the earlier run's Service, nor one the Dask
    controller would find and keep."""
    earlier, again = (
        RunSpec.from_body({**body(), "metadata": {**body()["metadata"], "uid": uid}})
        for uid in ("0c9e4bd1-aaaa", "7f31aa02-bbbb")
    )

    def names(run: RunSpec) -> set[str]:
        cluster = build_dask_cluster(run, SETTINGS)
        address = build_driver_job(run, SETTINGS)["spec"]["template"]["spec"]["containers"][0]
        return {
            cluster["metadata"]["name"],
            cluster["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"],
            next(a for a in address["args"] if a.startswith("--dask-scheduler-address")),
            build_tls_secret(run, datetime.datetime.now(datetime.UTC))["metadata"]["name"],
            build_network_policy(run, SETTINGS)["metadata"]["name"],
        }

    assert names(earlier).isdisjoint(names(again))
    assert build_dask_cluster(again, SETTINGS)["metadata"]["name"] == "run-dask-7f31aa02"


def test_the_longest_run_name_the_crd_admits_makes_a_valid_dask_cluster_name() -> None:
    """dask-kubernetes refuses a DaskCluster whose scheduler Service name would pass 63
    characters: the CRD admits run names up to the longest that fits, and no longer."""
    (rule,) = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "x-kubernetes-validations"]  # fmt: skip
    assert rule["rule"] == f"size(self.metadata.name) <= {RUN_NAME_MAX}"
    for length in (RUN_NAME_MAX, RUN_NAME_MAX + 1):
        meta = {"name": "r" * length, "namespace": "n", "uid": "0c9e4bd1-aaaa"}
        run = RunSpec.from_body({"metadata": meta, "spec": {"output": {"uri": "s3://r/x"}}})
        name = build_dask_cluster(run, SETTINGS)["metadata"]["name"]
        if length == RUN_NAME_MAX:
            validate_cluster_name(name)
        else:
            with pytest.raises(ValidationError):
                validate_cluster_name(name)


def test_dask_tls_is_on_unless_the_environment_says_false() -> None:
    """PULSE_OPERATOR_DASK_TLS is true or false; anything else is named."""
    assert OperatorSettings.from_env({}).dask_tls is True
    assert OperatorSettings.from_env({"PULSE_OPERATOR_DASK_TLS": "False"}).dask_tls is False
    with pytest.raises(SettingsError, match="PULSE_OPERATOR_DASK_TLS='off': expected true or"):
        OperatorSettings.from_env({"PULSE_OPERATOR_DASK_TLS": "off"})


def test_the_operator_may_hold_its_lease_and_touch_no_other() -> None:
    """A Role in the operator's own namespace: create leases, get/update the one Lease."""
    role, binding = build_operator_rbac("pulse-system")[3:]
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "pulse-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "update"], "resourceNames": ["pulse-trainingrun-operator"]},
    ]  # fmt: skip
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "pulse-operator"}  # fmt: skip


def test_lease_timing_must_nest_and_election_needs_a_namespace() -> None:
    """retry < renew deadline < lease duration, as client-go requires; each bad value named."""
    with pytest.raises(SettingsError, match=r"LEASE_DURATION_SECONDS='10\.0': expected more"):
        OperatorSettings(lease_duration_seconds=10.0)
    with pytest.raises(SettingsError, match=r"RENEW_DEADLINE_SECONDS='2\.0': expected more"):
        OperatorSettings(renew_deadline_seconds=2.0)
    with pytest.raises(SettingsError, match="LEASE_NAMESPACE=''"):
        OperatorSettings.from_env({"PULSE_OPERATOR_LEADER_ELECTION": "true"})
    with pytest.raises(SettingsError, match="LEADER_ELECTION='yes': expected true or false"):
        OperatorSettings.from_env({"PULSE_OPERATOR_LEADER_ELECTION": "yes"})
    env = {"PULSE_OPERATOR_LEADER_ELECTION": "True", "PULSE_OPERATOR_LEASE_NAMESPACE": "ops",
           "PULSE_OPERATOR_LEASE_DURATION_SECONDS": "30"}  # fmt: skip
    settings = OperatorSettings.from_env(env)
    assert settings.leader_election and settings.lease_duration_seconds == 30.0


def test_settings_come_from_the_environment_and_flags_override() -> None:
    """PULSE_OPERATOR_* variables are parsed; overrides win; bad values are named."""
    env = {
        "PULSE_OPERATOR_NAMESPACES": "a, b",
        "PULSE_OPERATOR_RESYNC_SECONDS": "2.5",
        "PULSE_OPERATOR_LOG_LEVEL": "debug",
    }
    settings = OperatorSettings.from_env(env, image="mine:1")
    assert settings.namespaces == ("a", "b")
    assert settings.resync_seconds == 2.5 and settings.log_level == "DEBUG"
    assert settings.image == "mine:1"
    with pytest.raises(SettingsError, match="PULSE_OPERATOR_RESYNC_SECONDS='soon': expected"):
        OperatorSettings.from_env({"PULSE_OPERATOR_RESYNC_SECONDS": "soon"})


def test_pulse_operator_refuses_a_bad_setting_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag value exits 1 naming the variable, before kopf starts."""
    from trainingrun_operator.main import main

    monkeypatch.setenv("PULSE_OPERATOR_RESYNC_SECONDS", "10")  # restored after the test
    assert main(["--resync-seconds=-1"]) == 1
    assert (
        "PULSE_OPERATOR_RESYNC_SECONDS='-1.0': expected a positive number"
        in capsys.readouterr().err
    )
