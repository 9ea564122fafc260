"""TrainingConfig: every knob of a run, validated once, immutable afterwards.

Precedence is defaults < YAML file (``--config``) < command-line flags. Field names are
the snake_case of the CLI flags and of the TrainingRun spec's camelCase fields, so one
name works everywhere. Each field's description is its documentation (``--help`` and the
README reference are built from the same words).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recursive_training.constants import DEFAULT_INPUT_DATA, DEFAULT_RESULTS_FILE
from recursive_training.exceptions import ConfigError
from recursive_training.rules import parse_rules

DEFAULT_RULES: tuple[str, ...] = ("momentum(5)", "mean_reversion(20)", "model")


class TrainingConfig(BaseModel):
    """All settings of one training run."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    # --- data -------------------------------------------------------------------------
    input_data: str = Field(
        DEFAULT_INPUT_DATA,
        description="Data source: builtin:synthetic[?n_variables=N&years=Y&seed=S], "
        "builtin:macro, or a local CSV/Parquet file or folder.",
    )
    input_format: Literal["auto", "csv", "parquet"] = Field(
        "auto", description="File format of local data; auto uses the file extension."
    )
    variables: tuple[str, ...] | None = Field(
        None, description="Variables (columns) to model; default: every variable in the data."
    )
    start_date: datetime | None = Field(
        None, description="First realization date trained on (inclusive); default: data start."
    )
    end_date: datetime | None = Field(
        None, description="End of the range (exclusive); default: just after the last row."
    )
    batch_size_days: int = Field(365, gt=0, description="Length of each date-range batch in days.")
    fill_limit: int = Field(
        3, ge=0, description="Forward-fill at most this many consecutive missing values."
    )

    # --- model ------------------------------------------------------------------------
    horizon: int = Field(1, ge=1, description="Forecast horizon h in steps (rows).")
    lags: int = Field(5, ge=1, description="Number of past changes of every variable used as features.")
    ridge_alpha: float = Field(
        0.01,
        ge=0,
        description="Ridge penalty on standardized features (0 = ordinary least squares).",
    )
    half_life_days: float | None = Field(
        None, gt=0, description="Exponential forgetting half-life in days; default: no forgetting."
    )
    min_train_samples: int = Field(
        30, ge=1, description="A batch is evaluated only once this many samples were known before it."
    )
    rules: tuple[str, ...] = Field(
        DEFAULT_RULES,
        description="Rules whose trust is learned: momentum(W), mean_reversion(W), cross "
        "(every ordered pair), cross(U->V), model.",
    )

    # --- execution --------------------------------------------------------------------
    use_dask: bool = Field(False, description="Run batches on a local Dask cluster.")
    max_workers: int | None = Field(
        None, ge=1, description="Dask workers for --use-dask; default: one per CPU core."
    )
    dask_scheduler_address: str | None = Field(
        None, description="Address of an existing Dask scheduler (tcp://host:8786)."
    )

    # --- output -----------------------------------------------------------------------
    output_dir: str = Field("training_results", description="Folder for results, state and predictions.")
    output_file: str = Field(
        DEFAULT_RESULTS_FILE, description="Results JSON file name (relative to output_dir) or path."
    )
    overwrite: bool = Field(False, description="Replace results of an earlier run in output_dir.")
    report_dir: str | None = Field(None, description="Also render a PNG/HTML report into this folder.")
    resume_from: str | None = Field(
        None, description="State file of an earlier run to continue learning from."
    )

    # --- logging ----------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Console log level.")
    log_dir: str | None = Field(None, description="Also write a log file into this folder.")
    progress: bool | None = Field(
        None, description="Show a progress bar; default: only when stderr is a terminal."
    )

    @field_validator("variables")
    @classmethod
    def _check_variables(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        names = tuple(v.strip() for v in value if v.strip())
        if not names:
            raise ValueError("must name at least one variable")
        duplicates = sorted({v for v in names if names.count(v) > 1})
        if duplicates:
            raise ValueError(f"lists {', '.join(duplicates)} more than once")
        return names

    @field_validator("rules")
    @classmethod
    def _check_rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_rules(value)  # raises ConfigError with the offending rule named
        return tuple(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainingConfig:
        if self.start_date is not None and self.end_date is not None and self.start_date >= self.end_date:
            raise ValueError(
                f"start_date {self.start_date:%Y-%m-%d} must be before end_date {self.end_date:%Y-%m-%d}"
            )
        if self.max_workers is not None and not (self.use_dask or self.dask_scheduler_address):
            raise ValueError("max_workers needs use_dask (--use-dask)")
        if self.use_dask and self.dask_scheduler_address:
            raise ValueError("use_dask starts a local cluster; drop it when giving dask_scheduler_address")
        return self

    @property
    def results_path(self) -> str:
        """Where the results JSON goes: output_file, relative to output_dir unless absolute."""
        if "://" in self.output_file or Path(self.output_file).is_absolute():
            return self.output_file
        return f"{self.output_dir.rstrip('/')}/{self.output_file}"

    def training_fingerprint(self) -> str:
        """Hash of the fields that change what is learned (not where it is written)."""
        learned = self.model_dump(
            mode="json",
            include={"input_data", "variables", "start_date", "end_date", "fill_limit", "horizon",
                     "lags", "ridge_alpha", "half_life_days", "rules", "min_train_samples"},
        )
        return hashlib.sha256(json.dumps(learned, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def build(cls, **fields: Any) -> TrainingConfig:
        """Validate ``fields`` into a config, raising ConfigError with the field named."""
        try:
            return cls(**fields)
        except ValidationError as e:
            raise ConfigError(describe_validation_error(e)) from e


def describe_validation_error(error: ValidationError) -> str:
    """Turn pydantic's report into one line per problem, naming field and flag."""
    problems = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"] if not isinstance(p, int))
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; see --help)"
        shows_input = item["type"] not in ("extra_forbidden", "value_error")
        got = f", got {item.get('input')!r}" if shows_input else ""
        flag = "--" + field.split(".")[0].replace("_", "-")
        problems.append(f"{field} ({flag}): {message}{got}" if field else message)
    return "invalid configuration: " + "; ".join(problems)


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML config file into a dict of fields (keys may be snake_case or kebab-case)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings, got {type(loaded).__name__}")
    known = set(TrainingConfig.model_fields)
    fields = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known settings are listed by --help"
        )
    return fields
