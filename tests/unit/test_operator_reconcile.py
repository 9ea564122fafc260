"""The pure half of a reconcile pass: from a run and its children to status, actions, Events."""

from __future__ import annotations

import datetime
from typing import Any

from trainingrun_operator import kueue
from trainingrun_operator.children import Child, Pods, read_pods
from trainingrun_operator.driver import pipeline_command, status_patch
from trainingrun_operator.reconcile import Action, Observed, observe
from trainingrun_operator.spec import RunSpec
from trainingrun_operator.start_queue import start_blocker

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def run_body(
    status: dict[str, Any] | None = None, generation: int = 1, uid: str = "u", **spec: Any
) -> dict[str, Any]:
    """A TrainingRun object."""
    return {
        "metadata": {
            "name": "run", "namespace": "team", "uid": uid, "generation": generation,
            "creationTimestamp": "2026-01-01T11:00:00Z",
        },
        "spec": {"output": {"uri": "/out"}, **spec},
        "status": status or {},
    }  # fmt: skip


def owned_by(uid: str, kind: str = "TrainingRun") -> dict[str, Any]:
    """Metadata of a child whose controller is the object `uid`."""
    owner = {"apiVersion": "pulse.dev/v1alpha1", "kind": kind, "name": "run", "uid": uid,
             "controller": True}  # fmt: skip
    return {"name": "x", "uid": f"child-of-{uid}", "ownerReferences": [owner],
            "creationTimestamp": "2026-01-01T11:00:00Z"}  # fmt: skip


def job(suspend: bool = False, owner: str = "u", **status: Any) -> dict[str, Any]:
    """A driver Job with `status`; conditions given as type=reason pairs."""
    conditions = [
        {"type": kind, "status": "True", "reason": reason, "message": f"{reason} happened"}
        for kind, reason in status.pop("conditions", {}).items()
    ]
    return {
        "metadata": owned_by(owner),
        "spec": {"suspend": suspend, "backoffLimit": 2},
        "status": {**status, "conditions": conditions},
    }


def cluster(replicas: int = 2, owner: str = "u") -> dict[str, Any]:
    """A DaskCluster of the run."""
    return {"metadata": owned_by(owner), "spec": {"worker": {"replicas": replicas}}}


WORKING = Pods(scheduler_ready=True, workers_ready=2)


def outcome_of(
    body: dict[str, Any],
    job_: dict[str, Any] | None,
    cluster_: dict[str, Any] | None,
    pods: Pods = WORKING,
    waiting_for: str | None = None,
    now: datetime.datetime = NOW,
    queue: kueue.QueueState | None = None,
) -> Any:
    """observe() for `body` at `now` (`queue`: its place in Kueue, None when not under it)."""
    run = RunSpec.from_body(body)
    observed = Observed(
        Child("Job", "run-driver", job_, run.uid),
        Child("DaskCluster", "run-dask", cluster_, run.uid),
        pods,
        waiting_for,
        queue,
    )
    return observe(body, run, observed, now)


def test_a_new_run_creates_its_dask_cluster_first_and_is_pending() -> None:
    """No children yet: create the cluster only; the driver waits until it can work."""
    outcome = outcome_of(run_body(), None, None, Pods())
    assert outcome.actions == (Action.CREATE_CLUSTER,)
    assert outcome.status["phase"] == "Pending"
    assert [e.reason for e in outcome.events] == ["Pending", "CreateCluster"]
    conditions = {c["type"]: c["status"] for c in outcome.status["conditions"]}
    assert conditions["Admitted"] == "True"


def test_a_busy_cluster_keeps_the_run_pending_with_the_schedulers_reason() -> None:
    """Unplaced Dask pods: no driver Job (no retry spent), the reason in status and a Warning."""
    busy = Pods(dask_unschedulable="0/1 nodes are available: 1 Insufficient cpu.")
    created = outcome_of(run_body(), None, None, Pods()).status
    outcome = outcome_of(run_body(created), None, cluster(), busy)
    assert outcome.actions == ()
    assert outcome.status["phase"] == "Pending"
    assert "Insufficient cpu" in outcome.status["message"]
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "Unschedulable")]
    again = outcome_of(run_body(outcome.status), None, cluster(), busy)
    assert again.events == ()


def test_the_driver_starts_once_scheduler_and_min_workers_run() -> None:
    """dask.minWorkers (default: all workers) must run before the driver Job is created."""
    one = Pods(scheduler_ready=True, workers_ready=1)
    assert outcome_of(run_body(), None, cluster(), one).actions == ()
    body = run_body(dask={"workers": 2, "minWorkers": 1})
    started = outcome_of(body, None, cluster(), one)
    assert started.actions == (Action.CREATE_JOB,)
    assert started.status["phase"] == "Provisioning"


def test_runs_start_one_at_a_time_oldest_first() -> None:
    """A run waits while another starts, or while an older one waits; never otherwise."""

    def other(name: str, created: str, **status: Any) -> dict[str, Any]:
        body = run_body(status)
        body["metadata"].update(name=name, uid=name, creationTimestamp=created)
        return body

    me = run_body()  # created 11:00
    admitted = [{"type": "Admitted", "status": "True"}]
    starting = other("a", "2026-01-01T12:00:00Z", phase="Pending", conditions=admitted)
    assert start_blocker(me, [me, starting]) == "team/a"
    running = other("a", "2026-01-01T10:00:00Z", phase="Running", conditions=admitted)
    assert start_blocker(me, [me, running]) is None
    older_queued = other("b", "2026-01-01T10:00:00Z", phase="Pending")
    assert start_blocker(me, [me, older_queued]) == "team/b"
    younger_queued = other("c", "2026-01-01T12:00:00Z", phase="Pending")
    assert start_blocker(me, [me, younger_queued]) is None
    queued = outcome_of(run_body(), None, None, Pods(), waiting_for="team/a")
    assert queued.actions == () and "team/a" in queued.status["message"]


def test_startup_deadline_fails_a_run_that_never_started() -> None:
    """startupDeadlineSeconds bounds the wait; the message keeps the reason of the wait."""
    busy = Pods(dask_unschedulable="0/1 nodes are available: 1 Insufficient cpu.")
    body = run_body({"phase": "Pending"}, startupDeadlineSeconds=7200)  # created 11:00
    assert outcome_of(body, None, cluster(), busy).status["phase"] == "Pending"
    late = NOW + datetime.timedelta(hours=2)
    failed = outcome_of(body, None, cluster(), busy, now=late)
    assert failed.status["phase"] == "Failed"
    assert "Insufficient cpu" in failed.status["message"]
    assert failed.actions == (Action.DELETE_CLUSTER,)


def test_a_ready_driver_pod_means_running() -> None:
    """Job.status.ready >= 1 is the Running phase; nothing to do."""
    outcome = outcome_of(run_body({"phase": "Provisioning"}), job(active=1, ready=1), cluster())
    assert outcome.status["phase"] == "Running"
    assert outcome.actions == ()
    conditions = {c["type"]: c for c in outcome.status["conditions"]}
    assert conditions["Running"]["status"] == "True"
    assert conditions["WorkloadReady"]["status"] == "True"
    assert all(c["observedGeneration"] == 1 for c in conditions.values())


def test_phases_only_move_forward() -> None:
    """Running stays Running while the driver ends or retries; a finished run never restarts."""
    between = outcome_of(run_body({"phase": "Running"}), job(active=0, ready=0), cluster(), Pods())
    assert between.status["phase"] == "Running"
    assert "Pending" not in between.status["message"]
    done = {"phase": "Succeeded", "message": "the driver finished", "completionTime": "x"}
    gone = outcome_of(run_body(done), None, None, Pods())
    assert gone.status["phase"] == "Succeeded" and gone.actions == () and gone.events == ()


def test_a_failed_job_fails_the_run_with_the_pipelines_line_and_drops_the_cluster() -> None:
    """BackoffLimitExceeded is the reason; the driver's termination message is the message."""
    failed = job(failed=3, conditions={"Failed": "BackoffLimitExceeded"})
    pods = Pods(driver_failure="cannot read s3://data/x.csv: NoSuchKey")
    outcome = outcome_of(run_body({"phase": "Running"}), failed, cluster(), pods)
    assert outcome.status["phase"] == "Failed"
    assert outcome.status["message"].startswith("cannot read s3://data/x.csv: NoSuchKey")
    assert outcome.status["attempts"] == 3
    assert outcome.actions == (Action.DELETE_CLUSTER,)
    conditions = {c["type"]: c for c in outcome.status["conditions"]}
    assert conditions["Failed"]["reason"] == "BackoffLimitExceeded"
    assert outcome.events[0].type == "Warning"
    assert outcome.status["completionTime"] == "2026-01-01T12:00:00Z"


def test_the_dashboard_address_leaves_status_with_the_cluster() -> None:
    """A finished or suspended run's cluster is deleted: null (merge patch) drops its address."""
    address = "http://run-dask-u-scheduler.team:8787"
    running = outcome_of(run_body({"phase": "Running"}), job(active=1, ready=1), cluster())
    assert running.status["daskCluster"] == {"name": "run-dask-u", "dashboardAddress": address}
    shown = {"phase": "Running", "daskCluster": running.status["daskCluster"]}
    done = job(succeeded=1, conditions={"Complete": "Completed"})
    succeeded = outcome_of(run_body(shown), done, cluster())
    assert succeeded.status["phase"] == "Succeeded" and succeeded.status["daskCluster"] is None
    suspended = outcome_of(run_body(shown, suspend=True), job(active=1), cluster())
    assert suspended.status["daskCluster"] is None


def test_children_of_an_earlier_run_of_the_same_name_are_deleted_not_read() -> None:
    """A Succeeded Job of a deleted run with this name never makes the new run Succeeded."""
    old_job = job(owner="old", succeeded=1, conditions={"Complete": "Completed"})
    outcome = outcome_of(run_body(), old_job, None, Pods())
    assert outcome.status["phase"] == "Pending"
    assert outcome.status["message"] == (
        "waiting for run-driver of an earlier run of this name to be deleted"
    )
    assert outcome.actions == (Action.DELETE_STALE_JOB,)
    assert "completionTime" not in outcome.status and "startTime" not in outcome.status
    someone_elses = job()
    someone_elses["metadata"]["ownerReferences"] = []
    taken = outcome_of(run_body(), someone_elses, None, Pods())
    assert taken.actions == () and "not owned by this run" in taken.status["message"]


def test_spec_edits_reach_the_children() -> None:
    """dask.workers scales the cluster; activeDeadlineSeconds and backoffLimit patch the Job."""
    body = run_body({"phase": "Running"}, dask={"workers": 3}, backoffLimit=5)
    outcome = outcome_of(body, job(active=1, ready=1), cluster(replicas=2))
    assert outcome.actions == (Action.SCALE_CLUSTER, Action.UPDATE_JOB)


def test_suspend_and_resume_patch_the_job_and_the_cluster_follows() -> None:
    """Suspended: Job suspended, cluster deleted; resumed: cluster first, then the Job."""
    suspended = outcome_of(run_body({"phase": "Running"}, suspend=True), job(active=1), cluster())
    assert suspended.actions == (Action.SUSPEND_JOB, Action.DELETE_CLUSTER)
    assert suspended.status["phase"] == "Suspended"
    resumed = outcome_of(run_body({"phase": "Suspended"}), job(suspend=True), None, Pods())
    assert resumed.actions == (Action.CREATE_CLUSTER,)
    ready = outcome_of(run_body({"phase": "Pending"}), job(suspend=True), cluster())
    assert ready.actions == (Action.RESUME_JOB,)


def test_ttl_deletes_the_run_only_once_expired() -> None:
    """A finished run is deleted ttlSecondsAfterFinished after its completion time."""
    done = job(succeeded=1, conditions={"Complete": "Completed"})
    young = run_body(
        {"phase": "Succeeded", "completionTime": "2026-01-01T11:59:30Z"}, ttlSecondsAfterFinished=60
    )
    assert Action.DELETE_RUN not in outcome_of(young, done, None).actions
    old = run_body(
        {"phase": "Succeeded", "completionTime": "2026-01-01T11:58:00Z"}, ttlSecondsAfterFinished=60
    )
    assert outcome_of(old, done, None).actions == (Action.DELETE_RUN,)


def test_a_repeated_pass_changes_nothing() -> None:
    """Level-triggered: a pass over its own result patches nothing new and posts no Event."""
    body = run_body()
    first = outcome_of(body, job(active=1, ready=1), cluster())
    again = outcome_of(run_body(first.status), job(active=1, ready=1), cluster())
    assert {**first.status, **again.status} == first.status
    assert again.events == () and again.actions == ()


def pod(name: str, labels: dict[str, str], created: str, **status: Any) -> dict[str, Any]:
    """A pod as the API returns it."""
    return {"metadata": {"name": name, "labels": labels, "creationTimestamp": created},
            "status": status}  # fmt: skip


def test_pods_are_read_only_when_they_belong_to_this_runs_children() -> None:
    """Dask pods of another cluster (an earlier run's) and driver pods of another Job are not
    this run's."""
    ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    unplaced = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "message": "1 Insufficient cpu."}]}  # fmt: skip
    scheduler = {"dask.org/cluster-name": "x", "dask.org/component": "scheduler"}
    worker = {"dask.org/cluster-name": "x", "dask.org/component": "worker"}
    failed = {"phase": "Failed", "containerStatuses": [
        {"state": {"terminated": {"message": "Traceback\nValueError: bad\n"}}}]}  # fmt: skip
    earlier = {**scheduler, "dask.org/cluster-name": "x-earlier"}
    pods = [
        pod("old-scheduler", earlier, "2026-01-01T10:00:00Z", **ready),
        pod("scheduler", scheduler, "2026-01-01T11:00:01Z"),
        pod("worker", worker, "2026-01-01T11:00:02Z", **unplaced),
        pod("old-driver", {"batch.kubernetes.io/controller-uid": "old"}, "2026-01-01T10:00:00Z",
            **failed),
    ]  # fmt: skip
    seen = read_pods(pods, cluster(), job())
    assert not seen.scheduler_ready and seen.workers_ready == 0
    pods[1]["status"] = ready
    assert read_pods(pods, cluster(), job()).scheduler_ready
    assert seen.dask_unschedulable == "Dask worker pod worker: 1 Insufficient cpu."
    assert seen.driver_failure is None
    pods[-1]["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = "child-of-u"
    assert read_pods(pods, cluster(), job()).driver_failure == "ValueError: bad"


def test_driver_turns_progress_lines_into_status_fields() -> None:
    """The JSON lines of --progress-file map to status.progress and status.results."""
    assert status_patch({"event": "progress", "stage": "statistics", "done": 3, "total": 8}) == {
        "progress": {
            "stage": "statistics",
            "batchesCompleted": 3,
            "batchesTotal": 8,
            "summary": "statistics 3/8",
        }
    }
    headline = {
        "mean_skill_vs_persistence": 0.1,
        "mean_directional_accuracy": 0.6,
        "rules_validated": 2,
        "rules_total": 5,
    }
    assert status_patch(
        {"event": "results", "uri": "s3://r/results.json", "headline": headline}
    ) == {
        "results": {
            "uri": "s3://r/results.json",
            "meanSkillVsPersistence": 0.1,
            "meanDirectionalAccuracy": 0.6,
            "rulesValidated": 2,
            "rulesTotal": 5,
        }
    }
    assert status_patch({"event": "something-new"}) is None


def test_driver_runs_the_pipeline_module_with_the_progress_channel(tmp_path: Any) -> None:
    """An argument list (no shell) ending in --progress-file."""
    command = pipeline_command(["--lags=3"], tmp_path / "p.jsonl")
    assert command[1:4] == ["-m", "recursive_training.run_training", "--lags=3"]
    assert command[-1] == f"--progress-file={tmp_path / 'p.jsonl'}"
