"""The real operator and the real dask-kubernetes controller drive TrainingRuns through their lives.

Each controller runs as a subprocess under the ServiceAccount RBAC of manifests/base; the
test plays kubelet (pod phases) and, where noted, the driver (status patches made with the
driver ServiceAccount's own token).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import OperatorProcess
from .controlplane import ControlPlane, KubectlError
from .kubelet import dask_cluster, eventually, get, items, job_pods, set_phase
from .test_operator_crd import training_run

pytestmark = pytest.mark.k8s

WAIT_S = 60.0


def status(plane: ControlPlane, namespace: str, name: str = "run") -> dict[str, Any]:
    """The TrainingRun's status (empty while it has none)."""
    run = get(plane, "trainingrun", name, namespace) or {}
    found: dict[str, Any] = run.get("status", {})
    return found


def wait_phase(
    plane: ControlPlane, namespace: str, phase: str, name: str = "run"
) -> dict[str, Any]:
    """Wait until the run shows `phase`; return its status."""

    def in_phase() -> dict[str, Any] | None:
        """The status once it shows `phase`."""
        current = status(plane, namespace, name)
        return current if current.get("phase") == phase else None

    return eventually(in_phase, WAIT_S, f"TrainingRun {name} to be {phase}")


def condition(run_status: dict[str, Any], kind: str) -> dict[str, Any]:
    """The condition of type `kind`."""
    return next(c for c in run_status["conditions"] if c["type"] == kind)


def dask_pods(plane: ControlPlane, namespace: str, component: str, name: str = "run") -> list[Any]:
    """The live scheduler or worker pods of the run's DaskCluster."""
    cluster = dask_cluster(plane, namespace, name)
    selector = f"dask.org/cluster-name={cluster},dask.org/component={component}"
    pods = items(plane, "pods", namespace, selector)
    return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]


def start_dask(plane: ControlPlane, namespace: str, name: str = "run") -> None:
    """Wait for the run's DaskCluster and all its pods, and report them Running."""
    cluster_name = dask_cluster(plane, namespace, name)
    cluster = eventually(
        lambda: get(plane, "daskcluster", cluster_name, namespace), WAIT_S, "DaskCluster"
    )
    replicas = cluster["spec"]["worker"]["replicas"]
    scheduler = eventually(
        lambda: dask_pods(plane, namespace, "scheduler", name), WAIT_S, "the scheduler pod"
    )
    workers = eventually(
        lambda: (found := dask_pods(plane, namespace, "worker", name)) and len(found) >= replicas
        and found,
        WAIT_S,
        "the Dask controller's workers",
    )  # fmt: skip
    for pod in [*scheduler, *workers]:
        set_phase(plane, pod, "Running")


def wait_workload(plane: ControlPlane, namespace: str, name: str = "run") -> dict[str, Any]:
    """Run the run's Dask pods, then wait for its driver pod (made only once Dask runs)."""
    start_dask(plane, namespace, name)
    pods = eventually(lambda: job_pods(plane, namespace, f"{name}-driver"), WAIT_S, "driver pod")
    return pods[-1]


def phases(plane: ControlPlane, namespace: str, name: str = "run") -> list[str]:
    """The phases the run passed, from its transition Events, oldest first."""
    known = {"Pending", "Provisioning", "Running", "Suspended", "Succeeded", "Failed"}
    return [reason for reason in events(plane, namespace, name) if reason in known]


def run_events(
    plane: ControlPlane, namespace: str, name: str = "run", uid: str = ""
) -> list[dict[str, Any]]:
    """The Events posted on the run (on the one with `uid`, when given), oldest first."""
    selector = f"involvedObject.kind=TrainingRun,involvedObject.name={name}"
    if uid:
        selector += f",involvedObject.uid={uid}"
    listed = plane.kubectl_json("get", "events", f"--namespace={namespace}",
                                f"--field-selector={selector}")  # fmt: skip
    # resourceVersion orders writes; the timestamps have one-second resolution.
    return sorted(listed["items"], key=lambda e: int(e["metadata"]["resourceVersion"]))


def events(plane: ControlPlane, namespace: str, name: str = "run") -> list[str]:
    """Reasons of the Events posted on the run, oldest first."""
    return [event["reason"] for event in run_events(plane, namespace, name)]


def patch_status_as_driver(plane: ControlPlane, namespace: str, patch: dict[str, Any]) -> None:
    """Patch the run's status with the driver ServiceAccount's token, as the driver pod does."""
    kubeconfig = plane.kubeconfig_for_service_account(namespace, "run-driver")
    plane.kubectl(
        "patch", "trainingrun", "run", f"--namespace={namespace}", "--subresource=status",
        "--type=merge", f"--patch={json.dumps({'status': patch})}", kubeconfig=kubeconfig,
    )  # fmt: skip


def wait_cluster_deleted(plane: ControlPlane, namespace: str) -> None:
    """Wait until the run's DaskCluster is gone."""
    name = dask_cluster(plane, namespace)
    eventually(lambda: get(plane, "daskcluster", name, namespace) is None, WAIT_S,
               "cluster deletion")  # fmt: skip


def test_happy_path_to_succeeded(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """Pending -> Provisioning -> Running -> Succeeded, with progress and results; cluster gone."""
    plane = pulse_install
    created = plane.apply(training_run(namespace, variables=["a", "b"], startDate="2001-01-01",
                                       endDate="2011-01-01", batchSizeDays=365))  # fmt: skip
    pod = wait_workload(plane, namespace)

    cluster = get(plane, "daskcluster", dask_cluster(plane, namespace), namespace)
    job = get(plane, "job", "run-driver", namespace)
    assert cluster is not None and job is not None
    for child in (cluster, job):
        owner = child["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "TrainingRun",
            created["metadata"]["uid"],
            True,
        )
    driver = job["spec"]["template"]["spec"]["containers"][0]
    assert driver["command"] == ["tini", "--", "python", "-m", "trainingrun_operator.driver"]
    scheduler = f"{dask_cluster(plane, namespace)}-scheduler.{namespace}"
    assert f"--dask-scheduler-address=tls://{scheduler}" in " ".join(
        driver["args"]
    )
    assert "--variables=a,b" in driver["args"]
    assert wait_phase(plane, namespace, "Provisioning")["observedGeneration"] == 1

    set_phase(plane, pod, "Running")
    running = wait_phase(plane, namespace, "Running")
    assert condition(running, "Running")["status"] == "True"
    assert running["attempts"] == 1

    progress = {"stage": "statistics", "batchesCompleted": 4, "batchesTotal": 10, "summary": "4/10"}
    patch_status_as_driver(plane, namespace, {"progress": progress})
    progress.update(stage="evaluation", batchesCompleted=10, summary="10/10")
    results = {"uri": "s3://results/run/results.json", "meanSkillVsPersistence": 0.25,
               "meanDirectionalAccuracy": 0.6, "rulesValidated": 2, "rulesTotal": 3}  # fmt: skip
    patch_status_as_driver(plane, namespace, {"progress": progress, "results": results})
    set_phase(plane, pod, "Succeeded")

    done = wait_phase(plane, namespace, "Succeeded")
    assert done["progress"]["batchesCompleted"] == 10
    assert done["results"]["meanSkillVsPersistence"] == 0.25
    assert condition(done, "Complete")["status"] == "True"
    assert condition(done, "Running")["status"] == "False"
    assert "completionTime" in done and "startTime" in done
    wait_cluster_deleted(plane, namespace)
    health = json.loads(urllib.request.urlopen(pulse_operator.liveness_url, timeout=5).read())
    assert health["reconcile"]["passes"] >= 3 and health["reconcile"]["errors"] == 0
    table = plane.kubectl("get", "tr", "run", f"--namespace={namespace}").stdout
    assert table.split("\n")[1].split()[1:4] == ["Succeeded", "10/10", "0.25"]
    assert {"Provisioning", "Running", "Succeeded", "DeleteCluster"} <= set(
        events(plane, namespace)
    )
    # Forward only: no Provisioning again when the driver's pod stops before the Job completes.
    assert phases(plane, namespace) == ["Pending", "Provisioning", "Running", "Succeeded"]


def test_driver_may_only_patch_run_status(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """The driver's ServiceAccount can patch the status but not the spec, nor read Secrets."""
    plane = pulse_install
    plane.apply(training_run(namespace))
    wait_workload(plane, namespace)
    kubeconfig = plane.kubeconfig_for_service_account(namespace, "run-driver")
    with pytest.raises(KubectlError, match=r'cannot (get|patch) resource "trainingruns"'):
        plane.kubectl(
            "patch", "trainingrun", "run", f"--namespace={namespace}", "--type=merge",
            '--patch={"spec": {"suspend": true}}', kubeconfig=kubeconfig,
        )  # fmt: skip
    with pytest.raises(KubectlError, match="cannot list resource"):
        plane.kubectl("get", "secrets", f"--namespace={namespace}", kubeconfig=kubeconfig)


def test_a_driver_cannot_write_another_runs_status(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """Two runs in one namespace: each driver's own token may patch its run's status and is
    Forbidden on the other's; the grant (ServiceAccount, Role, binding) goes with its run."""
    plane = pulse_install
    for name in ("a", "b"):
        plane.apply(training_run(namespace, name))
        # Runs start one at a time: b's cluster comes once a's driver runs.
        set_phase(plane, wait_workload(plane, namespace, name), "Running")
    as_a = plane.kubeconfig_for_service_account(namespace, "a-driver")
    as_b = plane.kubeconfig_for_service_account(namespace, "b-driver")

    def patch(run: str, kubeconfig: Path) -> None:
        plane.kubectl(
            "patch", "trainingrun", run, f"--namespace={namespace}", "--subresource=status",
            "--type=merge", '--patch={"status": {"message": "forged"}}', kubeconfig=kubeconfig,
        )  # fmt: skip

    for own, other, kubeconfig in (("a", "b", as_a), ("b", "a", as_b)):
        patch(own, kubeconfig)
        # kubectl reads the object before it patches: the read is refused already.
        forbidden = (rf'forbidden: .*:{own}-driver" cannot (get|patch) resource '
                     rf'"trainingruns/status" .* in the namespace "{namespace}"')  # fmt: skip
        with pytest.raises(KubectlError, match=forbidden):
            patch(other, kubeconfig)
    # The same answer from the authorizer itself (a SubjectAccessReview, as admin).
    can_i = plane.kubectl(
        "auth", "can-i", "patch", "trainingruns/b", "--subresource=status",
        f"--namespace={namespace}", f"--as=system:serviceaccount:{namespace}:a-driver",
        check=False,
    )  # fmt: skip
    assert can_i.stdout.strip() == "no"
    plane.kubectl("delete", "trainingrun", "a", f"--namespace={namespace}", "--wait=true")
    eventually(
        lambda: not plane.kubectl(
            "get", "serviceaccount,role,rolebinding", f"--namespace={namespace}",
            "--selector=pulse.dev/trainingrun=a", "--output=name",
        ).stdout.strip(),
        WAIT_S, "run a's driver identity to be collected",
    )  # fmt: skip


def test_every_run_pod_is_admitted_under_pod_security_restricted(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """In a namespace that enforces Pod Security `restricted`, the API server admits the
    scheduler, worker and driver pods (with the run's TLS Secret volume) unchanged."""
    plane = pulse_install
    plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    plane.apply(training_run(namespace))
    driver = wait_workload(plane, namespace)
    assert driver["spec"]["securityContext"]["runAsNonRoot"] is True
    # The run's TLS Secret and NetworkPolicy came with its cluster, owned by the run.
    from trainingrun_operator.spec import RunSpec
    from trainingrun_operator.workload import network_policy_name, tls_secret_name

    run = RunSpec.from_body(get(plane, "trainingrun", "run", namespace))
    named = (("secret", tls_secret_name(run)), ("networkpolicy", network_policy_name(run)))
    for kind, name in named:
        found = get(plane, kind, name, namespace)
        assert found and found["metadata"]["ownerReferences"][0]["uid"] == run.uid, kind
    policy = get(plane, "networkpolicy", network_policy_name(run), namespace)
    selector = policy["spec"]["podSelector"]
    for pod in dask_pods(plane, namespace, "scheduler") + dask_pods(plane, namespace, "worker"):
        assert pod["metadata"]["labels"].items() >= selector["matchLabels"].items()
    assert (
        len(dask_pods(plane, namespace, "scheduler") + dask_pods(plane, namespace, "worker")) >= 2
    )
    # The enforcement is real: a pod that breaks `restricted` is refused in this namespace.
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}  # fmt: skip
    with pytest.raises(KubectlError, match='violates PodSecurity "restricted:latest"'):
        plane.create(bare)


def owned_objects(plane: ControlPlane, namespace: str) -> list[str]:
    """Names of every object the run led to: Job, pods, DaskCluster and its parts."""
    kinds = "jobs,pods,daskclusters,daskworkergroups,deployments,services"
    listed = plane.kubectl("get", kinds, f"--namespace={namespace}", "--output=name").stdout
    return listed.split()


def test_driver_failures_are_retried_up_to_backoff_limit_then_fail(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """Failed driver pods are replaced (a retry resumes from checkpoints) up to backoffLimit."""
    plane = pulse_install
    plane.apply(training_run(namespace, backoffLimit=1))
    first = wait_workload(plane, namespace)
    args = first["spec"]["containers"][0]["args"]
    assert "--checkpoint-dir=s3://results/run/checkpoints" in args
    set_phase(plane, first, "Failed")

    def retry_pod() -> dict[str, Any] | None:
        """The Job's second pod, once it exists."""
        pods = job_pods(plane, namespace, "run-driver")
        return pods[-1] if len(pods) == 2 else None

    second = eventually(retry_pod, WAIT_S, "the retry's pod")
    assert second["spec"]["containers"][0]["args"] == args
    set_phase(plane, second, "Running")
    assert wait_phase(plane, namespace, "Running")["attempts"] == 2
    set_phase(plane, second, "Failed")

    failed = wait_phase(plane, namespace, "Failed")
    assert condition(failed, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "backoff limit" in failed["message"]
    wait_cluster_deleted(plane, namespace)
    assert "Failed" in events(plane, namespace)


def test_deadline_exceeded_fails_the_run(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """A run active longer than activeDeadlineSeconds fails with reason DeadlineExceeded."""
    plane = pulse_install
    plane.apply(training_run(namespace, activeDeadlineSeconds=3))
    set_phase(plane, wait_workload(plane, namespace), "Running")
    failed = wait_phase(plane, namespace, "Failed")
    assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"
    wait_cluster_deleted(plane, namespace)


def test_suspend_frees_the_cluster_and_resume_continues(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """Suspending deletes the Dask cluster and the driver pod; resuming recreates both."""
    plane = pulse_install
    plane.apply(training_run(namespace))
    set_phase(plane, wait_workload(plane, namespace), "Running")
    wait_phase(plane, namespace, "Running")

    plane.apply(training_run(namespace, suspend=True))
    suspended = wait_phase(plane, namespace, "Suspended")
    assert condition(suspended, "Suspended")["status"] == "True"
    assert condition(suspended, "Suspended")["observedGeneration"] == 2
    wait_cluster_deleted(plane, namespace)
    eventually(lambda: not job_pods(plane, namespace, "run-driver"), WAIT_S, "driver pod deletion")

    plane.apply(training_run(namespace, suspend=False))
    pod = wait_workload(plane, namespace)
    wait_phase(plane, namespace, "Provisioning")
    set_phase(plane, pod, "Running")
    wait_phase(plane, namespace, "Running")
    set_phase(plane, pod, "Succeeded")
    wait_phase(plane, namespace, "Succeeded")
    assert {"Suspended", "SuspendJob", "ResumeJob"} <= set(events(plane, namespace))


def test_operator_killed_and_restarted_mid_run(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """Runs created or advanced while the operator is down are picked up where they are."""
    plane = pulse_install
    pulse_operator.stop(kill=True)
    plane.apply(training_run(namespace))
    pulse_operator.start()
    pod = wait_workload(plane, namespace)
    wait_phase(plane, namespace, "Provisioning")

    pulse_operator.stop(kill=True)
    set_phase(plane, pod, "Running")
    pulse_operator.start()
    wait_phase(plane, namespace, "Running")

    pulse_operator.stop(kill=True)
    set_phase(plane, pod, "Succeeded")
    pulse_operator.start()
    done = wait_phase(plane, namespace, "Succeeded")
    assert done["attempts"] == 1
    wait_cluster_deleted(plane, namespace)
    assert len(job_pods(plane, namespace, "run-driver")) == 1


def test_deleting_a_run_mid_run_deletes_everything_it_owns(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """No finalizer: the run goes at once, even with the operator down; GC removes its children."""
    plane = pulse_install
    plane.apply(training_run(namespace))
    set_phase(plane, wait_workload(plane, namespace), "Running")
    wait_phase(plane, namespace, "Running")
    assert len(owned_objects(plane, namespace)) >= 8
    pulse_operator.stop(kill=True)

    plane.kubectl("delete", "trainingrun", "run", f"--namespace={namespace}", "--timeout=20s")
    eventually(lambda: not owned_objects(plane, namespace), WAIT_S, "garbage collection")


def test_finished_runs_are_deleted_after_their_ttl(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """ttlSecondsAfterFinished deletes the run and, through GC, all it owned."""
    plane = pulse_install
    plane.apply(training_run(namespace, ttlSecondsAfterFinished=3))
    pod = wait_workload(plane, namespace)
    set_phase(plane, pod, "Succeeded")
    wait_phase(plane, namespace, "Succeeded")
    eventually(lambda: get(plane, "trainingrun", "run", namespace) is None, WAIT_S, "TTL deletion")
    eventually(lambda: not owned_objects(plane, namespace), WAIT_S, "garbage collection")
