"""Pure builders of what a TrainingRun owns: a DaskCluster and the driver's batch/v1 Job.

Why a DaskCluster plus a Job rather than a DaskJob: the Job controller gives the driver
``backoffLimit`` (retries that resume from checkpoints), ``activeDeadlineSeconds``,
``suspend`` and pod-failure accounting with their standard semantics and conditions,
while DaskJob's runner pod restarts in place (``restartPolicy: OnFailure``) with no retry
limit. The DaskCluster is deleted by the operator as soon as the Job ends.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from trainingrun_operator import tls
from trainingrun_operator.constants import (
    API_VERSION,
    DASHBOARD_PORT,
    DASK_API_VERSION,
    ENV_RUN_NAME,
    ENV_RUN_NAMESPACE,
    EXIT_DO_NOT_RETRY,
    KIND,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_RUN,
    MANAGER,
    OUTPUT_CREDENTIALS_PREFIX,
    RUN_AS_USER,
    SCHEDULER_PORT,
)
from trainingrun_operator.objects import Manifest
from trainingrun_operator.rbac import build_run_role, build_run_role_binding, build_service_account
from trainingrun_operator.settings import OperatorSettings
from trainingrun_operator.spec import RunSpec, cli_arguments

TMP_VOLUME = "tmp"
TLS_VOLUME = "dask-tls"
# The label the API server puts on every namespace: its name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# The image's init (tini) goes first in every command a pod runs: as PID 1 it passes
# SIGTERM on, so a deleted run's pods stop at once instead of after the grace period.
INIT = ("tini", "--")
# Seconds a Dask pod's processes get between SIGTERM and SIGKILL, well inside the pod's
# 30 s grace period.
DASK_STOP_SECONDS = 5
# Dask pods: under tini, coreutils' `timeout` (duration 0: no time limit) puts the Dask
# command in a process group of its own, sends SIGTERM to the whole group and SIGKILL to it
# DASK_STOP_SECONDS later if anything is left (distributed 2026.8):
# - the group, not the nanny alone: a worker process signalled only through its nanny took
#   8 s or more (a busy worker's close waits for its task), and an idle one could hang for
#   good when the closing scheduler told it to close first (it asks its nanny to close
#   gracefully, a nanny already closing drops the request, the worker stays "closing");
# - SIGKILL after a bound: a worker process the nanny spawns just after the signal gets
#   none, and a nanny closing while it starts waits for it to reach the scheduler, which a
#   deleted run no longer has (in a CI run the pod sat out its whole grace period).
# A worker keeps nothing worth a longer close: the scheduler reschedules its tasks.
DASK_INIT = ("tini", "--", "timeout", f"--kill-after={DASK_STOP_SECONDS}s", "0")


def cluster_name(run: RunSpec) -> str:
    """Name of the run's DaskCluster (its scheduler Service is `<name>-scheduler`).

    It carries the run's instance (`run_instance`), so a run deleted and applied again at
    once never reuses the scheduler Service's DNS name: cluster DNS keeps answering with
    the earlier Service's ClusterIP for up to its cache TTL (30 s with kubeadm's CoreDNS)
    after that Service is gone, and a driver or worker sent there reaches no scheduler, or
    whatever else answers at that address (docs/operator.md, "Deleting a run").
    """
    return f"{run.name}-dask-{run_instance(run)}"


def job_name(run: RunSpec) -> str:
    """Name of the run's driver Job."""
    return f"{run.name}-driver"


def driver_identity_name(run: RunSpec) -> str:
    """Name of the run's driver ServiceAccount, Role and RoleBinding."""
    return f"{run.name}-driver"


def driver_service_account(run: RunSpec) -> str:
    """The driver pod's ServiceAccount: the one the spec names, else the run's own."""
    return run.service_account_name or driver_identity_name(run)


def scheduler_host(run: RunSpec) -> str:
    """The in-cluster DNS name of the run's Dask scheduler Service."""
    return f"{cluster_name(run)}-scheduler.{run.namespace}.svc.cluster.local"


def scheduler_address(run: RunSpec, settings: OperatorSettings) -> str:
    """The in-cluster address of the run's Dask scheduler (tls:// unless TLS is off)."""
    scheme = "tls" if settings.dask_tls else "tcp"
    return f"{scheme}://{scheduler_host(run)}:{SCHEDULER_PORT}"


def tls_secret_name(run: RunSpec) -> str:
    """Name of the Secret with the run's CA certificate and its pods' key pair."""
    return f"{cluster_name(run)}-tls"


def network_policy_name(run: RunSpec) -> str:
    """Name of the NetworkPolicy that admits only the run's own pods to its Dask pods."""
    return cluster_name(run)


def run_instance(run: RunSpec) -> str:
    """The start of the run's UID, in the names of its Dask cluster and what goes with it.

    A run deleted and applied again at once gets a new UID, so nothing of its Dask cluster
    shares a name with the earlier run's, which the garbage collector is about to delete:
    not the scheduler Service (whose DNS name clients cache), the Deployments the Dask
    controller creates only if absent, the Secret (a create that met the old one would keep
    it: the operator never reads Secrets) or the NetworkPolicy.
    """
    return run.uid[:8]


def build_tls_secret(run: RunSpec, now: datetime.datetime) -> Manifest:
    """The run's own CA and certificate (tls.py), owned by the run; a new key pair per call."""
    host = scheduler_host(run)
    hosts = [host, host.removesuffix(".cluster.local"), f"{cluster_name(run)}-scheduler"]
    files = tls.issue(run.name, hosts, now)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": child_metadata(run, tls_secret_name(run), "dask-tls"),
        "data": tls.secret_data(files),
    }


def labels(run: RunSpec, component: str) -> dict[str, str]:
    """Labels of every object and pod of the run."""
    return {LABEL_RUN: run.name, LABEL_COMPONENT: component, LABEL_MANAGED_BY: MANAGER}


def child_metadata(run: RunSpec, name: str, component: str) -> dict[str, Any]:
    """Metadata of a child named `name`: in the run's namespace, labelled, owned by it."""
    return {
        "name": name,
        "namespace": run.namespace,
        "labels": labels(run, component),
        "ownerReferences": [owner_reference(run)],
    }


def owner_reference(run: RunSpec) -> dict[str, Any]:
    """The controller reference that lets the garbage collector delete children with the run."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": run.name,
        "uid": run.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def container_security_context() -> dict[str, Any]:
    """A container that cannot escalate, holds no capability and cannot write its image."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security_context() -> dict[str, Any]:
    """A pod that runs as the image's non-root user under the default seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _shared_credentials(run: RunSpec) -> list[dict[str, Any]]:
    """envFrom: the AWS_* keys of the Secrets every pod gets, by reference only."""
    return [{"secretRef": {"name": name}} for name in run.shared_secrets]


def _output_credentials(run: RunSpec) -> list[dict[str, Any]]:
    """env: a separate output Secret's keys under OUTPUT_CREDENTIALS_PREFIX, by reference.

    Only the driver writes outputs. Its own prefix keeps them apart from the data Secret's
    AWS_* (with envFrom one would silently override the other).
    """
    if not run.separate_output_credentials:
        return []
    return [
        {
            "name": f"{OUTPUT_CREDENTIALS_PREFIX}{key}",
            "valueFrom": {"secretKeyRef": {"name": run.output_secret, "key": f"AWS_{key}",
                                           "optional": optional}},
        }
        for key, optional in (
            ("ACCESS_KEY_ID", False), ("SECRET_ACCESS_KEY", False), ("SESSION_TOKEN", True),
        )
    ]  # fmt: skip


def _pod_spec(
    run: RunSpec, settings: OperatorSettings, container: Mapping[str, Any], **extra: Any
) -> dict[str, Any]:
    """A hardened pod around `container`, with a writable /tmp, the run's TLS files (read
    only, owner-readable) and the run's scheduling."""
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    env = list(container.get("env", []))
    if settings.dask_tls:
        mounts.append({"name": TLS_VOLUME, "mountPath": tls.MOUNT_PATH, "readOnly": True})
        secret = {"secretName": tls_secret_name(run), "defaultMode": 0o400}
        volumes.append({"name": TLS_VOLUME, "secret": secret})
        env += tls.dask_env()
    spec: dict[str, Any] = {
        "securityContext": pod_security_context(),
        "automountServiceAccountToken": False,
        "containers": [
            {
                **container,
                "env": env,
                "securityContext": container_security_context(),
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
        **extra,
    }
    if run.node_selector:
        spec["nodeSelector"] = dict(run.node_selector)
    if run.tolerations:
        spec["tolerations"] = [dict(toleration) for toleration in run.tolerations]
    return spec


def _dask_container(
    run: RunSpec, settings: OperatorSettings, name: str, args: list[str]
) -> dict[str, Any]:
    """A scheduler or worker container of the project image."""
    container: dict[str, Any] = {
        "name": name,
        "image": run.dask_image or run.image or settings.image,
        "command": [*DASK_INIT, "dask"],
        "args": args,
        "env": [{"name": "DASK_DISTRIBUTED__WORKER__DAEMON", "value": "False"}],
        "resources": dict(run.dask_resources or settings.default_resources),
    }
    env_from = _shared_credentials(run)
    if env_from:
        container["envFrom"] = env_from
    return container


def build_dask_cluster(run: RunSpec, settings: OperatorSettings) -> Manifest:
    """The DaskCluster of the run: one scheduler, `spec.dask.workers` workers, owned by the run."""
    protocol = "tls" if settings.dask_tls else "tcp"
    scheduler = _dask_container(
        run,
        settings,
        "scheduler",
        ["scheduler", f"--protocol={protocol}", f"--port={SCHEDULER_PORT}",
         f"--dashboard-address=:{DASHBOARD_PORT}"],
    )  # fmt: skip
    scheduler["ports"] = [
        {"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
        {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
    ]
    scheduler["readinessProbe"] = {
        "tcpSocket": {"port": "tcp-comm"},
        "initialDelaySeconds": 2,
        "periodSeconds": 5,
    }
    worker = _dask_container(
        run,
        settings,
        "worker",
        ["worker", "--name=$(DASK_WORKER_NAME)", f"--nthreads={run.threads}", "--no-dashboard"],
    )
    # The Dask controller would give workers a tcp:// address; ours names the scheme.
    worker["env"].append(
        {"name": "DASK_SCHEDULER_ADDRESS", "value": scheduler_address(run, settings)}
    )
    service_ports = [
        {"name": "tcp-comm", "port": SCHEDULER_PORT, "targetPort": "tcp-comm", "protocol": "TCP"},
        {"name": "http-dashboard", "port": DASHBOARD_PORT, "targetPort": "http-dashboard",
         "protocol": "TCP"},
    ]  # fmt: skip
    return {
        "apiVersion": DASK_API_VERSION,
        "kind": "DaskCluster",
        "metadata": child_metadata(run, cluster_name(run), "dask"),
        "spec": {
            "idleTimeout": 0,
            "worker": {"replicas": run.workers, "spec": _pod_spec(run, settings, worker)},
            "scheduler": {
                "spec": _pod_spec(run, settings, scheduler),
                "service": {
                    "type": "ClusterIP",
                    "selector": {
                        "dask.org/cluster-name": cluster_name(run),
                        "dask.org/component": "scheduler",
                    },
                    "ports": service_ports,
                },
            },
        },
    }


def _owned(manifest: Manifest, run: RunSpec, component: str) -> Manifest:
    """`manifest` with the run's labels and its controller reference."""
    manifest["metadata"]["labels"] = labels(run, component)
    manifest["metadata"]["ownerReferences"] = [owner_reference(run)]
    return manifest


def build_driver_identity(run: RunSpec) -> list[Manifest]:
    """What lets this run's driver report, and nothing more: a Role naming only this run's
    status, bound to the driver's ServiceAccount (the run's own unless the spec names one).

    One ServiceAccount per run, because a Role bound to a ServiceAccount that several runs
    share would let each of their drivers write the others' status. All are owned by the
    run, so the garbage collector revokes the grant with the run.
    """
    name = driver_identity_name(run)
    identity = [
        _owned(build_run_role(name, run.namespace, run.name), run, "driver"),
        _owned(
            build_run_role_binding(name, run.namespace, driver_service_account(run)), run, "driver"
        ),
    ]
    if not run.service_account_name:
        identity.insert(0, _owned(build_service_account(name, run.namespace), run, "driver"))
    return identity


def build_network_policy(run: RunSpec, settings: OperatorSettings) -> Manifest:
    """Who may connect to the run's Dask pods: the run's own pods (driver, scheduler,
    workers: any port, workers listen on random ones), and the dashboard port from the
    namespaces `settings.dashboard_namespaces` (the Dask controller's, by the chart's
    default). Everything else is dropped where the network enforces NetworkPolicy; mutual
    TLS refuses it either way."""
    own_pods = {"podSelector": {"matchLabels": {LABEL_RUN: run.name}}}
    ingress: list[dict[str, Any]] = [{"from": [own_pods]}]
    if settings.dashboard_namespaces:
        ingress.append({
            "from": [
                {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}
                for namespace in settings.dashboard_namespaces
            ],
            "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}],
        })  # fmt: skip
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(run, network_policy_name(run), "dask"),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_RUN: run.name, LABEL_COMPONENT: "dask"}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def driver_arguments(run: RunSpec, settings: OperatorSettings) -> list[str]:
    """Arguments of the driver: the ``pulse-train`` flags it passes through."""
    return cli_arguments(run, scheduler_address(run, settings))


def pod_failure_policy() -> dict[str, Any]:
    """What a failed driver pod costs: nothing when it was disrupted, the run when it cannot
    succeed.

    A pod the cluster took away (eviction, preemption, node drain: the DisruptionTarget
    condition) does not count against backoffLimit; a driver that exits EXIT_DO_NOT_RETRY
    (the pipeline's error is a bad input) fails the Job at once; any other failure is a
    retry, resumed from checkpoints.
    """
    disrupted = [{"type": "DisruptionTarget", "status": "True"}]
    do_not_retry = {"containerName": "driver", "operator": "In", "values": [EXIT_DO_NOT_RETRY]}
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": disrupted},
            {"action": "FailJob", "onExitCodes": do_not_retry},
        ]
    }


def build_driver_job(run: RunSpec, settings: OperatorSettings) -> Manifest:
    """The batch/v1 Job whose pod runs the driver; retries, deadline and suspend are the Job's."""
    container: dict[str, Any] = {
        "name": "driver",
        "image": run.image or settings.image,
        "command": [*INIT, "python", "-m", "trainingrun_operator.driver"],
        "args": driver_arguments(run, settings),
        "env": [
            {"name": ENV_RUN_NAME, "value": run.name},
            {
                "name": ENV_RUN_NAMESPACE,
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            *_output_credentials(run),
        ],
        "resources": settings.default_resources,
        # The driver leaves the pipeline's one-line error in the default termination message
        # file; should it die before it can, the end of its log is the message instead.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    env_from = _shared_credentials(run)
    if env_from:
        container["envFrom"] = env_from
    pod = _pod_spec(
        run,
        settings,
        container,
        restartPolicy="Never",
        serviceAccountName=driver_service_account(run),
    )
    # The driver patches its TrainingRun's status, so it (alone) gets an API token.
    pod["automountServiceAccountToken"] = True
    job_spec: dict[str, Any] = {
        "backoffLimit": run.backoff_limit,
        "podFailurePolicy": pod_failure_policy(),
        "suspend": run.suspend,
        "template": {"metadata": {"labels": labels(run, "driver")}, "spec": pod},
    }
    if run.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = run.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(run, job_name(run), "driver"),
        "spec": job_spec,
    }
