"""Operator settings, read once from the environment into one frozen object.

Every field documents itself where it is declared; ``OperatorSettings.from_env()`` is
the only reader of ``PULSE_OPERATOR_*`` variables, and command-line flags of
``pulse-operator`` override them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from trainingrun_operator.constants import DEFAULT_IMAGE, LEASE_NAME
from trainingrun_operator.exceptions import SettingsError
from trainingrun_operator.policy import ANY, RunPolicy

ENV_PREFIX = "PULSE_OPERATOR_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Fields given as comma-separated lists.
LIST_FIELDS = frozenset({
    "namespaces", "dashboard_namespaces", "allowed_image_prefixes", "allowed_service_accounts",
    "allowed_credential_secrets", "allowed_s3_endpoints",
})  # fmt: skip


@dataclasses.dataclass(frozen=True)
class OperatorSettings:
    """What the operator watches, which defaults it gives runs, and how it reports health."""

    # Namespaces to watch; empty means the whole cluster (needs the ClusterRole binding).
    namespaces: tuple[str, ...] = ()
    # Image of driver, scheduler and workers when a TrainingRun sets neither image nor dask.image.
    image: str = DEFAULT_IMAGE
    # CPU request (no limit) of the driver and of each Dask pod without spec.dask.resources.
    cpu: str = "1"
    # Memory request and limit of the driver and of each Dask pod without spec.dask.resources.
    memory: str = "2Gi"
    # Seconds between two level-triggered passes over every run (the resync timer).
    resync_seconds: float = 10.0
    # Log level of the operator process.
    log_level: str = "INFO"
    # Liveness endpoint served by kopf (`@kopf.on.probe` results); empty disables it.
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    # Port of the Prometheus metrics endpoint (text format, any path, e.g. /metrics); 0 = off.
    metrics_port: int = 9090
    # Mutual TLS between a run's Dask scheduler, workers and driver (tls.py); off: plain TCP.
    dask_tls: bool = True
    # A NetworkPolicy per run that admits only the run's own pods to its Dask pods.
    network_policy: bool = True
    # Namespaces whose pods may reach a run's Dask dashboard (the Dask controller's, for one).
    dashboard_namespaces: tuple[str, ...] = ()
    # The run policy (policy.py), re-checked before a run's pods are created. Images runs may
    # name (exact, or prefixes ending in / : @); empty means `image` alone.
    allowed_image_prefixes: tuple[str, ...] = ()
    # ServiceAccounts runs may name; a run that names none always gets its own.
    allowed_service_accounts: tuple[str, ...] = ()
    # Secrets runs may name as data/output credentials; "*" allows any.
    allowed_credential_secrets: tuple[str, ...] = (ANY,)
    # S3 endpoint URLs runs may name in data.endpoint; "*" allows any.
    allowed_s3_endpoints: tuple[str, ...] = (ANY,)
    # Honour the kueue.x-k8s.io/queue-name label: a labelled run is admitted whole by Kueue
    # through a Workload the operator keeps (docs/kueue.md). Off: the label is ignored.
    kueue: bool = False
    # Elect one active replica through a coordination.k8s.io Lease; the others stand by. Needed
    # whenever more than one operator process runs (two reconciling at once would race).
    leader_election: bool = False
    # Namespace of the Lease (the operator's own, from the downward API in the chart).
    lease_namespace: str = ""
    # Name of the Lease; replicas that share it share one leadership.
    lease_name: str = LEASE_NAME
    # This replica's name in the Lease's holderIdentity; empty means <hostname>_<random>.
    identity: str = ""
    # Seconds a standby waits after the Lease's last renewal before it takes over: the failover
    # time after a crash (a graceful shutdown releases the Lease, and a standby takes over
    # within retry_period_seconds). controller-runtime's defaults: 15, 10 and 2 seconds.
    lease_duration_seconds: float = 15.0
    # The leader stops reconciling when it could not renew for this long, before any standby
    # may take over (lease_duration_seconds): the margin for a pass still in flight.
    renew_deadline_seconds: float = 10.0
    # Seconds between two attempts to acquire or renew the Lease.
    retry_period_seconds: float = 2.0

    def __post_init__(self) -> None:
        """Reject values that would only fail later."""
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"{ENV_PREFIX}LOG_LEVEL", self.log_level, " | ".join(LOG_LEVELS))
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(
                f"{ENV_PREFIX}METRICS_PORT", str(self.metrics_port), "a port, 0 to 65535"
            )
        for name in ("resync_seconds", "retry_period_seconds"):
            if getattr(self, name) <= 0:
                raise SettingsError(
                    f"{ENV_PREFIX}{name.upper()}", str(getattr(self, name)), "a positive number"
                )
        if not self.retry_period_seconds < self.renew_deadline_seconds:
            raise SettingsError(
                f"{ENV_PREFIX}RENEW_DEADLINE_SECONDS", str(self.renew_deadline_seconds),
                f"more than RETRY_PERIOD_SECONDS ({self.retry_period_seconds})",
            )  # fmt: skip
        if not self.renew_deadline_seconds < self.lease_duration_seconds:
            raise SettingsError(
                f"{ENV_PREFIX}LEASE_DURATION_SECONDS", str(self.lease_duration_seconds),
                f"more than RENEW_DEADLINE_SECONDS ({self.renew_deadline_seconds})",
            )  # fmt: skip
        if self.leader_election and not self.lease_namespace:
            raise SettingsError(
                f"{ENV_PREFIX}LEASE_NAMESPACE", "", "the namespace of the leader-election Lease"
            )

    @property
    def policy(self) -> RunPolicy:
        """The run policy these settings describe."""
        return RunPolicy(
            image_prefixes=self.allowed_image_prefixes or (self.image,),
            service_accounts=self.allowed_service_accounts,
            credential_secrets=self.allowed_credential_secrets,
            s3_endpoints=self.allowed_s3_endpoints,
        )

    @property
    def default_resources(self) -> dict[str, dict[str, str]]:
        """Requests and limits of a pod whose run does not set its own.

        Memory is limited to what is requested (a pod past it is killed, not the node); CPU
        is only requested: a CFS limit throttles a worker in 100 ms slices even when the
        node is idle, which stretches every batch, while a request alone still reserves the
        CPU and lets a busy pod use idle cores.
        """
        return {
            "requests": {"cpu": self.cpu, "memory": self.memory},
            "limits": {"memory": self.memory},
        }

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> OperatorSettings:
        """Settings from `PULSE_OPERATOR_<FIELD>` variables, then `overrides` (flags) on top."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(f"{ENV_PREFIX}{field.name.upper()}")
            if raw is not None:
                values[field.name] = _parse(field.name, raw)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


def _parse(name: str, raw: str) -> Any:
    """Convert one environment value to the type of the field `name`."""
    if name in LIST_FIELDS:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name.endswith("_seconds"):
        try:
            return float(raw)
        except ValueError as e:
            raise SettingsError(f"{ENV_PREFIX}{name.upper()}", raw, "a number of seconds") from e
    if name == "metrics_port":
        try:
            return int(raw)
        except ValueError as e:
            raise SettingsError(f"{ENV_PREFIX}METRICS_PORT", raw, "a port, 0 to 65535") from e
    if name == "log_level":
        return raw.upper()
    if name in ("dask_tls", "network_policy", "kueue", "leader_election"):
        if raw.lower() not in ("true", "false"):
            raise SettingsError(f"{ENV_PREFIX}{name.upper()}", raw, "true or false")
        return raw.lower() == "true"
    return raw
