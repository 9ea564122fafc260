"""The driver: runs ``pulse-train`` in a subprocess and reports its progress to the TrainingRun.

This is the container command of the run's Job pod::

    python -m trainingrun_operator.driver <pulse-train flags...>

It starts ``python -m recursive_training.run_training <flags> --progress-file F`` (an
argument list, no shell), follows F's JSON lines and merge-patches the run's status
subresource with ``progress`` and, at the end, ``results`` (uri and headline metrics). It
exits with the pipeline's exit code, so the Job's retries and failure accounting see the
truth, except when the pipeline recorded its error as not retryable (a bad flag, unreadable
data): then it exits ``EXIT_DO_NOT_RETRY`` (3), on which the Job's podFailurePolicy fails
the run without retrying it. SIGTERM and SIGINT are passed on to the pipeline: as a
container's PID 1 the driver would otherwise ignore them, and every deletion of a run or of
its Job would wait out the pod's whole grace period. Reporting never fails the work: a
status the API server cannot take (it may be restarting) is retried, with a bounded backoff
once the pipeline has exited, and the exit code stays the pipeline's. The pipeline's stderr
passes through; when it fails, its last ERROR line becomes the container's termination
message, which the operator shows as the failed run's ``status.message``. The driver needs
only get/patch on ``trainingruns/status`` in its own namespace, and it never imports the
pipeline: the CLI, the JSON lines and the ERROR line are the whole contract.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainingrun_operator import kube
from trainingrun_operator.constants import (
    ENV_RUN_NAME,
    ENV_RUN_NAMESPACE,
    ENV_TERMINATION_MESSAGE_PATH,
    EXIT_DO_NOT_RETRY,
    TERMINATION_MESSAGE_PATH,
)
from trainingrun_operator.exceptions import DriverError, KubeError

log = logging.getLogger("trainingrun_operator.driver")
POLL_S = 0.5
# How long a finished pipeline's last status (results, final progress) is retried while
# the API server cannot take it, and the longest pause between two tries.
FINAL_REPORT_DEADLINE_S = 600.0
MAX_BACKOFF_S = 30.0


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


def not_retryable(progress_file: Path) -> bool:
    """True when the pipeline recorded an error that running it again would meet again."""
    if not progress_file.exists():
        return False
    for line in progress_file.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if record.get("event") == "error" and record.get("retryable") is False:
            return True
    return False


class StatusReporter:
    """Patches one TrainingRun's status subresource; reporting never costs the training.

    Progress is best effort: a patch the API server refuses or cannot take (it may be
    restarting) is kept and the newest one tried again at the next poll. At the end,
    what is still unreported (last progress, results) is retried with a bounded
    backoff, so a run whose pipeline succeeded shows its results once the API is back.
    """

    def __init__(self, api: kube.Kube, namespace: str, name: str) -> None:
        """Report to `namespace/name` through `api`."""
        self.api = api
        self.namespace = namespace
        self.name = name
        self.pending: dict[str, Any] = {}

    def add(self, fields: dict[str, Any]) -> None:
        """Queue status fields; newer values of a field replace older ones."""
        self.pending.update(fields)

    async def flush(self) -> bool:
        """Try once to patch what is pending; True when nothing is left to report."""
        if not self.pending:
            return True
        fields = dict(self.pending)
        try:
            found = await self.api.merge_patch(
                kube.TRAINING_RUNS, self.namespace, self.name, {"status": fields}, "status"
            )
        except KubeError as e:
            log.warning("status not reported yet (%s); will retry", e)
            return False
        if found is None:
            raise DriverError(f"TrainingRun {self.namespace}/{self.name} no longer exists")
        for key, value in fields.items():
            if self.pending.get(key) == value:
                del self.pending[key]
        return not self.pending

    async def drain(self, deadline_s: float = FINAL_REPORT_DEADLINE_S) -> bool:
        """Retry what is pending with exponential backoff, for at most `deadline_s` seconds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline_s
        delay = 1.0
        while not await self.flush():
            if loop.time() + delay > give_up:
                log.error(
                    "gave up reporting %s to TrainingRun %s/%s after %.0f s",
                    ", ".join(sorted(self.pending)), self.namespace, self.name, deadline_s,
                )  # fmt: skip
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
        return True


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
            for line in complete.splitlines():
                if line and (fields := status_patch(json.loads(line))):
                    reporter.add(fields)
            await reporter.flush()
        if exited:
            await reporter.drain()
            return
        await asyncio.sleep(POLL_S)


# The pipeline logs "HH:MM:SS ERROR   <message>" on stderr; its error is the last such line.
ERROR_LINE = re.compile(r"^\d{2}:\d{2}:\d{2} (?:ERROR|CRITICAL)\s+(?P<message>.+)$")
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_MAX = 4096


class StderrTail:
    """Copies the pipeline's stderr through and keeps its last error line."""

    def __init__(self) -> None:
        """Nothing seen yet."""
        self.last_line = ""
        self.last_error = ""

    async def pump(self, stream: asyncio.StreamReader) -> None:
        """Copy `stream` to our stderr line by line until it closes."""
        while raw := await stream.readline():
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
            line = raw.decode(errors="replace").strip()
            if line:
                self.last_line = line
                if match := ERROR_LINE.match(line):
                    self.last_error = match["message"]

    @property
    def message(self) -> str:
        """The pipeline's one-line error: its last ERROR line, else its last line."""
        return self.last_error or self.last_line


def write_termination_message(message: str) -> None:
    """Leave `message` where the kubelet reads the container's termination message."""
    path = Path(os.environ.get(ENV_TERMINATION_MESSAGE_PATH, TERMINATION_MESSAGE_PATH))
    if not message or not path.parent.is_dir():
        return
    try:
        path.write_bytes(message.encode()[:TERMINATION_MESSAGE_MAX])
    except OSError as e:
        log.warning("cannot write the termination message to %s: %s", path, e)


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
    tail = StderrTail()
    with tempfile.TemporaryDirectory(prefix="pulse-driver-") as folder:
        progress_file = Path(folder) / "progress.jsonl"
        command = pipeline_command(cli_args, progress_file)
        log.info("running %s", command)
        process = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
        assert process.stderr is not None
        pump = asyncio.create_task(tail.pump(process.stderr))
        follower = asyncio.create_task(follow(progress_file, process, reporter))
        code = await wait_forwarding_signals(process)
        await pump
        if code != 0:
            write_termination_message(tail.message or f"the pipeline exited {code}")
            if not_retryable(progress_file):
                log.error("the pipeline's error is not retryable: exiting %d", EXIT_DO_NOT_RETRY)
                code = EXIT_DO_NOT_RETRY
        try:
            await follower
        except DriverError as e:
            # The run is gone (deleted): nothing to report to; the exit code stays the pipeline's.
            log.error("%s", e)
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
