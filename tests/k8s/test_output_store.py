"""A TrainingRun that reads from one S3 store and writes to another, through the real pods.

spec.data names one moto server and its Secret, spec.output (``endpoint``,
``credentialsSecret``) the other. The scheduler, worker and driver pods the operators made
run here as local processes with the environment a kubelet would give them, Secrets
included (tests/k8s/test_operator_local_e2e.py). Both servers check signatures and IAM
policies and know only their own user's keys, so a run that succeeds read with the data's
keys and wrote with the output's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.s3.datasets import fill_two_stores
from tests.integration.s3.servers import MotoServer

from .conftest import OperatorProcess
from .controlplane import ControlPlane, free_port
from .kubelet import set_phase
from .test_operator_crd import training_run
from .test_operator_lifecycle import wait_phase
from .test_operator_local_e2e import RUN_TIMEOUT_S, LocalPods, driver_pod, start_local_dask

pytestmark = pytest.mark.k8s


def _secret(plane: ControlPlane, namespace: str, name: str, keys: dict[str, str]) -> None:
    """A Secret with the AWS_* keys of `keys` (key, secret)."""
    plane.kubectl(
        "create", "secret", "generic", name, f"--namespace={namespace}",
        f"--from-literal=AWS_ACCESS_KEY_ID={keys['key']}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={keys['secret']}",
    )  # fmt: skip


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[MotoServer, MotoServer]]:
    """The data server and the results server, stopped after the test."""
    with (
        MotoServer(tmp_path / "data-moto.log") as data,
        MotoServer(tmp_path / "results-moto.log") as results,
    ):
        yield data, results


def test_a_run_reads_one_store_and_writes_another(
    pulse_install: ControlPlane, pulse_operator: OperatorProcess, namespace: str,
    servers: tuple[MotoServer, MotoServer], tmp_path: Path,
) -> None:  # fmt: skip
    """data.endpoint + data.credentialsSecret, output.endpoint + output.credentialsSecret:
    the run succeeds, its files are in the results store, status names them there."""
    plane = pulse_install
    data, results = servers
    path, reader, writer = fill_two_stores(data, results)
    _secret(plane, namespace, "market-reader", reader)
    _secret(plane, namespace, "results-writer", writer)
    plane.apply(
        training_run(
            namespace,
            data={"uri": f"s3://market/{path}", "endpoint": data.endpoint,
                  "credentialsSecret": "market-reader"},
            output={"uri": "s3://results/run", "endpoint": results.endpoint,
                    "credentialsSecret": "results-writer"},
            dask={"workers": 1}, lags=3, batchSizeDays=120,
        )
    )  # fmt: skip
    pods = LocalPods(tmp_path, "run", free_port(), plane, namespace)
    try:
        start_local_dask(plane, namespace, pods)
        driver = driver_pod(plane, namespace)
        kubeconfig = plane.kubeconfig_for_service_account(namespace, "run-driver")
        process = pods.run(driver, {"KUBECONFIG": str(kubeconfig)}, {})
        set_phase(plane, driver, "Running")
        log = tmp_path / f"{driver['metadata']['name']}.log"
        assert process.wait(RUN_TIMEOUT_S) == 0, log.read_text()
    finally:
        pods.stop()
    set_phase(plane, driver, "Succeeded")
    done = wait_phase(plane, namespace, "Succeeded")

    assert done["results"]["uri"] == "s3://results/run/results.json"
    store = results.client(**writer)
    document = json.loads(store.get_object(Bucket="results", Key="run/results.json")["Body"].read())
    listed = store.list_objects_v2(Bucket="results", Prefix="run/")["Contents"]
    written = {item["Key"] for item in listed}
    assert {f"run/{name}" for name in document["files"].values()} <= written
    assert any(key.startswith("run/checkpoints/") for key in written)
    market = data.client(**reader).list_objects_v2(Bucket="market")["Contents"]
    assert [item["Key"] for item in market] == [path]
    assert done["results"]["meanSkillVsPersistence"] == pytest.approx(
        document["metrics"]["headline"]["mean_skill_vs_persistence"]
    )
