"""The driver: runs ``pulse-train`` in a subprocess and reports its progress to the TrainingRun.

This is the container command of the run's Job pod::

    python -m trainingrun_operator.driver <pulse-train flags...>

It starts ``python -m recursive_training.run_training <flags> --progress-file F`` (an
argument list, no shell), follows F's JSON lines and merge-patches the run's status
subresource with ``progress`` and, at the end, ``results`` (uri and headline metrics).
It exits with the pipeline's exit code, so the Job's retries and failure accounting see
the truth. SIGTERM and SIGINT are passed on to the pipeline: as a container's PID 1 the
driver would otherwise ignore them, and every deletion of a run or of its Job would wait
out the pod's whole grace period. It needs only get/patch on ``trainingruns/status`` in
its own namespace, and it never imports the pipeline: the CLI and the JSON lines are the
whole contract.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainingrun_operator import kube
from trainingrun_operator.constants import ENV_RUN_NAME, ENV_RUN_NAMESPACE
from trainingrun_operator.exceptions import DriverError, KubeError

log = logging.getLogger("trainingrun_operator.driver")
POLL_S = 0.5
PATCH_ATTEMPTS = 5


def pipeline_command(cli_args: Sequence[str], progress_file: Path) -> list[str]:
    """The pipeline's command line, with the progress channel added."""
    return [
        sys.executable, "-m", "recursive_training.run_training",
        *cli_args, f"--progress-file={progress_file}",
    ]  # fmt: skip


def status_patch(record: dict[str, Any]) -> dict[str, Any] | None:
    """The status fields one progress-file record reports, or None for an unknown record."""
    if record.get("event") == "progress":
        done, total = int(record["done"]), int(record["total"])
        stage = str(record["stage"])
        summary = f"{stage} {done}/{total}"
        return {"progress": {"stage": stage, "batchesCompleted": done, "batchesTotal": total,
                             "summary": summary}}  # fmt: skip
    if record.get("event") == "results":
        headline: dict[str, Any] = record.get("headline") or {}
        return {
            "results": {
                "uri": record["uri"],
                "meanSkillVsPersistence": headline.get("mean_skill_vs_persistence"),
                "meanDirectionalAccuracy": headline.get("mean_directional_accuracy"),
                "rulesValidated": headline.get("rules_validated"),
                "rulesTotal": headline.get("rules_total"),
            }
        }
    return None


class StatusReporter:
    """Patches one TrainingRun's status subresource, retrying transient API errors."""

    def __init__(self, api: kube.Kube, namespace: str, name: str) -> None:
        """Report to `namespace/name` through `api`."""
        self.api = api
        self.namespace = namespace
        self.name = name

    async def patch(self, fields: dict[str, Any]) -> None:
        """Merge `fields` into the run's status; raise DriverError when the API keeps refusing."""
        for attempt in range(1, PATCH_ATTEMPTS + 1):
            try:
                found = await self.api.merge_patch(
                    kube.TRAINING_RUNS, self.namespace, self.name, {"status": fields}, "status"
                )
            except KubeError as e:
                if attempt == PATCH_ATTEMPTS:
                    raise DriverError(
                        f"cannot patch TrainingRun {self.namespace}/{self.name}: {e}"
                    ) from e
                await asyncio.sleep(attempt)
                continue
            if found is None:
                raise DriverError(f"TrainingRun {self.namespace}/{self.name} no longer exists")
            return


async def follow(path: Path, process: asyncio.subprocess.Process, reporter: StatusReporter) -> None:
    """Report every complete line of `path` until `process` exits and the file is drained."""
    offset = 0
    while True:
        exited = process.returncode is not None
        if path.exists():
            with path.open("rb") as file:
                file.seek(offset)
                chunk = file.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            patches = [status_patch(json.loads(line)) for line in complete.splitlines() if line]
            # Only the latest progress matters, and it is best effort: a status the API
            # refused for a while must not cost the training. Results must get through.
            for fields in [p for p in patches if p and "progress" in p][-1:]:
                try:
                    await reporter.patch(fields)
                except DriverError as e:
                    log.warning("progress not reported: %s", e)
            for fields in (p for p in patches if p and "results" in p):
                await reporter.patch(fields)
        if exited:
            return
        await asyncio.sleep(POLL_S)


async def wait_forwarding_signals(process: asyncio.subprocess.Process) -> int:
    """Wait for `process`, passing SIGTERM/SIGINT on to it; a signal death is 128 + signal."""
    loop = asyncio.get_running_loop()
    forwarded = (signal.SIGTERM, signal.SIGINT)
    for signum in forwarded:
        loop.add_signal_handler(signum, _forward, process, signum)
    try:
        code = await process.wait()
    finally:
        for signum in forwarded:
            loop.remove_signal_handler(signum)
    # asyncio reports a child killed by signal N as -N; shells and kubelets say 128 + N.
    return 128 - code if code < 0 else code


def _forward(process: asyncio.subprocess.Process, signum: signal.Signals) -> None:
    """Signal handler: hand the signal to the pipeline, which stops and exits."""
    log.warning("%s received: stopping the pipeline", signum.name)
    if process.returncode is None:
        process.send_signal(signum)


async def drive(cli_args: Sequence[str], namespace: str, name: str) -> int:
    """Run the pipeline, report its progress and results; return its exit code."""
    reporter = StatusReporter(await kube.Kube.connect(), namespace, name)
    with tempfile.TemporaryDirectory(prefix="pulse-driver-") as folder:
        progress_file = Path(folder) / "progress.jsonl"
        command = pipeline_command(cli_args, progress_file)
        log.info("running %s", command)
        process = await asyncio.create_subprocess_exec(*command)
        follower = asyncio.create_task(follow(progress_file, process, reporter))
        code = await wait_forwarding_signals(process)
        await follower
    log.info("pipeline exited %d", code)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the pipeline's exit code, or 1 when the run cannot be reported to."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s driver: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        namespace, name = os.environ[ENV_RUN_NAMESPACE], os.environ[ENV_RUN_NAME]
    except KeyError as e:
        log.error("environment variable %s is not set (the Job sets it)", e.args[0])
        return 1
    try:
        return asyncio.run(drive(args, namespace, name))
    except DriverError as e:
        log.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
