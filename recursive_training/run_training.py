"""Command line of the pipeline: ``pulse-train`` / ``python -m recursive_training.run_training``.

Settings come from defaults < ``--config`` YAML < flags. Exit status is 0 when the run's
results are complete and 1 when no new results were written (an error a user can fix,
reported in one line without a traceback, or Ctrl-C); 143 after SIGTERM. Only the
standard library is imported at the top, so the signal handlers are in place before the
slow imports (pandas, boto3, pydantic) begin: an interruption at any moment gets one line.
With ``--progress-file`` an error is also recorded there with whether a retry may help
(``TrainingError.retryable``), so the Kubernetes driver stops retrying a bad input.
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):  # run as a file: put the project, not this folder, on sys.path
    from pathlib import Path

    _here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from recursive_training import interrupts
from recursive_training.exceptions import ConfigError, TrainingError

if TYPE_CHECKING:
    from recursive_training.config import TrainingConfig

log = logging.getLogger("recursive_training")

EPILOG = """\
examples:
  pulse-train --output-dir out                          # built-in synthetic data, serial
  pulse-train --input-data builtin:macro --variables realgdp,cpi,unemp --batch-size-days 1825
  pulse-train --input-data prices.parquet --start-date 2010-01-01 --end-date 2020-01-01 \\
              --use-dask --max-workers 4 --report out/report
  pulse-train --config run.yaml --resume-from out/results.json --start-date 2020-01-01
  pulse-train --input-data s3://prices/daily/ --output-dir s3://results/run-42 \\
              --s3-endpoint-url http://minio:9000         # MinIO; credentials from AWS_*

Exit status: 0 when the results are complete; 1 when no new results were written (a
configuration, data or execution error, or Ctrl-C); 143 after SIGTERM.
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become ConfigError (exit 1, one line)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")


def _field_help(name: str, extra: str = "") -> str:
    """A flag's help: the config field's description, ``extra``, and its default."""
    from recursive_training.config import TrainingConfig

    field = TrainingConfig.model_fields[name]
    default = field.default
    shown = (
        ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in default)
        if isinstance(default, tuple)
        else default
    )
    suffix = "" if default in (None, False, ()) else f" (default: {shown})"
    description = str(field.description)
    return f"{description.rstrip('.') + extra + '.' if extra else description}{suffix}"


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _levels(text: str) -> list[float]:
    """Interval levels: numbers separated by commas."""
    try:
        return [float(part) for part in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected levels such as 0.8,0.95, got {text!r}"
        ) from None


def _rules(text: str) -> list[str]:
    """Split a rule list on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [p for p in [*parts, current.strip()] if p]


class _Version(argparse.Action):
    """``--version``, with the version looked up only when it is asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from recursive_training import __version__

        print(f"{parser.prog} {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every setting's help comes from TrainingConfig."""
    parser = _Parser(
        prog="pulse-train",
        description="Retrodiction training: learn walk-forward ridge models and rule trust over "
        "date-range batches of historical time series, serially or on Dask.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show program's version number and exit"
    )
    parser.add_argument(
        "--config", metavar="YAML", help="YAML file of settings; flags override it."
    )

    data = parser.add_argument_group("data")
    data.add_argument("--input-data", metavar="URI", help=_field_help("input_data"))
    data.add_argument(
        "--input-format", choices=["auto", "csv", "parquet"], help=_field_help("input_format")
    )
    data.add_argument("--variables", type=_csv, metavar="A,B,...", help=_field_help("variables"))
    data.add_argument("--start-date", metavar="DATE", help=_field_help("start_date"))
    data.add_argument("--end-date", metavar="DATE", help=_field_help("end_date"))
    data.add_argument(
        "--batch-size-days", type=int, metavar="DAYS", help=_field_help("batch_size_days")
    )
    data.add_argument("--fill-limit", type=int, metavar="ROWS", help=_field_help("fill_limit"))
    data.add_argument("--max-batches", type=int, metavar="N", help=_field_help("max_batches"))

    model = parser.add_argument_group("model and rules")
    model.add_argument("--horizon", type=int, metavar="STEPS", help=_field_help("horizon"))
    model.add_argument("--horizons", type=_csv, metavar="H1,H2,...", help=_field_help("horizons"))
    model.add_argument("--lags", type=int, metavar="L", help=_field_help("lags"))
    model.add_argument("--ridge-alpha", metavar="ALPHA|auto", help=_field_help("ridge_alpha"))
    model.add_argument(
        "--alpha-grid", type=_csv, metavar="A1,A2,...", help=_field_help("alpha_grid")
    )
    model.add_argument(
        "--half-life-days", type=float, metavar="DAYS", help=_field_help("half_life_days")
    )
    model.add_argument(
        "--min-train-samples", type=int, metavar="N", help=_field_help("min_train_samples")
    )
    model.add_argument("--model", choices=["var", "ar", "pooled"], help=_field_help("model"))
    model.add_argument("--exog", type=_csv, metavar="A,B,...", help=_field_help("exog"))
    model.add_argument("--pooled-scale", choices=["rms", "none"], help=_field_help("pooled_scale"))
    model.add_argument("--scale-window", type=int, metavar="ROWS", help=_field_help("scale_window"))
    model.add_argument("--max-memory", metavar="SIZE", help=_field_help("max_memory"))
    model.add_argument("--rules", type=_rules, metavar="R1,R2,...", help=_field_help("rules"))
    model.add_argument("--fdr", type=float, metavar="LEVEL", help=_field_help("fdr"))
    model.add_argument(
        "--intervals", type=_levels, metavar="Q1,Q2,...", help=_field_help("intervals")
    )

    execution = parser.add_argument_group("execution")
    execution.add_argument("--use-dask", action="store_true", help=_field_help("use_dask"))
    execution.add_argument("--max-workers", type=int, metavar="N", help=_field_help("max_workers"))
    execution.add_argument(
        "--dask-scheduler-address",
        metavar="ADDRESS",
        help=_field_help("dask_scheduler_address", "; also read from DASK_SCHEDULER_ADDRESS"),
    )
    for flag in ("--dask-connect-timeout", "--batch-timeout", "--run-timeout"):
        execution.add_argument(
            flag, type=float, metavar="SECONDS", help=_field_help(flag[2:].replace("-", "_"))
        )
    execution.add_argument("--checkpoint-dir", metavar="DIR", help=_field_help("checkpoint_dir"))

    output = parser.add_argument_group("output")
    output.add_argument("--output-dir", metavar="DIR", help=_field_help("output_dir"))
    output.add_argument("--output-file", metavar="NAME", help=_field_help("output_file"))
    output.add_argument("--overwrite", action="store_true", help=_field_help("overwrite"))
    output.add_argument(
        "--report", dest="report_dir", metavar="DIR", help=_field_help("report_dir")
    )
    output.add_argument("--resume-from", metavar="STATE", help=_field_help("resume_from"))

    s3 = parser.add_argument_group(
        "s3", "Credentials come from the AWS chain: environment, AWS_PROFILE, IRSA, instance role."
    )
    s3.add_argument("--s3-endpoint-url", metavar="URL", help=_field_help("s3_endpoint_url"))
    s3.add_argument("--s3-region", metavar="REGION", help=_field_help("s3_region"))
    s3.add_argument("--s3-profile", metavar="NAME", help=_field_help("s3_profile"))
    s3.add_argument(
        "--s3-credentials-env", metavar="PREFIX", help=_field_help("s3_credentials_env")
    )
    for name, metavar in (
        ("endpoint_url", "URL"), ("region", "REGION"), ("profile", "NAME"),
        ("credentials_env", "PREFIX"),
    ):  # fmt: skip
        field = f"s3_output_{name}"
        s3.add_argument(f"--{field.replace('_', '-')}", metavar=metavar, help=_field_help(field))
    s3.add_argument("--s3-data-bucket", metavar="BUCKET", help=_field_help("s3_data_bucket"))
    s3.add_argument("--s3-data-prefix", metavar="KEY", help=_field_help("s3_data_prefix"))
    s3.add_argument("--s3-results-bucket", metavar="BUCKET", help=_field_help("s3_results_bucket"))
    s3.add_argument("--s3-results-prefix", metavar="PREFIX", help=_field_help("s3_results_prefix"))
    s3.add_argument("--s3-output-file", metavar="S3_URI", help=_field_help("s3_output_file"))
    s3.add_argument("--s3-max-attempts", type=int, metavar="N", help=_field_help("s3_max_attempts"))
    for flag in ("--s3-connect-timeout", "--s3-read-timeout"):
        s3.add_argument(
            flag, type=float, metavar="SECONDS", help=_field_help(flag[2:].replace("-", "_"))
        )

    logs = parser.add_argument_group("logging")
    logs.add_argument("--log-level", metavar="LEVEL", help=_field_help("log_level"))
    logs.add_argument("--log-dir", metavar="DIR", help=_field_help("log_dir"))
    logs.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, help=_field_help("progress")
    )
    logs.add_argument(
        "--progress-file",
        metavar="PATH",
        help="Append progress and the results' headline as JSON lines to this file (read by the "
        "Kubernetes driver); not a setting of the run.",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse command-line flags; only the flags given appear in the namespace."""
    return build_parser().parse_args(argv)


def create_config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """Merge defaults, the YAML file and the flags into one validated TrainingConfig."""
    from recursive_training.config import TrainingConfig, load_config_file

    given: dict[str, Any] = dict(vars(args))
    given.pop("progress_file", None)  # where progress goes, not how the run trains
    fields = load_config_file(given.pop("config")) if "config" in given else {}
    if "dask_scheduler_address" not in given and os.environ.get("DASK_SCHEDULER_ADDRESS"):
        given["dask_scheduler_address"] = os.environ["DASK_SCHEDULER_ADDRESS"]
    fields.update(given)
    return TrainingConfig.build(**fields)


def setup_logging(level: str = "INFO", log_dir: str | None = None) -> Path | None:
    """Log to stderr at ``level`` and, with ``log_dir``, everything at DEBUG to a file there."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    root.setLevel(logging.DEBUG if log_dir else level)
    # botocore's DEBUG lines carry request headers, session tokens included: keep them out
    for library in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(library).setLevel(logging.INFO)
    if not log_dir:
        return None
    path = Path(log_dir) / f"pulse-train-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"cannot write a log file in --log-dir {log_dir}: {e.strerror or e}"
        ) from e
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(file_handler)
    return path


def main(argv: Sequence[str] | None = None, outcome: interrupts.Outcome | None = None) -> int:
    """Entry point: 0 with complete results, 1 without (one line, no traceback), 143 on SIGTERM."""
    outcome = outcome or interrupts.Outcome()
    args = None
    try:
        interrupts.handle_interruptions()
        args = parse_args(argv)
        config = create_config_from_args(args)
        setup_logging(config.log_level, config.log_dir)
        # --help and a bad flag answer at once: the heavy libraries come with the run
        from recursive_training.allocator import keep_freed_memory
        from recursive_training.results import summary
        from recursive_training.runner import run

        keep_freed_memory()
        document = run(config, getattr(args, "progress_file", None), outcome)
        _print(summary(document))
    except SystemExit as e:  # --help and --version
        return int(e.code or 0)
    except TrainingError as e:
        _ensure_logging()
        log.error("%s", e)
        _record_error(getattr(args, "progress_file", None), e)
        return 1
    except (KeyboardInterrupt, RuntimeError) as e:
        interruption = interrupts.interruption(e)
        if interruption is None:
            raise
        _ensure_logging()
        terminated = isinstance(interruption, interrupts.Terminated)
        cause = "terminated (SIGTERM)" if terminated else "interrupted"
        if outcome.results is not None:
            log.warning("%s after the results were complete: %s", cause, outcome.results)
            return 0
        log.error("%s; no new results were written (earlier results are unchanged)", cause)
        return interrupts.Terminated.exit_status if terminated else 1
    return 0


def _record_error(progress_file: str | None, error: TrainingError) -> None:
    """Leave the error and whether a retry may help in the progress file, when there is one."""
    if not progress_file:
        return
    from recursive_training.progress import ProgressFile

    with contextlib.suppress(TrainingError):
        reporter = ProgressFile(progress_file)
        reporter.error(str(error), error.retryable)
        reporter.close()


def _ensure_logging() -> None:
    """Console logging, if the run failed before it was set up."""
    if not logging.getLogger().handlers:
        setup_logging()


def _print(text: str) -> None:
    """Print to stdout; a reader that stopped early (``| head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # later flushes at exit would fail again: point stdout at nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cli() -> NoReturn:
    """Console-script wrapper: once ``main`` has decided the outcome, nothing may change it."""
    outcome = interrupts.Outcome()
    try:
        code = main(outcome=outcome)
    except KeyboardInterrupt:  # in the instant after main had settled the outcome and said it
        code = 0 if outcome.results else 1
    interrupts.ignore_interruptions()  # atexit hooks (Dask, temporary folders) run undisturbed
    sys.exit(code)


if __name__ == "__main__":
    cli()
