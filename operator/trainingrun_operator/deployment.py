"""Pure builders of the Deployments of the TrainingRun operator and the Dask controller."""

from __future__ import annotations

from trainingrun_operator.constants import (
    DASK_CONTROLLER_NAME,
    DEFAULT_IMAGE,
    LABEL_MANAGED_BY,
    OPERATOR_NAME,
)
from trainingrun_operator.objects import Manifest
from trainingrun_operator.settings import ENV_PREFIX, OperatorSettings
from trainingrun_operator.workload import container_security_context, pod_security_context

HEALTH_PORT = 8080
METRICS_PORT = OperatorSettings.metrics_port


# Replicas of the operator: one reconciles (it holds the Lease), the other stands by.
OPERATOR_REPLICAS = 2


def _deployment(
    name: str,
    namespace: str,
    image: str,
    command: list[str],
    env: list[Manifest],
    more_ports: tuple[dict[str, object], ...] = (),
    replicas: int = 1,
) -> Manifest:
    """A hardened Deployment whose kopf process serves /healthz on HEALTH_PORT.

    One replica is replaced with Recreate (kopf standalone: never two at once); several elect
    a leader, so they roll one at a time and prefer different nodes.
    """
    selector = {"app.kubernetes.io/name": name}
    probe = {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10}
    container = {
        "name": name,
        "image": image,
        "command": command,
        "env": env,
        "ports": [{"name": "health", "containerPort": HEALTH_PORT}, *more_ports],
        "livenessProbe": {**probe, "initialDelaySeconds": 10, "failureThreshold": 3},
        "readinessProbe": probe,
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod: Manifest = {
        "serviceAccountName": name,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    strategy: Manifest = {"type": "Recreate"}
    if replicas > 1:
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        pod["affinity"] = spread_across_nodes(selector)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**selector, LABEL_MANAGED_BY: "pulse"},
        },
        "spec": {
            "replicas": replicas,
            "strategy": strategy,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": pod},
        },
    }


def policy_env(settings: OperatorSettings) -> list[dict[str, str]]:
    """The run policy as PULSE_OPERATOR_ALLOWED_* variables (the chart fills them from the
    same values as its admission policy's ConfigMap)."""
    policy = settings.policy
    lists = {
        "IMAGE_PREFIXES": policy.image_prefixes,
        "SERVICE_ACCOUNTS": policy.service_accounts,
        "CREDENTIAL_SECRETS": policy.credential_secrets,
        "S3_ENDPOINTS": policy.s3_endpoints,
    }
    return [
        {"name": f"{ENV_PREFIX}ALLOWED_{key}", "value": ",".join(value)}
        for key, value in lists.items()
    ]


def spread_across_nodes(selector: Manifest) -> Manifest:
    """Prefer (not require) one replica per node: a node's loss then leaves a standby running."""
    term = {"labelSelector": {"matchLabels": selector}, "topologyKey": "kubernetes.io/hostname"}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    }


def build_operator_disruption_budget(namespace: str, name: str = OPERATOR_NAME) -> Manifest:
    """Voluntary disruptions (drains) evict one operator replica at a time, never the last."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": name}}},
    }


def _field(path: str) -> Manifest:
    """An env value read from the pod's own metadata (downward API)."""
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def build_operator_deployment(
    namespace: str,
    settings: OperatorSettings,
    image: str = DEFAULT_IMAGE,
    name: str = OPERATOR_NAME,
) -> Manifest:
    """The TrainingRun operator's Deployment, its settings passed as PULSE_OPERATOR_* variables."""
    env = [
        {"name": f"{ENV_PREFIX}NAMESPACES", "value": ",".join(settings.namespaces)},
        {"name": f"{ENV_PREFIX}IMAGE", "value": settings.image},
        {"name": f"{ENV_PREFIX}CPU", "value": settings.cpu},
        {"name": f"{ENV_PREFIX}MEMORY", "value": settings.memory},
        {"name": f"{ENV_PREFIX}RESYNC_SECONDS", "value": str(settings.resync_seconds)},
        {"name": f"{ENV_PREFIX}LOG_LEVEL", "value": settings.log_level},
        {
            "name": f"{ENV_PREFIX}LIVENESS_ENDPOINT",
            "value": f"http://0.0.0.0:{HEALTH_PORT}/healthz",
        },
        {"name": f"{ENV_PREFIX}METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": f"{ENV_PREFIX}DASK_TLS", "value": str(settings.dask_tls).lower()},
        {"name": f"{ENV_PREFIX}NETWORK_POLICY", "value": str(settings.network_policy).lower()},
        {"name": f"{ENV_PREFIX}KUEUE", "value": str(settings.kueue).lower()},
        {
            "name": f"{ENV_PREFIX}DASHBOARD_NAMESPACES",
            "value": ",".join(settings.dashboard_namespaces or (namespace,)),
        },
        *policy_env(settings),
        {"name": f"{ENV_PREFIX}LEADER_ELECTION", "value": "true"},
        {"name": f"{ENV_PREFIX}LEASE_NAMESPACE", **_field("metadata.namespace")},
        {"name": f"{ENV_PREFIX}IDENTITY", **_field("metadata.name")},
        {"name": f"{ENV_PREFIX}LEASE_DURATION_SECONDS",
         "value": str(settings.lease_duration_seconds)},
        {"name": f"{ENV_PREFIX}RENEW_DEADLINE_SECONDS",
         "value": str(settings.renew_deadline_seconds)},
        {"name": f"{ENV_PREFIX}RETRY_PERIOD_SECONDS", "value": str(settings.retry_period_seconds)},
    ]  # fmt: skip
    metrics = {"name": "metrics", "containerPort": METRICS_PORT}
    return _deployment(
        name, namespace, image, ["pulse-operator"], env, (metrics,), OPERATOR_REPLICAS
    )


def dask_controller_command() -> list[str]:
    """The command that runs the dask-kubernetes controller (the handlers live in .controller)."""
    return [
        "kopf", "run", "--standalone", "--all-namespaces",
        f"--liveness=http://0.0.0.0:{HEALTH_PORT}/healthz",
        "-m", "dask_kubernetes.operator.controller",
    ]  # fmt: skip


def build_dask_controller_deployment(
    namespace: str, image: str = DEFAULT_IMAGE, name: str = DASK_CONTROLLER_NAME
) -> Manifest:
    """The dask-kubernetes controller's Deployment, from the same project image."""
    return _deployment(name, namespace, image, dask_controller_command(), [])
