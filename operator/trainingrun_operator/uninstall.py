"""``python -m trainingrun_operator.uninstall``: delete every TrainingRun before the operator goes.

The chart's pre-delete hook runs it while both controllers still run, so each run's Dask
cluster is finalized by the Dask controller as usual. Without it, ``helm uninstall``
removes the Dask controller first and any DaskCluster left keeps that controller's
finalizer with nobody to remove it: the DaskCluster, and its namespace, can then never
finish deleting. It waits until the runs and their DaskClusters are gone, for at most
``--timeout-seconds``, and exits 1 naming what is left.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from trainingrun_operator import kube
from trainingrun_operator.constants import LABEL_MANAGED_BY, MANAGER
from trainingrun_operator.exceptions import OperatorError
from trainingrun_operator.settings import OperatorSettings

log = logging.getLogger("trainingrun_operator.uninstall")
POLL_S = 2.0


async def leftovers(api: kube.Kube, namespaces: tuple[str, ...]) -> list[str]:
    """`kind namespace/name` of every TrainingRun and operator-made DaskCluster in scope."""
    found: list[str] = []
    selector = f"{LABEL_MANAGED_BY}={MANAGER}"
    for scope in namespaces or (None,):
        for kind, resource, labels in (
            ("TrainingRun", kube.TRAINING_RUNS, ""),
            ("DaskCluster", kube.DASK_CLUSTERS, selector),
        ):
            for item in await api.list_objects(resource, scope, labels):
                meta = item["metadata"]
                found.append(f"{kind} {meta['namespace']}/{meta['name']}")
    return found


async def remove_runs(api: kube.Kube, namespaces: tuple[str, ...], timeout_s: float) -> list[str]:
    """Delete every TrainingRun in scope; wait for them and their DaskClusters; return leftovers."""
    for scope in namespaces or (None,):
        for run in await api.list_objects(kube.TRAINING_RUNS, scope):
            meta = run["metadata"]
            log.info("deleting TrainingRun %s/%s", meta["namespace"], meta["name"])
            await api.delete(kube.TRAINING_RUNS, meta["namespace"], meta["name"], meta["uid"])
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while (left := await leftovers(api, namespaces)) and loop.time() < give_up:
        await asyncio.sleep(POLL_S)
    return left


async def _main(namespaces: tuple[str, ...], timeout_s: float) -> list[str]:
    """Connect and remove the runs."""
    return await remove_runs(await kube.Kube.connect(), namespaces, timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when nothing is left, 1 naming what is (or why it could not be done)."""
    parser = argparse.ArgumentParser(prog="python -m trainingrun_operator.uninstall")
    parser.add_argument("--timeout-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        namespaces = OperatorSettings.from_env().namespaces
        left = asyncio.run(_main(namespaces, args.timeout_seconds))
    except OperatorError as e:
        log.error("%s", e)
        return 1
    if left:
        log.error(
            "still present after %.0f s: %s (is the Dask controller running?)",
            args.timeout_seconds, ", ".join(left),
        )  # fmt: skip
        return 1
    log.info("no TrainingRun or DaskCluster left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
