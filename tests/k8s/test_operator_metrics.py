"""The operator's Prometheus metrics, scraped over HTTP while the real operator drives a run.

The run goes Pending -> Running -> Succeeded (the test plays kubelet and the driver, as in
test_operator_lifecycle.py); each scrape is parsed with prometheus_client's own parser of
the text format, as Prometheus would read it.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import OperatorProcess
from .controlplane import ControlPlane
from .kubelet import eventually, set_phase
from .test_operator_crd import training_run
from .test_operator_lifecycle import WAIT_S, patch_status_as_driver, wait_phase, wait_workload

pytestmark = pytest.mark.k8s

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(operator: OperatorProcess) -> Samples:
    """Every sample of one scrape: (name, labels) -> value."""
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    """The sample `metric` with exactly these labels, or None."""
    return samples.get((metric, frozenset(labels.items())))


def wait_metric(operator: OperatorProcess, metric: str, expected: float, **labels: str) -> Samples:
    """Scrape until `metric{labels}` shows `expected`; return that scrape."""

    def shows() -> Samples | None:
        try:
            samples = scrape(operator)
        except urllib.error.URLError:  # the operator is still starting
            return None
        return samples if value(samples, metric, **labels) == expected else None

    return eventually(shows, WAIT_S, f"{metric}{labels} == {expected}")


def test_metrics_follow_a_run_from_pending_to_succeeded(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """Per-run info/duration/batches and runs by phase move with the run; passes are counted."""
    plane = pulse_install
    run = {"namespace": namespace, "name": "run"}
    plane.apply(training_run(namespace))
    first = wait_metric(pulse_operator, "pulse_trainingrun_info", 1, **run, phase="Pending")
    assert value(first, "pulse_trainingruns", phase="Pending") == 1
    assert value(first, "pulse_trainingrun_duration_seconds", **run) is None, "not started"

    pod = wait_workload(plane, namespace)
    set_phase(plane, pod, "Running")
    wait_phase(plane, namespace, "Running")
    progress = {"stage": "training", "batchesCompleted": 3, "batchesTotal": 10, "summary": "3/10"}
    patch_status_as_driver(plane, namespace, {"progress": progress})
    running = wait_metric(pulse_operator, "pulse_trainingrun_batches_completed", 3, **run)
    assert value(running, "pulse_trainingrun_info", **run, phase="Running") == 1
    assert value(running, "pulse_trainingrun_info", **run, phase="Pending") is None
    assert value(running, "pulse_trainingrun_batches_total", **run) == 10
    assert value(running, "pulse_trainingruns", phase="Running") == 1
    assert value(running, "pulse_trainingruns", phase="Pending") == 0

    set_phase(plane, pod, "Succeeded")
    wait_phase(plane, namespace, "Succeeded")
    done = wait_metric(pulse_operator, "pulse_trainingrun_info", 1, **run, phase="Succeeded")
    assert value(done, "pulse_trainingruns", phase="Succeeded") == 1
    duration = value(done, "pulse_trainingrun_duration_seconds", **run)
    assert duration is not None and duration >= 0
    later = scrape(pulse_operator)
    assert value(later, "pulse_trainingrun_duration_seconds", **run) == duration, "stopped"

    passes = value(done, "pulse_operator_reconcile_total", outcome="success")
    assert passes is not None and passes >= 4
    count = value(done, "pulse_operator_reconcile_duration_seconds_count", outcome="success")
    assert count == passes
    assert value(done, "pulse_operator_reconcile_total", outcome="error") is None
    # /healthz is still served, next to the metrics.
    with urllib.request.urlopen(pulse_operator.liveness_url, timeout=5) as response:
        assert response.status == 200

    plane.kubectl("delete", "trainingrun", "run", f"--namespace={namespace}")
    gone = eventually(
        lambda: (s := scrape(pulse_operator))
        and value(s, "pulse_trainingrun_info", **run, phase="Succeeded") is None and s,
        WAIT_S, "the deleted run's series to go",
    )  # fmt: skip
    assert value(gone, "pulse_trainingruns", phase="Succeeded") == 0
