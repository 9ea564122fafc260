"""The shipped Argo CD health check: the values snippet carries the docs' script, and the
script reads the states the operator cannot have written yet (the k8s tier checks it on
real runs, next to the kstatus library)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa
import pytest
import yaml

pytestmark = pytest.mark.unit

GITOPS = Path(__file__).resolve().parents[2] / "docs" / "gitops"
KEY = "resource.customizations.health.pulse.dev_TrainingRun"


def argo_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) of the docs' Lua check for `obj`, run as Argo CD runs it."""
    lua = lupa.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    health = lua.execute((GITOPS / "trainingrun-health.lua").read_text())
    return health["status"], health["message"]


def test_the_values_snippet_carries_the_documented_script() -> None:
    """One script: the argo-cd chart values hold docs/gitops/trainingrun-health.lua verbatim."""
    values = yaml.safe_load((GITOPS / "argocd-values.yaml").read_text())
    assert values["configs"]["cm"][KEY] == (GITOPS / "trainingrun-health.lua").read_text()


def test_a_run_the_operator_has_not_seen_is_progressing() -> None:
    """No status yet, or a spec generation not yet observed: Progressing, whatever the phase."""
    new = {"metadata": {"name": "run", "generation": 1}}
    assert argo_health(new) == ("Progressing", "waiting for the operator")
    edited = {"metadata": {"generation": 3},
              "status": {"phase": "Succeeded", "observedGeneration": 2}}  # fmt: skip
    assert argo_health(edited) == (
        "Progressing", "waiting for the operator to observe generation 3"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("phase", "expected"),
    [("Pending", "Progressing"), ("Provisioning", "Progressing"), ("Running", "Progressing"),
     ("Suspended", "Suspended"), ("Succeeded", "Healthy"), ("Failed", "Degraded")],
)  # fmt: skip
def test_each_phase_maps_to_one_health(phase: str, expected: str) -> None:
    """Every phase of the CRD's enum has its Argo CD health, with the run's message."""
    run = {"metadata": {"generation": 1},
           "status": {"phase": phase, "observedGeneration": 1, "message": "why"}}  # fmt: skip
    assert argo_health(run) == (expected, "why")
