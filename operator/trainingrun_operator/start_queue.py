"""The start queue: runs start one at a time, oldest first, across the watched namespaces.

Its state is the runs' own status (the `Admitted` condition and the phase), so it
survives an operator restart; the operator's memo only serializes the decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainingrun_operator.constants import (
    CONDITION_ADMITTED,
    FINISHED_PHASES,
    RUNNING,
    SUSPENDED,
)
from trainingrun_operator.objects import Manifest


def is_admitted(status: Mapping[str, Any]) -> bool:
    """True when the run's status says it was let start (its Admitted condition is True)."""
    return any(
        c.get("type") == CONDITION_ADMITTED and c.get("status") == "True"
        for c in status.get("conditions", [])
    )


def _start_key(run: Mapping[str, Any]) -> tuple[str, str, str]:
    """Queue order: creation time, then namespace and name."""
    meta = run["metadata"]
    return (meta["creationTimestamp"], meta["namespace"], meta["name"])


def start_blocker(body: Mapping[str, Any], runs: list[Manifest]) -> str | None:
    """The run `body` must wait for before it starts, or None when it may start now.

    One run starts at a time: a run is let create its Dask cluster only when no other run
    is starting (admitted, but its driver not yet running) and no older run is waiting.
    Runs that hold part of the capacity they need can then never wait on each other, so
    a busy cluster delays runs and never wedges them.
    """
    mine = _start_key(body)
    for other in sorted(runs, key=_start_key):
        meta = other["metadata"]
        status: Mapping[str, Any] = other.get("status") or {}
        spec: Mapping[str, Any] = other.get("spec") or {}
        if _start_key(other) == mine or meta.get("deletionTimestamp") or spec.get("suspend"):
            continue
        if status.get("phase") in (*FINISHED_PHASES, RUNNING, SUSPENDED):
            continue
        if is_admitted(status) or _start_key(other) < mine:
            return f"{meta['namespace']}/{meta['name']}"
    return None
