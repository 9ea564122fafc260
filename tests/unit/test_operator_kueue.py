"""The Kueue route's pure half: the Workload a run asks for, what its status means for the run,
the actions that keep the two in step, and where admitted pods are placed.

Workload statuses here are written the way Kueue v0.17 writes them (condition types and
reasons of sigs.k8s.io/kueue/apis/kueue/v1beta2); the k8s tier checks the same route
against the real Kueue controller.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from trainingrun_operator import kueue
from trainingrun_operator.children import Child, Pods
from trainingrun_operator.reconcile import Action, Observed, observe
from trainingrun_operator.settings import OperatorSettings
from trainingrun_operator.spec import RunSpec
from trainingrun_operator.workload import build_dask_cluster, build_driver_job

from .test_operator_reconcile import NOW, WORKING, cluster, job, run_body
from .test_operator_reconcile import outcome_of as unqueued_outcome_of

pytestmark = pytest.mark.unit

QUEUE = "team-queue"


def labelled(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A run that asks for the LocalQueue QUEUE."""
    body = run_body(status, **spec)
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": QUEUE}
    return body


def condition(kind: str, true: bool, reason: str, message: str = "") -> dict[str, Any]:
    """A Workload condition."""
    return {
        "type": kind,
        "status": "True" if true else "False",
        "reason": reason,
        "message": message or reason,
        "lastTransitionTime": "2026-01-01T11:00:00Z",
    }


def workload(
    *conditions: dict[str, Any],
    reserved: bool = False,
    active: bool = True,
    flavors: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Workload of the run with `conditions` (and an admission when `reserved`)."""
    status: dict[str, Any] = {"conditions": list(conditions)}
    if reserved:
        assignments = [
            {
                "name": name,
                "flavors": flavors or {"cpu": "default", "memory": "default"},
                "count": 1,
            }
            for name in ("driver", "scheduler", "workers")
        ]
        status["admission"] = {"clusterQueue": "team-cq", "podSetAssignments": assignments}
    return {
        "metadata": {"name": "trainingrun-run", "generation": 1, "resourceVersion": "7"},
        "spec": {"active": active},
        "status": status,
    }


PENDING_QUOTA = condition(
    "QuotaReserved",
    False,
    "Pending",
    "couldn't assign flavors to pod set workers: insufficient unused quota",
)
ADMITTED = (
    condition("QuotaReserved", True, "QuotaReserved"),
    condition("Admitted", True, "Admitted"),
)
PREEMPTED = (
    condition("QuotaReserved", True, "QuotaReserved"),
    condition("Admitted", True, "Admitted"),
    condition("Evicted", True, "Preempted", "Preempted to accommodate a workload (UID: x)"),
)


def outcome_of(
    body: dict[str, Any], job_: Any, cluster_: Any, state: kueue.QueueState, pods: Pods = WORKING
) -> Any:
    """observe() of a run under Kueue."""
    return unqueued_outcome_of(body, job_, cluster_, pods, queue=state)


def test_the_workload_has_one_pod_set_per_role_with_the_pods_the_run_would_create() -> None:
    """driver 1, scheduler 1, workers N, with the requests of the real pod templates."""
    run = RunSpec.from_body(labelled(dask={"workers": 3}))
    settings = OperatorSettings(cpu="250m", memory="1Gi")
    built = kueue.build_workload(run, settings, QUEUE, "high", 1000)
    spec = built["spec"]
    assert built["apiVersion"] == "kueue.x-k8s.io/v1beta2" and built["kind"] == "Workload"
    assert spec["queueName"] == QUEUE and spec["active"] is True
    assert [(p["name"], p["count"]) for p in spec["podSets"]] == [
        ("driver", 1),
        ("scheduler", 1),
        ("workers", 3),
    ]
    for pod_set in spec["podSets"]:
        requests = pod_set["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert requests == {"cpu": "250m", "memory": "1Gi"}
    assert spec["priorityClassRef"] == {
        "group": "kueue.x-k8s.io",
        "kind": "WorkloadPriorityClass",
        "name": "high",
    }
    assert spec["priority"] == 1000
    owner = built["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("TrainingRun", "u", True)


def test_a_new_labelled_run_creates_only_its_workload_and_is_queued() -> None:
    """Nothing of the run is made before Kueue admits it: no Dask cluster, no Job."""
    outcome = outcome_of(labelled(), None, None, kueue.QueueState(QUEUE, None))
    assert outcome.actions == (Action.CREATE_WORKLOAD,)
    assert outcome.status["phase"] == "Queued"
    conditions = {c["type"]: (c["status"], c["reason"]) for c in outcome.status["conditions"]}
    assert conditions["Admitted"] == ("False", "CreatingWorkload")
    assert conditions["Reconciling"][0] == "True"


def test_a_waiting_run_shows_kueues_reason_and_message() -> None:
    """Kueue's 'couldn't assign flavors' line is the run's message, its reason the reason."""
    state = kueue.QueueState(QUEUE, workload(PENDING_QUOTA))
    outcome = outcome_of(labelled(), None, None, state)
    assert outcome.actions == ()
    assert outcome.status["phase"] == "Queued"
    assert outcome.status["message"] == (
        f"queued in LocalQueue {QUEUE}: couldn't assign flavors to pod set workers: "
        "insufficient unused quota"
    )
    assert {c["reason"] for c in outcome.status["conditions"]} == {"Pending"}


def test_an_admitted_run_starts_as_any_run_does_without_the_start_queue() -> None:
    """Admitted: the Dask cluster is created, Admitted=True; no wait for other runs."""
    outcome = outcome_of(
        labelled(), None, None, kueue.QueueState(QUEUE, workload(*ADMITTED, reserved=True)), Pods()
    )
    assert outcome.actions == (Action.CREATE_CLUSTER,)
    assert outcome.status["phase"] == "Pending"
    conditions = {c["type"]: c["status"] for c in outcome.status["conditions"]}
    assert conditions["Admitted"] == "True"


def test_a_preempted_run_is_stopped_then_its_quota_handed_back() -> None:
    """Evicted: driver suspended and cluster deleted first; only once both are gone is the
    admission cleared (what Kueue's job framework does), so quota never covers live pods twice.
    """
    running = labelled({"phase": "Running"})
    state = kueue.QueueState(QUEUE, workload(*PREEMPTED, reserved=True))
    first = outcome_of(running, job(active=1, ready=1), cluster(), state)
    assert first.status["phase"] == "Queued"
    assert first.status["message"].startswith("evicted by Kueue: Preempted to accommodate")
    assert set(first.actions) == {Action.SUSPEND_JOB, Action.DELETE_CLUSTER}
    stopping = outcome_of(labelled(first.status), job(suspend=True, active=1), None, state)
    assert stopping.actions == ()
    stopped = outcome_of(labelled(first.status), job(suspend=True, active=0), None, state)
    assert stopped.actions == (Action.RELEASE_WORKLOAD,)


def test_the_release_patch_clears_the_admission_as_kueue_expects() -> None:
    """QuotaReserved False/Pending, Admitted False, Requeued True after a preemption, the
    admission removed, and the resourceVersion read (a concurrent change fails the patch).
    """
    patch = kueue.release_patch(workload(*PREEMPTED, reserved=True), NOW)
    assert patch["metadata"] == {"resourceVersion": "7"}
    assert patch["status"]["admission"] is None
    conditions = {c["type"]: (c["status"], c["reason"]) for c in patch["status"]["conditions"]}
    assert conditions == {
        "QuotaReserved": ("False", "Pending"),
        "Admitted": ("False", "NoReservation"),
        "Evicted": ("True", "Preempted"),
        "Requeued": ("True", "Preempted"),
    }
    deactivated = workload(condition("Evicted", True, "Deactivated"), reserved=True)
    requeued = next(
        c
        for c in kueue.release_patch(deactivated, NOW)["status"]["conditions"]
        if c["type"] == "Requeued"
    )
    assert requeued["status"] == "False"


def test_a_readmitted_run_recreates_its_cluster_and_resumes_its_suspended_driver() -> None:
    """After re-admission the cluster comes back and the suspended Job is resumed (the
    pipeline resumes from its checkpoints in the run's output)."""
    queued = labelled({"phase": "Queued"})
    state = kueue.QueueState(QUEUE, workload(*ADMITTED, reserved=True))
    assert outcome_of(queued, job(suspend=True), None, state, Pods()).actions == (
        Action.CREATE_CLUSTER,
    )
    resumed = outcome_of(queued, job(suspend=True), cluster(), state)
    assert resumed.actions == (Action.RESUME_JOB,)
    assert resumed.status["phase"] == "Provisioning"


def test_a_finished_run_marks_its_workload_finished_once() -> None:
    """Succeeded: Finished=True on the Workload (Kueue frees the quota), then nothing more."""
    state = kueue.QueueState(QUEUE, workload(*ADMITTED, reserved=True))
    done = outcome_of(
        labelled({"phase": "Running"}), job(conditions={"Complete": "Completed"}), None, state
    )
    assert done.status["phase"] == "Succeeded"
    assert Action.FINISH_WORKLOAD in done.actions
    patch = kueue.finish_patch(state.workload or {}, "Succeeded", "the driver finished", NOW)
    finished = next(c for c in patch["status"]["conditions"] if c["type"] == "Finished")
    assert (finished["status"], finished["reason"]) == ("True", "Succeeded")
    marked = kueue.QueueState(
        QUEUE, workload(*ADMITTED, condition("Finished", True, "Succeeded"), reserved=True)
    )
    again = outcome_of(
        labelled(done.status), job(conditions={"Complete": "Completed"}), None, marked
    )
    assert again.actions == ()


def test_suspend_deactivates_the_workload_and_resume_activates_it() -> None:
    """spec.suspend true: spec.active false (Kueue evicts and frees the quota); false: back."""
    state = kueue.QueueState(QUEUE, workload(*ADMITTED, reserved=True))
    suspended = outcome_of(labelled(suspend=True), job(active=1), cluster(), state)
    assert suspended.status["phase"] == "Suspended"
    assert Action.ACTIVATE_WORKLOAD in suspended.actions
    inactive = kueue.QueueState(QUEUE, workload(PENDING_QUOTA, active=False))
    assert Action.ACTIVATE_WORKLOAD in outcome_of(labelled(), None, None, inactive).actions


def test_a_missing_priority_class_keeps_the_run_from_being_queued() -> None:
    """No Workload with an unknown priority: the run says which class to create."""
    state = kueue.QueueState(QUEUE, None, priority_class="urgent", priority=None)
    outcome = outcome_of(labelled(), None, None, state)
    assert outcome.actions == ()
    assert outcome.status["phase"] == "Queued"
    assert "WorkloadPriorityClass urgent" in outcome.status["message"]


def test_admitted_flavors_place_each_pod_set() -> None:
    """nodeLabels and tolerations of the assigned flavors, then admission-check podSetUpdates."""
    admitted = workload(*ADMITTED, reserved=True, flavors={"cpu": "spot", "memory": "spot"})
    admitted["status"]["admissionChecks"] = [
        {
            "name": "prov",
            "state": "Ready",
            "podSetUpdates": [{"name": "workers", "nodeSelector": {"pool": "b"}}],
        }
    ]
    taint = {"key": "spot", "operator": "Exists", "effect": "NoSchedule"}
    flavors = {"spot": {"spec": {"nodeLabels": {"tier": "spot"}, "tolerations": [taint]}}}
    placed = kueue.placements(admitted, flavors)
    assert placed["driver"] == kueue.Placement({"tier": "spot"}, (taint,))
    assert placed["workers"] == kueue.Placement({"tier": "spot", "pool": "b"}, (taint,))
    run = RunSpec.from_body(labelled(nodeSelector={"zone": "a"}))
    built = kueue.place_cluster(build_dask_cluster(run, OperatorSettings()), placed)
    worker = built["spec"]["worker"]["spec"]
    assert worker["nodeSelector"] == {"zone": "a", "tier": "spot", "pool": "b"}
    assert worker["tolerations"] == [taint]
    driver = kueue.place_job(build_driver_job(run, OperatorSettings()), placed)
    assert driver["spec"]["template"]["spec"]["nodeSelector"] == {"zone": "a", "tier": "spot"}


def test_an_unlabelled_run_is_untouched_by_the_route() -> None:
    """Without the label: no Workload, the usual start (the route is invisible)."""
    assert kueue.queue_name(run_body()) is None
    now = datetime.datetime.now(datetime.UTC)
    run = RunSpec.from_body(run_body())
    observed = Observed(
        Child("Job", "run-driver", None, "u"), Child("DaskCluster", "run-dask", None, "u"), Pods()
    )
    assert observe(run_body(), run, observed, now).actions == (Action.CREATE_CLUSTER,)


def test_the_route_is_off_unless_asked_for_and_a_bad_value_is_named() -> None:
    """PULSE_OPERATOR_KUEUE=true turns it on; anything but true/false is refused by name."""
    from trainingrun_operator.exceptions import SettingsError

    assert OperatorSettings.from_env({}).kueue is False
    assert OperatorSettings.from_env({"PULSE_OPERATOR_KUEUE": "True"}).kueue is True
    with pytest.raises(SettingsError, match="PULSE_OPERATOR_KUEUE='yes': expected true or false"):
        OperatorSettings.from_env({"PULSE_OPERATOR_KUEUE": "yes"})


def test_the_kueue_role_grants_only_what_the_route_uses() -> None:
    """Workloads without delete (the garbage collector deletes them), status patches, and
    read-only flavors and priority classes; nothing else of Kueue's and no wildcard."""
    from trainingrun_operator.rbac import build_kueue_rbac

    role, binding = build_kueue_rbac("pulse-system")
    granted = {
        (res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]
    }
    assert granted == {
        *{("workloads", v) for v in ("get", "list", "watch", "create", "patch")},
        ("workloads/status", "get"),
        ("workloads/status", "patch"),
        ("resourceflavors", "get"),
        ("workloadpriorityclasses", "get"),
    }
    assert {g for rule in role["rules"] for g in rule["apiGroups"]} == {"kueue.x-k8s.io"}
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == "pulse-operator-kueue"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pulse-operator", "namespace": "pulse-system"}
    ]
