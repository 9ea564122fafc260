"""Progress of the map stages: a tqdm bar per stage on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
from types import TracebackType

from tqdm import tqdm

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
                self._bar = tqdm(total=total, desc=f"{stage:<10}", unit="batch", file=sys.stderr, leave=False)
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

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
