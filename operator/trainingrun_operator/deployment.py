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


def _deployment(
    name: str,
    namespace: str,
    image: str,
    command: list[str],
    env: list[dict[str, str]],
    more_ports: tuple[dict[str, object], ...] = (),
) -> Manifest:
    """A one-replica, hardened Deployment whose kopf process serves /healthz on HEALTH_PORT."""
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
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**selector, LABEL_MANAGED_BY: "pulse"},
        },
        "spec": {
            "replicas": 1,
            # kopf runs standalone (no peering): never two operators at once, even while rolling.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
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
    ]
    metrics = {"name": "metrics", "containerPort": METRICS_PORT}
    return _deployment(name, namespace, image, ["pulse-operator"], env, (metrics,))


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
