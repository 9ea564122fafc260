"""Progress of the map stages: a tqdm bar per stage on a terminal, log lines otherwise."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import TracebackType

from tqdm import tqdm

from recursive_training.exceptions import ConfigError

log = logging.getLogger(__name__)


class ProgressBar:
    """A ``ProgressCallback`` that draws one bar per stage (statistics, evaluation)."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: tqdm | None = None  # type: ignore[type-arg]
        self._stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            if self.enabled:
                self._bar = tqdm(
                    total=total, desc=f"{stage:<10}", unit="batch", file=sys.stderr, leave=False
                )
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        elif done == total:
            log.info("Stage %s: %d/%d batches done", stage, done, total)

    def close(self) -> None:
        """Finish the current bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ProgressFile:
    """A ``ProgressCallback`` that appends one JSON line per update to a file, for other programs.

    Lines are ``{"event": "progress", "stage": S, "done": D, "total": T}`` as batches finish
    and, once the results are written, one ``{"event": "results", "uri": U, "headline": H}``
    line; a run that fails with a ``TrainingError`` ends with ``{"event": "error",
    "message": M, "retryable": R}``. Each line is flushed whole, so a reader tailing the
    file never sees half a record.
    This is how the Kubernetes driver (``trainingrun_operator.driver``) follows a run without
    importing the pipeline.
    """

    def __init__(self, path: str) -> None:
        try:
            self._file = Path(path).open("a", encoding="utf-8")  # noqa: SIM115 - see close()
        except OSError as e:
            raise ConfigError(f"cannot write --progress-file {path}: {e.strerror or e}") from e

    def _write(self, record: dict[str, object]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def __call__(self, stage: str, done: int, total: int) -> None:
        self._write({"event": "progress", "stage": stage, "done": done, "total": total})

    def results(self, uri: str, headline: dict[str, object]) -> None:
        """Record where the results went and their headline metrics."""
        self._write({"event": "results", "uri": uri, "headline": headline})

    def error(self, message: str, retryable: bool) -> None:
        """Record the run's one-line error and whether running it again may succeed."""
        self._write({"event": "error", "message": message, "retryable": retryable})

    def close(self) -> None:
        """Close the file."""
        self._file.close()
