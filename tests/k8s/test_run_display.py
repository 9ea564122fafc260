"""What `kubectl get -o wide` and `kubectl describe` show: a running run's Dask dashboard."""

from __future__ import annotations

import pytest

from .conftest import OperatorProcess
from .controlplane import ControlPlane
from .kubelet import dask_cluster, set_phase
from .test_operator_crd import training_run
from .test_operator_lifecycle import wait_phase, wait_workload

pytestmark = pytest.mark.k8s


def test_a_running_run_shows_its_dask_dashboard(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str
) -> None:
    """The scheduler Service's dashboard port, in status, the wide table and describe; gone
    from all three once the run has ended and its cluster is deleted."""
    plane = pulse_install
    plane.apply(training_run(namespace))
    driver = wait_workload(plane, namespace)
    set_phase(plane, driver, "Running")
    running = wait_phase(plane, namespace, "Running")
    cluster = dask_cluster(plane, namespace)
    address = f"http://{cluster}-scheduler.{namespace}:8787"
    assert running["daskCluster"] == {"name": cluster, "dashboardAddress": address}
    service = plane.kubectl_json(
        "get", "service", f"{cluster}-scheduler", f"--namespace={namespace}"
    )
    assert {"name": "http-dashboard", "port": 8787} in [
        {"name": p["name"], "port": p["port"]} for p in service["spec"]["ports"]
    ]
    wide = plane.kubectl("get", "tr", "run", f"--namespace={namespace}", "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    assert header.split()[-1] == "DASHBOARD" and row.split()[-1] == address
    described = plane.kubectl("describe", "tr", "run", f"--namespace={namespace}").stdout
    assert f"Dashboard Address:  {address}" in described

    set_phase(plane, driver, "Succeeded")
    done = wait_phase(plane, namespace, "Succeeded")
    assert "daskCluster" not in done
    wide = plane.kubectl("get", "tr", "run", f"--namespace={namespace}", "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    assert header.split()[-1] == "DASHBOARD" and address not in row
    described = plane.kubectl("describe", "tr", "run", f"--namespace={namespace}").stdout
    assert "Dashboard Address" not in described
