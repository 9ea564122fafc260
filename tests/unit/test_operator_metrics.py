"""Operator metrics that the k8s tier cannot provoke on demand: API errors, watch restarts."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from trainingrun_operator.exceptions import KubeError, KubeUnreachableError
from trainingrun_operator.metrics import WATCH_LOGGER, OperatorMetrics

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def sample(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    """One sample of the registry."""
    return metrics.registry.get_sample_value(name, labels)


def test_failed_passes_count_api_errors_by_kind_and_other_errors_only_as_passes() -> None:
    """A refused call and a transport failure are API errors; a bug is an error pass only."""
    metrics = OperatorMetrics.create()
    metrics.record_pass(0.01, None)
    metrics.record_pass(0.02, KubeUnreachableError("GET", "runs", "connection refused"))
    metrics.record_pass(0.03, KubeError("PATCH", "runs", 409, "Conflict"))
    metrics.record_pass(0.04, ValueError("a bug"))
    assert sample(metrics, "pulse_operator_reconcile_total", outcome="success") == 1
    assert sample(metrics, "pulse_operator_reconcile_total", outcome="error") == 3
    assert sample(metrics, "pulse_operator_api_errors_total", error="KubeUnreachableError") == 1
    assert sample(metrics, "pulse_operator_api_errors_total", error="KubeError") == 1
    assert sample(metrics, "pulse_operator_reconcile_duration_seconds_sum", outcome="error") == (
        pytest.approx(0.09)
    )
    assert b'pulse_trainingruns{phase="Running"} 0.0' in generate_latest(metrics.registry)


def test_watch_restarts_are_counted_from_kopfs_log_without_showing_its_debug_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kopf's DEBUG restart lines are counted; at INFO they stay out of the log."""
    metrics = OperatorMetrics.create()
    metrics.count_watch_restarts(show_debug=False)
    watcher = logging.getLogger(WATCH_LOGGER)
    try:
        with caplog.at_level(logging.DEBUG):
            watcher.debug("Restarting the watch-stream for trainingruns in 'ns'.")
            watcher.debug("Watch-stream for trainingruns cluster-wide is inactive, reconnecting.")
            watcher.debug("Starting the watch-stream for trainingruns in 'ns'.")
        assert sample(metrics, "pulse_operator_watch_restarts_total") == 2
        assert not caplog.records
    finally:
        watcher.filters.clear()
        watcher.setLevel(logging.NOTSET)


def test_the_dashboard_queries_only_series_the_operator_exports() -> None:
    """Every pulse_* name in the chart's Grafana dashboard is one the registry serves."""
    dashboard = REPO / "charts" / "pulse-recursive-training" / "dashboards" / "pulse-operator.json"
    queried = set(re.findall(r"\bpulse_\w+", dashboard.read_text()))
    metrics = OperatorMetrics.create()
    metrics.record_pass(0.01, KubeError("GET", "runs", 500, "oops"))
    metrics.runs.observe({
        "metadata": {"namespace": "ns", "name": "run"},
        "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
                   "progress": {"batchesCompleted": 1, "batchesTotal": 2}},
    })  # fmt: skip
    served = {sample.name for family in metrics.registry.collect() for sample in family.samples}
    assert queried and queried <= served, queried - served
