"""The TrainingRun CRD on a real API server: defaults, schema, CEL rules and immutability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .controlplane import ControlPlane, KubectlError

pytestmark = pytest.mark.k8s

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def training_run(namespace: str, name: str = "run", **spec: Any) -> dict[str, Any]:
    """A TrainingRun manifest with an output folder and `spec` on top."""
    return {
        "apiVersion": "pulse.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"output": {"uri": "s3://results/run"}, **spec},
    }


def rejection(plane: ControlPlane, manifest: dict[str, Any]) -> str:
    """The error kubectl prints when the API server refuses `manifest`."""
    with pytest.raises(KubectlError) as refused:
        plane.apply(manifest)
    return refused.value.stderr


def test_a_minimal_run_is_stored_with_defaults(pulse_install: ControlPlane, namespace: str) -> None:
    """Only spec.output is required; the server fills in every training default."""
    stored = pulse_install.apply(training_run(namespace))
    spec = stored["spec"]
    assert spec["batchSizeDays"] == 365
    assert spec["horizon"] == 1
    assert spec["lags"] == 5
    assert spec["backoffLimit"] == 2
    assert spec["suspend"] is False
    assert spec["rules"] == ["momentum(5)", "mean_reversion(20)", "model"]
    assert spec["fdr"] == 0.1
    assert spec["intervals"] == []
    assert spec["model"] == {"structure": "var", "pooledScale": "rms", "scaleWindow": 52}
    assert spec["data"] == {"uri": "builtin:synthetic", "format": "auto"}
    assert spec["dask"] == {"workers": 2, "threads": 1}


def test_printer_columns_and_short_name(pulse_install: ControlPlane, namespace: str) -> None:
    """`kubectl get tr` shows phase, progress, the headline metric and age."""
    pulse_install.apply(training_run(namespace))
    header = pulse_install.kubectl("get", "tr", f"--namespace={namespace}").stdout.splitlines()[0]
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "SKILL", "AGE"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"startDate": "2020-01-01", "endDate": "2019-01-01"}, "endDate must be after startDate"),
        ({"startDate": "2020-01-01", "endDate": "2020-01-01"}, "endDate must be after startDate"),
        ({"startDate": "01/02/2020"}, "spec.startDate"),
        ({"batchSizeDays": 0}, "spec.batchSizeDays in body should be greater than or equal to 1"),
        ({"dask": {"workers": 0}}, "spec.dask.workers"),
        ({"backoffLimit": -1}, "spec.backoffLimit"),
        ({"rules": ["model", "momentum(x)"]}, "unknown rule; known rules: momentum(W)"),
        ({"rules": ["tarot"]}, "spec.rules[0]"),
        ({"fdr": 0}, "spec.fdr in body should be greater than 0"),
        ({"fdr": 1}, "spec.fdr in body should be less than 1"),
        ({"intervals": [0.8, 1]}, "spec.intervals[1] in body should be less than 1"),
        ({"intervals": [0]}, "spec.intervals[0] in body should be greater than 0"),
        ({"intervals": [0.95, 0.8]}, "list intervals in increasing order"),
        ({"intervals": [0.8, 0.8]}, ".spec.intervals: duplicate entries"),
        ({"model": {"structure": "arima"}}, 'spec.model.structure: Unsupported value: "arima"'),
        ({"model": {"structure": "pooled", "pooledScale": "max"}},
         'spec.model.pooledScale: Unsupported value: "max"'),
        ({"model": {"structure": "ar", "scaleWindow": 0}}, "spec.model.scaleWindow"),
        ({"model": {"maxMemory": "500m"}}, "spec.model.maxMemory in body should match"),
        ({"model": {"structure": "ar", "exog": ["m", "m"]}}, ".spec.model.exog: duplicate entries"),
        ({"model": {"exog": ["market"]}}, "model.exog applies to structure ar and pooled"),
        ({"variables": ["a", "b"], "model": {"structure": "ar", "exog": ["market"]}},
         "every model.exog must be among spec.variables"),
        ({"horizons": [5, 1]}, "list horizons increasing (1, 5, 20)"),
        ({"horizons": [1, 1]}, ".spec.horizons: duplicate entries"),
        ({"horizons": [0, 5]}, "spec.horizons[0] in body should be greater than or equal to 1"),
        ({"horizon": 5, "horizons": [1, 5]}, "horizon and horizons were both given"),
        ({"output": {}}, 'spec.output.uri: Required value'),
        ({"data": {"format": "xlsx"}}, 'spec.data.format: Unsupported value: "xlsx"'),
        # Caught here, not by the Dask pods' creation at run time with a generic message.
        ({"dask": {"resources": {"requests": {"cpu": "lots"}}}},
         "spec.dask.resources.requests.cpu in body should match"),
        ({"dask": {"workers": 1, "minWorkers": 2}}, "dask.minWorkers must not exceed"),
        # What would not fit on the driver's command line ("argument list too long").
        ({"variables": ["v" * 254]}, "spec.variables[0]: Too long"),
        ({"variables": [f"v{i}" for i in range(257)]}, "spec.variables: Too many"),
        ({"data": {"uri": "s3://b/" + "k" * 2048}}, "spec.data.uri: Too long"),
        ({"ridgeAlpha": "lots"}, "spec.ridgeAlpha in body should match '^auto$'"),
        ({"ridgeAlpha": -0.5}, "spec.ridgeAlpha in body should be greater than or equal to 0"),
        ({"ridgeAlpha": [1]}, "spec.ridgeAlpha: Too many: 1: must have at most 0 items"),
        ({"alphaGrid": []}, "spec.alphaGrid in body should have at least 1 items"),
        ({"alphaGrid": [0.1, -1]}, "spec.alphaGrid[1] in body should be greater than or equal"),
    ],
)  # fmt: skip
def test_invalid_specs_are_rejected_with_readable_messages(
    pulse_install: ControlPlane, namespace: str, spec: dict[str, Any], message: str
) -> None:
    """kubectl apply fails and prints which field is wrong and why; nothing is stored."""
    assert message in rejection(pulse_install, training_run(namespace, **spec))
    listed = pulse_install.kubectl("get", "tr", f"--namespace={namespace}", "--output=name")
    assert listed.stdout.strip() == ""


def test_a_run_name_longer_than_its_dask_scheduler_service_allows_is_rejected(
    pulse_install: ControlPlane, namespace: str
) -> None:
    """39 characters fit `<name>-dask-<uid8>-scheduler` in a DNS label; 40 are refused at apply."""
    longest = pulse_install.apply(training_run(namespace, name="r" * 39))
    assert longest["metadata"]["name"] == "r" * 39
    message = rejection(pulse_install, training_run(namespace, name="r" * 40))
    assert "metadata.name: at most 39 characters" in message, message


def test_training_fields_are_immutable_but_suspend_is_not(
    pulse_install: ControlPlane, namespace: str
) -> None:
    """A started run keeps its training settings; suspend and TTL may change."""
    plane = pulse_install
    plane.apply(training_run(namespace, variables=["a", "b"], lags=3))
    changed = rejection(plane, training_run(namespace, variables=["a"], lags=3))
    assert "variables is immutable once the run exists" in changed
    added = rejection(plane, training_run(namespace, variables=["a", "b"], lags=3, halfLifeDays=30))
    assert "halfLifeDays is immutable once the run exists" in added
    fdr = rejection(plane, training_run(namespace, variables=["a", "b"], lags=3, fdr=0.05))
    assert "fdr is immutable once the run exists" in fdr
    levels = rejection(plane, training_run(namespace, variables=["a", "b"], lags=3,
                                           intervals=[0.9]))  # fmt: skip
    assert "intervals is immutable once the run exists" in levels
    grid = rejection(plane, training_run(namespace, variables=["a", "b"], lags=3,
                                         alphaGrid=[1, 10]))  # fmt: skip
    assert "alphaGrid is immutable once the run exists" in grid
    model = rejection(plane, training_run(namespace, variables=["a", "b"], lags=3,
                                          model={"structure": "ar"}))  # fmt: skip
    assert "model is immutable once the run exists" in model
    paused = training_run(namespace, variables=["a", "b"], lags=3, suspend=True)
    stored = plane.apply({**paused, "spec": {**paused["spec"], "ttlSecondsAfterFinished": 60}})
    assert stored["spec"]["suspend"] is True
    # What the operator cannot apply to a run's pods is refused, not accepted and ignored.
    threads = rejection(plane, training_run(namespace, variables=["a", "b"], lags=3,
                                            dask={"threads": 4}))  # fmt: skip
    assert "dask.threads is immutable once the run exists" in threads
    image = rejection(plane, training_run(namespace, variables=["a", "b"], lags=3, image="x:1"))
    assert "image is immutable once the run exists" in image
    # What it applies may change: workers, deadline, retries.
    edited = training_run(namespace, variables=["a", "b"], lags=3, dask={"workers": 5},
                          activeDeadlineSeconds=600, backoffLimit=4)  # fmt: skip
    assert plane.apply(edited)["spec"]["dask"]["workers"] == 5


def test_a_model_with_exog_among_the_variables_or_without_variables_is_accepted(
    pulse_install: ControlPlane, namespace: str
) -> None:
    """exog is checked against spec.variables only when the run lists variables."""
    model = {"structure": "ar", "exog": ["market"]}
    listed = training_run(namespace, "listed", variables=["a", "market"], model=model)
    assert pulse_install.apply(listed)["spec"]["model"]["exog"] == ["market"]
    unlisted = training_run(namespace, "unlisted", model={**model, "structure": "pooled"})
    stored = pulse_install.apply(unlisted)["spec"]["model"]
    assert stored == {"structure": "pooled", "exog": ["market"], "pooledScale": "rms",
                      "scaleWindow": 52}  # fmt: skip


@pytest.mark.parametrize("alpha", ["auto", 0.5, 2, 0])
def test_ridge_alpha_is_auto_or_a_number(
    pulse_install: ControlPlane, namespace: str, alpha: object
) -> None:
    """A number (with or without a fraction) or auto is stored as given, with the grid."""
    stored = pulse_install.apply(training_run(namespace, ridgeAlpha=alpha))["spec"]
    assert stored["ridgeAlpha"] == alpha
    assert stored["alphaGrid"][0] == 0.001 and len(stored["alphaGrid"]) == 13


def test_resource_quantities_may_be_strings_or_integers(
    pulse_install: ControlPlane, namespace: str
) -> None:
    """dask.resources takes Kubernetes quantities as a container does."""
    resources = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": 1}}
    stored = pulse_install.apply(training_run(namespace, dask={"resources": resources}))
    assert stored["spec"]["dask"]["resources"] == resources


@pytest.mark.parametrize(
    "example", sorted(MANIFESTS.glob("examples/*.yaml")),
    ids=lambda path: path.name,
)  # fmt: skip
def test_example_runs_are_valid(pulse_install: ControlPlane, namespace: str, example: Path) -> None:
    """Every example in manifests/examples passes the API server's validation (server dry run)."""
    result = pulse_install.kubectl(
        "apply", "--dry-run=server", f"--namespace={namespace}", f"--filename={example}"
    )
    assert "(server dry run)" in result.stdout


def test_the_controller_deployments_are_accepted(pulse_install: ControlPlane) -> None:
    """The rest of manifests/base (both Deployments, the operator's PodDisruptionBudget)
    passes the API server's validation, every object of the file."""
    deployments = MANIFESTS / "base" / "deployments.yaml"
    objects = [doc for doc in yaml.safe_load_all(deployments.read_text()) if doc]
    assert {doc["kind"] for doc in objects} >= {"Deployment", "PodDisruptionBudget"}
    result = pulse_install.kubectl(
        "apply", "--dry-run=server", "--server-side", f"--filename={deployments}"
    )
    assert result.stdout.count("(server dry run)") == len(objects)
