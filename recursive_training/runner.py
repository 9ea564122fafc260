"""One run of the pipeline from a validated config: check, train, write, report."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recursive_training import interrupts, storage
from recursive_training.config import TrainingConfig
from recursive_training.interrupts import Outcome
from recursive_training.progress import ProgressBar, ProgressFile
from recursive_training.results import (
    PredictionsSpool,
    build_document,
    check_output_free,
    metrics_table,
    referenced_files,
    write_outputs,
)
from recursive_training.stages import TrainingPipeline
from recursive_training.state import TrainingState

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("recursive_training")


def run(
    config: TrainingConfig, progress_file: str | None = None, outcome: Outcome | None = None
) -> dict[str, Any]:
    """Run training with ``config``, write its files, and return the results document.

    With ``progress_file``, progress and the results' location and headline metrics are
    also appended there as JSON lines (see ``ProgressFile``).
    """
    outcome = outcome or Outcome()
    check_output_free(config)
    for folder in {config.output_dir, config.results_path.rpartition("/")[0] or "."}:
        storage.check_writable(folder, config.output_s3_settings)
    if config.report_dir:
        storage.check_writable(config.report_dir)
    state = load_resume_state(config.resume_from, config) if config.resume_from else None
    reporter = ProgressFile(progress_file) if progress_file else None
    try:
        with ProgressBar(config.progress) as bar, PredictionsSpool() as spool:

            def progress(stage: str, done: int, total: int) -> None:
                bar(stage, done, total)
                if reporter is not None:
                    reporter(stage, done, total)

            pipeline = TrainingPipeline(progress=progress, predictions_sink=spool)
            result = pipeline.execute(config, state)
            document = build_document(result)
            predictions = spool.finish(result.predictions_frame)
            report = _StagedReport(config.report_dir) if config.report_dir else None
            try:
                if report is not None:
                    report.render(document, metrics_table(result).to_pandas(), predictions)

                def committed() -> None:
                    outcome.results = config.results_path
                    if report is not None:
                        report.install()

                write_outputs(result, config, document, predictions, on_commit=committed)
            finally:
                if report is not None:
                    report.discard()
            log.info("Wrote %s", config.results_path)
            if report is not None:
                log.info("Report: %s", Path(report.target) / "index.html")
            if reporter is not None:
                reporter.results(config.results_path, document["metrics"]["headline"])
    finally:
        if reporter is not None:
            reporter.close()
    return document


def load_resume_state(location: str, config: TrainingConfig) -> TrainingState:
    """The state named by ``--resume-from``: a state file, or a results JSON naming one."""
    data = storage.read_bytes(location, config.output_s3_settings)
    files = None if data.startswith(b"PK") else referenced_files(data, location)
    if files is not None and "state" in files:
        location = files["state"]
        data = storage.read_bytes(location, config.output_s3_settings)
    return TrainingState.from_bytes(data, location)


class _StagedReport:
    """A report rendered next to its folder and moved into place when the results commit."""

    def __init__(self, target: str) -> None:
        self.target = Path(target)
        self.staged = self.target.with_name(f".{self.target.name}.{uuid.uuid4().hex[:12]}.tmp")

    def render(self, document: dict[str, Any], series: pd.DataFrame, predictions: Path) -> None:
        """Render the charts and page into the staging folder, reading from the predictions
        file only the series it draws."""
        from recursive_training.report import render_report

        render_report(document, series, predictions, str(self.staged))

    def install(self) -> None:
        """Swap the staged report in for an earlier one (signals are held by the caller)."""
        replaced = self.target.with_name(f"{self.staged.name}.old")
        try:
            if self.target.exists():
                self.target.rename(replaced)
            self.staged.rename(self.target)
        except OSError as e:  # the results are committed: a report problem must not undo them
            log.warning("could not move the report into %s: %s", self.target, e.strerror or e)
            return
        shutil.rmtree(replaced, ignore_errors=True)

    def discard(self) -> None:
        """Remove the staging folder if it was not installed."""
        with interrupts.held():
            shutil.rmtree(self.staged, ignore_errors=True)
