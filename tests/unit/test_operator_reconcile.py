"""The pure half of a reconcile pass: from a run and its children to status, actions, Events."""

from __future__ import annotations

import datetime
from typing import Any

from trainingrun_operator.driver import pipeline_command, status_patch
from trainingrun_operator.reconcile import Action, observe
from trainingrun_operator.spec import RunSpec

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def run_body(
    status: dict[str, Any] | None = None, generation: int = 1, **spec: Any
) -> dict[str, Any]:
    """A TrainingRun object."""
    return {
        "metadata": {"name": "run", "namespace": "team", "uid": "u", "generation": generation},
        "spec": {"output": {"uri": "/out"}, **spec},
        "status": status or {},
    }


def job(suspend: bool = False, **status: Any) -> dict[str, Any]:
    """A driver Job with `status`; conditions given as type=reason pairs."""
    conditions = [
        {"type": kind, "status": "True", "reason": reason, "message": f"{reason} happened"}
        for kind, reason in status.pop("conditions", {}).items()
    ]
    return {"spec": {"suspend": suspend}, "status": {**status, "conditions": conditions}}


def outcome_of(
    body: dict[str, Any], job_: dict[str, Any] | None, cluster: dict[str, Any] | None
) -> Any:
    """observe() for `body` at NOW."""
    return observe(body, RunSpec.from_body(body), job_, cluster, NOW)


def test_a_new_run_creates_both_children_and_is_pending() -> None:
    """No children yet: create them; phase Pending; one transition Event."""
    outcome = outcome_of(run_body(), None, None)
    assert outcome.actions == (Action.CREATE_JOB, Action.CREATE_CLUSTER)
    assert outcome.status["phase"] == "Pending"
    assert [e.reason for e in outcome.events] == ["Pending", "CreateJob", "CreateCluster"]


def test_a_ready_driver_pod_means_running() -> None:
    """Job.status.ready >= 1 is the Running phase; nothing to do."""
    outcome = outcome_of(
        run_body({"phase": "Provisioning"}),
        job(active=1, ready=1),
        {"status": {"phase": "Running"}},
    )
    assert outcome.status["phase"] == "Running"
    assert outcome.actions == ()
    conditions = {c["type"]: c for c in outcome.status["conditions"]}
    assert conditions["Running"]["status"] == "True"
    assert conditions["WorkloadReady"]["status"] == "True"
    assert all(c["observedGeneration"] == 1 for c in conditions.values())


def test_a_failed_job_fails_the_run_with_its_reason_and_drops_the_cluster() -> None:
    """BackoffLimitExceeded / DeadlineExceeded become the Failed condition's reason."""
    failed = job(failed=3, conditions={"Failed": "BackoffLimitExceeded"})
    outcome = outcome_of(run_body({"phase": "Running"}), failed, {"status": {}})
    assert outcome.status["phase"] == "Failed"
    assert outcome.status["attempts"] == 3
    assert outcome.actions == (Action.DELETE_CLUSTER,)
    conditions = {c["type"]: c for c in outcome.status["conditions"]}
    assert conditions["Failed"]["reason"] == "BackoffLimitExceeded"
    assert outcome.events[0].type == "Warning"
    assert outcome.status["completionTime"] == "2026-01-01T12:00:00Z"


def test_suspend_and_resume_patch_the_job_and_the_cluster_follows() -> None:
    """Suspended: Job suspended, cluster deleted; resumed: Job resumed, cluster recreated."""
    suspended = outcome_of(
        run_body({"phase": "Running"}, suspend=True), job(active=1), {"status": {}}
    )
    assert suspended.actions == (Action.SUSPEND_JOB, Action.DELETE_CLUSTER)
    assert suspended.status["phase"] == "Suspended"
    resumed = outcome_of(run_body({"phase": "Suspended"}, suspend=False), job(suspend=True), None)
    assert resumed.actions == (Action.RESUME_JOB, Action.CREATE_CLUSTER)


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
    first = outcome_of(body, job(active=1, ready=1), {"status": {"phase": "Running"}})
    again = outcome_of(
        run_body(first.status), job(active=1, ready=1), {"status": {"phase": "Running"}}
    )
    assert {**first.status, **again.status} == first.status
    assert again.events == () and again.actions == ()


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
