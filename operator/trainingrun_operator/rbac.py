"""Pure builders of the least-privilege RBAC of the operator, the driver and the Dask controller.

Rules are grouped and commented by purpose: "framework" rules are what kopf itself needs,
"application" rules what the reconcile loop (or the driver) does. A missing rule fails
the k8s tests, which run each process under exactly these grants.
"""

from __future__ import annotations

from typing import Any

from trainingrun_operator.constants import (
    DASK_CONTROLLER_NAME,
    DASK_GROUP,
    GROUP,
    KUEUE_GROUP,
    LEASE_NAME,
    OPERATOR_NAME,
    PLURAL,
)
from trainingrun_operator.objects import Manifest


def _rule(groups: list[str], resources: list[str], verbs: list[str], **extra: Any) -> Manifest:
    """One PolicyRule."""
    return {"apiGroups": groups, "resources": resources, "verbs": verbs, **extra}


def operator_rules() -> list[Manifest]:
    """What the TrainingRun operator may do, cluster-wide."""
    return [
        # Framework: kopf discovers the CRD it serves and the namespaces it watches.
        _rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"]),
        _rule([""], ["namespaces"], ["list", "watch"]),
        # Framework and application: kopf's warnings, and an Event for every phase transition.
        _rule([""], ["events"], ["create"]),
        # Application: watch and resync runs, delete runs past their TTL.
        _rule([GROUP], [PLURAL], ["get", "list", "watch", "delete"]),
        # Application: phase, conditions and attempts.
        _rule([GROUP], [f"{PLURAL}/status"], ["get", "patch"]),
        # Application: the driver Job, watched for its pods' fate; suspend, resume, deadline and
        # retry limit are patches; a Job left by an earlier run of the same name is deleted.
        _rule(["batch"], ["jobs"], ["get", "list", "watch", "create", "patch", "delete"]),
        # Application: the run's Dask cluster, watched; workers scaled (patch) to the spec;
        # deleted when the run ends or is suspended.
        _rule(
            [DASK_GROUP], ["daskclusters"], ["get", "list", "watch", "create", "patch", "delete"]
        ),
        # Application: the run's pods, watched; a starting run waits for its Dask pods and
        # reports why they are not placed, a failed run shows its driver's termination message.
        _rule([""], ["pods"], ["get", "list", "watch"]),
        # Application: each run's driver identity, owned by the run: its ServiceAccount, a
        # Role naming the run alone (driver_rules) and the RoleBinding. RBAC's escalation
        # check lets the operator write only Roles within its own grants (the status rule
        # above), so these verbs cannot hand out more than the operator holds.
        _rule([""], ["serviceaccounts"], ["get", "create"]),
        # Application: each run's Dask TLS Secret (tls.py), owned by the run. Create only:
        # the operator never reads a Secret.
        _rule([""], ["secrets"], ["create"]),
        # Application: each run's NetworkPolicy (only its own pods reach its Dask pods).
        _rule(["networking.k8s.io"], ["networkpolicies"], ["create"]),
        _rule(["rbac.authorization.k8s.io"], ["roles", "rolebindings"], ["get", "create"]),
    ]


def kueue_rules() -> list[Manifest]:
    """What the operator may do with Kueue when the Kueue route is on (chart: kueue.enabled)."""
    return [
        # Application: one Workload per queued run, watched for admission and eviction;
        # spec.active follows spec.suspend; deleted by the garbage collector with the run.
        _rule([KUEUE_GROUP], ["workloads"], ["get", "list", "watch", "create", "patch"]),
        # Application: hand an evicted run's quota back, mark a finished run's Workload Finished.
        _rule([KUEUE_GROUP], ["workloads/status"], ["get", "patch"]),
        # Application: the admitted flavors' node labels and tolerations, a run's priority.
        _rule([KUEUE_GROUP], ["resourceflavors", "workloadpriorityclasses"], ["get"]),
    ]


def operator_lease_rules() -> list[Manifest]:
    """What the operator may do in its own namespace: hold the leader-election Lease."""
    return [
        # Application: the first replica creates the Lease (create cannot be limited by name).
        _rule(["coordination.k8s.io"], ["leases"], ["create"]),
        # Application: read, renew, take over and release this one Lease, no other.
        _rule(["coordination.k8s.io"], ["leases"], ["get", "update"], resourceNames=[LEASE_NAME]),
    ]


def driver_rules(run_name: str) -> list[Manifest]:
    """What the driver of run `run_name` may do: read and patch that run's status, no other's."""
    return [_rule([GROUP], [f"{PLURAL}/status"], ["get", "patch"], resourceNames=[run_name])]


def dask_controller_rules() -> list[Manifest]:
    """The grants of the dask-kubernetes controller (those of its own Helm chart)."""
    return [
        # Framework: kopf discovers CRDs and namespaces.
        _rule(["apiextensions.k8s.io"], ["customresourcedefinitions"], ["list", "watch"]),
        _rule([""], ["namespaces"], ["list", "watch"]),
        # Application: its custom resources.
        _rule(
            [DASK_GROUP],
            [
                "daskclusters",
                "daskworkergroups",
                "daskjobs",
                "daskjobs/status",
                "daskautoscalers",
                "daskworkergroups/scale",
            ],
            ["get", "list", "watch", "patch", "create", "delete"],
        ),
        # Application: the scheduler and worker Deployments, their Service and pods.
        _rule([""], ["pods", "pods/status"], ["*"]),
        _rule([""], ["services", "services/status"], ["*"]),
        _rule(["apps"], ["deployments", "deployments/status"], ["*"]),
        _rule(["", "events.k8s.io"], ["events"], ["*"]),
    ]


def _cluster_role(name: str, rules: list[Manifest]) -> Manifest:
    """A ClusterRole."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    }


def build_service_account(name: str, namespace: str) -> Manifest:
    """A ServiceAccount."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace},
    }


def _subject(name: str, namespace: str) -> Manifest:
    """A ServiceAccount subject."""
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


def _role_ref(name: str, kind: str = "ClusterRole") -> Manifest:
    """A reference to a ClusterRole (or a Role of the binding's namespace)."""
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}


def build_cluster_role_binding(name: str, namespace: str) -> Manifest:
    """Bind the ClusterRole `name` to the ServiceAccount `namespace/name`, cluster-wide."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": _role_ref(name),
        "subjects": [_subject(name, namespace)],
    }


def build_operator_rbac(namespace: str, name: str = OPERATOR_NAME) -> list[Manifest]:
    """ServiceAccount, ClusterRole and binding of the TrainingRun operator; its Lease Role."""
    return [
        build_service_account(name, namespace),
        _cluster_role(name, operator_rules()),
        build_cluster_role_binding(name, namespace),
        *build_operator_lease_rbac(namespace, name),
    ]


def build_kueue_rbac(namespace: str, name: str = OPERATOR_NAME) -> list[Manifest]:
    """ClusterRole `<name>-kueue` (kueue_rules()) bound to the operator's ServiceAccount."""
    role = f"{name}-kueue"
    binding = build_cluster_role_binding(role, namespace)
    binding["subjects"] = [_subject(name, namespace)]
    return [_cluster_role(role, kueue_rules()), binding]


def build_operator_lease_rbac(namespace: str, name: str = OPERATOR_NAME) -> list[Manifest]:
    """A Role on the leader-election Lease in the operator's namespace, bound to its account."""
    metadata = {"name": name, "namespace": namespace}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": metadata,
         "rules": operator_lease_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": metadata,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [_subject(name, namespace)]},
    ]  # fmt: skip


def build_dask_controller_rbac(namespace: str, name: str = DASK_CONTROLLER_NAME) -> list[Manifest]:
    """ServiceAccount, ClusterRole and binding of the dask-kubernetes controller."""
    return [
        build_service_account(name, namespace),
        _cluster_role(name, dask_controller_rules()),
        build_cluster_role_binding(name, namespace),
    ]


def build_run_role(name: str, namespace: str, run_name: str) -> Manifest:
    """The Role of one run's driver: `driver_rules(run_name)` in the run's namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": driver_rules(run_name),
    }


def build_run_role_binding(name: str, namespace: str, service_account: str) -> Manifest:
    """Bind the Role `name` to the ServiceAccount `service_account` of the same namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": _role_ref(name, "Role"),
        "subjects": [_subject(service_account, namespace)],
    }
