"""TrainingConfig: every knob of a run, validated once, immutable afterwards.

Precedence is defaults < YAML file (``--config``) < command-line flags. Field names are
the snake_case of the CLI flags and of the TrainingRun spec's camelCase fields, so one
name works everywhere. Each field's description is its documentation (``--help`` and the
README reference are built from the same words).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recursive_training.constants import (
    DEFAULT_ALPHA_GRID,
    DEFAULT_INPUT_DATA,
    DEFAULT_RESULTS_FILE,
    DEFAULT_SCALE_WINDOW,
)
from recursive_training.exceptions import ConfigError
from recursive_training.s3_location import S3Location, S3Settings, is_s3_uri
from recursive_training.sizes import parse_bytes

DEFAULT_RULES: tuple[str, ...] = ("momentum(5)", "mean_reversion(20)", "model")


class TrainingConfig(BaseModel):
    """All settings of one training run."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    # --- data -------------------------------------------------------------------------
    input_data: str = Field(
        DEFAULT_INPUT_DATA,
        description="Data source: builtin:synthetic[?n_variables=N&years=Y&seed=S], "
        "builtin:macro, a local CSV/Parquet file or folder, or s3://bucket/key (an object or "
        "a folder of objects).",
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
    max_batches: int = Field(
        5000,
        ge=1,
        description="Refuse a date range that makes more batches than this (a typing error in "
        "a date or --batch-size-days); 5000 is 1-day batches over 13 years.",
    )

    # --- model ------------------------------------------------------------------------
    horizon: int = Field(
        1, ge=1, description="Forecast horizon h in steps (rows); --horizons gives several."
    )
    horizons: tuple[int, ...] | None = Field(
        None,
        description="Several forecast horizons in one run, increasing (1,5,20): each has its "
        "own samples, walk-forward models, metrics and rule counts, as if run alone; the "
        "features are built once for all. Replaces --horizon.",
    )
    lags: int = Field(
        5, ge=1, description="Number of past changes of every variable used as features."
    )
    ridge_alpha: float | Literal["auto"] = Field(
        0.01,
        description="Ridge penalty on standardized features (0 = ordinary least squares), or "
        "auto: each batch and target uses the alpha_grid value with the least walk-forward "
        "squared error on earlier batches (0.01 until it has one).",
    )
    alpha_grid: tuple[float, ...] = Field(
        DEFAULT_ALPHA_GRID,
        description="Penalties ridge_alpha auto chooses from (default 0.001 to 1000, two a "
        "decade); ignored with a fixed ridge_alpha.",
    )
    half_life_days: float | None = Field(
        None, gt=0, description="Exponential forgetting half-life in days; default: no forgetting."
    )
    min_train_samples: int | None = Field(
        None,
        ge=1,
        description="A batch is evaluated only once this many samples were known before it; "
        "default: twice the number of features, at least 30.",
    )
    model: Literal["var", "ar", "pooled"] = Field(
        "var",
        description="Model structure: var (every variable on the lags of every variable), ar "
        "(each series on its own lags, one model per series) or pooled (one model shared by "
        "all series); ar and pooled grow linearly with the number of series.",
    )
    exog: tuple[str, ...] = Field(
        (),
        description="Shared regressors for ar and pooled: variables whose lags every series "
        "also uses (a market index, say); they are not modelled themselves.",
    )
    pooled_scale: Literal["rms", "none"] = Field(
        "rms",
        description="How pooled puts series of different scales on one footing: rms divides "
        "each sample by its series' RMS change over the scale_window changes up to its origin "
        "(known then, no look-ahead); none pools the raw changes.",
    )
    scale_window: int = Field(
        DEFAULT_SCALE_WINDOW, ge=1, description="Changes in the pooled rms scale."
    )
    max_memory: int | None = Field(
        None,
        gt=0,
        description="Memory budget in bytes (or 8GB, 512MiB, 8Gi) a var run's statistics must "
        "fit, checked before any data is read; default: half of this machine's memory (of the "
        "container's limit when it has one).",
    )
    rules: tuple[str, ...] = Field(
        DEFAULT_RULES,
        description="Rules whose trust is learned: momentum(W), mean_reversion(W), cross "
        "(every ordered pair), cross(U->V), model.",
    )
    intervals: tuple[float, ...] = Field(
        (),
        description="Levels of walk-forward conformal prediction intervals (0.8,0.95): each "
        "prediction gets lower_80/upper_80... from the absolute residuals of its series' "
        "predictions realized before its batch; default: none.",
    )
    fdr: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="False discovery rate of rule validation: a rule is validated when "
        "Benjamini-Hochberg over all rules of the run rejects 'hit rate <= 0.5' at this level.",
    )

    # --- execution --------------------------------------------------------------------
    use_dask: bool = Field(False, description="Run batches on a local Dask cluster.")
    max_workers: int | None = Field(
        None, ge=1, description="Dask workers for --use-dask; default: one per CPU core."
    )
    dask_scheduler_address: str | None = Field(
        None, description="Address of an existing Dask scheduler (tcp://host:8786)."
    )
    dask_connect_timeout: float = Field(
        30.0, gt=0, description="Seconds to wait for the Dask scheduler to answer before failing."
    )
    batch_timeout: float | None = Field(
        3600.0,
        gt=0,
        description="Fail the run when one batch runs longer than this many seconds, or when "
        "no batch starts for that long (no workers).",
    )
    run_timeout: float | None = Field(
        None, gt=0, description="Fail the run when it takes longer than this many seconds."
    )
    checkpoint_dir: str | None = Field(
        None,
        description="Folder (local or s3://) where finished batches are saved so a restarted "
        "run with the same settings skips them.",
    )

    # --- output -----------------------------------------------------------------------
    output_dir: str = Field(
        "training_results", description="Folder for results, state and predictions."
    )
    output_file: str = Field(
        DEFAULT_RESULTS_FILE, description="Results JSON file name (relative to output_dir) or path."
    )
    overwrite: bool = Field(False, description="Replace results of an earlier run in output_dir.")
    report_dir: str | None = Field(
        None, description="Also render a PNG/HTML report into this folder."
    )
    resume_from: str | None = Field(
        None, description="State file of an earlier run to continue learning from."
    )

    # --- s3 ---------------------------------------------------------------------------
    # Credentials are never settings: they come from the AWS chain (environment, profile,
    # IRSA web identity, instance metadata) or from a profile or environment variables the
    # settings *name*, so no secret is ever echoed in the results.
    s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, R2, ...) for every s3:// location; "
        "default: AWS, or the AWS_ENDPOINT_URL environment variable.",
    )
    s3_region: str | None = Field(
        None, description="Region of the S3 buckets; default: from the AWS chain (AWS_REGION)."
    )
    s3_profile: str | None = Field(
        None,
        description="AWS profile (shared config and credentials files) to reach S3 with; "
        "default: the AWS chain.",
    )
    s3_credentials_env: str | None = Field(
        None,
        description="Read the S3 credentials from PREFIX + ACCESS_KEY_ID, SECRET_ACCESS_KEY "
        "(and SESSION_TOKEN) instead of the AWS chain, e.g. DATA_AWS_.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    # The outputs (results, state, predictions, checkpoints, and --resume-from, an output of
    # an earlier run) may live in another store than the data: each falls back to the above.
    s3_output_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint of the outputs (results, state, predictions, "
        "checkpoints, resume_from); default: s3_endpoint_url.",
    )
    s3_output_region: str | None = Field(
        None, description="Region of the outputs' bucket; default: s3_region."
    )
    s3_output_profile: str | None = Field(
        None, description="AWS profile to write the outputs with; default: as the data."
    )
    s3_output_credentials_env: str | None = Field(
        None,
        description="Read the outputs' S3 credentials from PREFIX + ACCESS_KEY_ID, "
        "SECRET_ACCESS_KEY (and SESSION_TOKEN), e.g. OUTPUT_AWS_; default: as the data.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    s3_data_bucket: str | None = Field(
        None, description="Read the data from this bucket: input_data = s3://BUCKET/PREFIX."
    )
    s3_data_prefix: str | None = Field(
        None, description="Object key or folder prefix in s3_data_bucket; default: the bucket root."
    )
    s3_results_bucket: str | None = Field(
        None,
        description="Write results, state and predictions to this bucket: "
        "output_dir = s3://BUCKET/PREFIX.",
    )
    s3_results_prefix: str | None = Field(
        None, description="Folder prefix in s3_results_bucket; default: training_results."
    )
    s3_output_file: str | None = Field(
        None, description="Write the results JSON to this s3://bucket/key (sets output_file)."
    )
    # The defaults give up on an endpoint that accepts connections and never answers
    # within about 30 s: 3 attempts x 8 s plus backoff (tests/integration/s3).
    s3_max_attempts: int = Field(
        3, ge=1, description="Attempts per S3 request (retries with backoff) before failing."
    )
    s3_connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to wait for an S3 connection."
    )
    s3_read_timeout: float = Field(
        8.0, gt=0, description="Seconds to wait for each part of an S3 response."
    )

    # --- logging ----------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Console log level."
    )
    log_dir: str | None = Field(None, description="Also write a log file into this folder.")
    progress: bool | None = Field(
        None, description="Show a progress bar; default: only when stderr is a terminal."
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_s3_shorthands(cls, data: Any) -> Any:
        """Turn the s3_*_bucket/prefix/file shorthands into input_data, output_dir, output_file."""
        if not isinstance(data, dict):
            return data
        fields = dict(data)
        expanded: dict[str, str] = {}
        if fields.get("s3_data_bucket"):
            expanded["input_data"] = _s3_uri(fields["s3_data_bucket"], fields.get("s3_data_prefix"))
        elif fields.get("s3_data_prefix") is not None:
            raise ValueError(
                "s3_data_prefix (--s3-data-prefix) needs s3_data_bucket (--s3-data-bucket)"
            )
        if fields.get("s3_results_bucket"):
            prefix = fields.get("s3_results_prefix") or cls.model_fields["output_dir"].default
            expanded["output_dir"] = _s3_uri(fields["s3_results_bucket"], prefix)
        elif fields.get("s3_results_prefix") is not None:
            raise ValueError(
                "s3_results_prefix (--s3-results-prefix) needs s3_results_bucket "
                "(--s3-results-bucket)"
            )
        if fields.get("s3_output_file"):
            if not str(fields["s3_output_file"]).startswith("s3://"):
                raise ValueError(
                    f"s3_output_file (--s3-output-file) must be an s3://bucket/key URI, got "
                    f"{fields['s3_output_file']!r}; use --output-file for a local name"
                )
            expanded["output_file"] = str(fields["s3_output_file"])
        shorthands = {
            "input_data": "s3_data_bucket",
            "output_dir": "s3_results_bucket",
            "output_file": "s3_output_file",
        }
        for name, value in expanded.items():
            given = fields.get(name)
            if given is not None and given != value:
                raise ValueError(
                    f"{shorthands[name]} ({cli_flag(shorthands[name])}) sets {name} to {value} but "
                    f"{name} ({cli_flag(name)}) is {given}; give only one of them"
                )
            fields[name] = value
        return fields

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

    @field_validator("exog")
    @classmethod
    def _check_exog(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(v.strip() for v in value if v.strip())
        duplicates = sorted({v for v in names if names.count(v) > 1})
        if duplicates:
            raise ValueError(f"lists {', '.join(duplicates)} more than once")
        return names

    @field_validator("horizons")
    @classmethod
    def _check_horizons(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one horizon (--horizons 1,5,20)")
        if min(value) < 1:
            raise ValueError(f"horizons must be at least 1 step; got {_listed(value)}")
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"list horizons once each, increasing (1,5,20); got {_listed(value)}")
        return value

    @field_validator("intervals")
    @classmethod
    def _check_intervals(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        outside = [f"{q:g}" for q in value if not 0 < q < 1]
        if outside:
            raise ValueError(
                f"levels must lie strictly between 0 and 1 (0.8 for an 80% interval), got "
                f"{', '.join(outside)}"
            )
        if list(value) != sorted(set(value)):
            raise ValueError(f"list each level once, in increasing order, got {list(value)}")
        return tuple(value)
    @field_validator("ridge_alpha", mode="before")
    @classmethod
    def _parse_alpha(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        number = _number(value)
        if number is None:
            raise ValueError(f"must be a number or auto, got {value!r}")
        if not number >= 0:
            raise ValueError(f"must be at least 0 (or auto), got {value!r}")
        return number

    @field_validator("alpha_grid", mode="before")
    @classmethod
    def _parse_grid(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ValueError("must list at least one penalty, as 0.01,0.1,1")
        numbers = [_number(item) for item in items]
        bad = [item for item, n in zip(items, numbers, strict=True) if n is None or not n >= 0]
        if bad:
            raise ValueError(f"penalties must be numbers of at least 0, got {bad[0]!r}")
        return tuple(sorted({n for n in numbers if n is not None}))

    @field_validator("max_memory", mode="before")
    @classmethod
    def _parse_bytes(cls, value: Any) -> Any:
        return parse_bytes(value) if isinstance(value, str) else value

    @field_validator("rules")
    @classmethod
    def _check_rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # here, not at the top: the rules module brings numpy, which --help does not need
        from recursive_training.rules import parse_rules

        parse_rules(value)  # raises ConfigError with the offending rule named
        return tuple(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainingConfig:
        if (
            self.start_date is not None
            and self.end_date is not None
            and self.start_date >= self.end_date
        ):
            raise ValueError(
                f"start_date {self.start_date:%Y-%m-%d} must be before "
                f"end_date {self.end_date:%Y-%m-%d}"
            )
        if self.horizons is not None and "horizon" in self.model_fields_set:
            raise ValueError(
                "horizon (--horizon) and horizons (--horizons) were both given; give one: "
                "--horizons 1,5,20 for several, --horizon 5 for one"
            )
        if self.exog and self.model == "var":
            raise ValueError(
                "exog applies to model ar and pooled; var already regresses every series on "
                "the lags of every variable (list the regressors among the variables)"
            )
        if self.max_workers is not None and not (self.use_dask or self.dask_scheduler_address):
            raise ValueError("max_workers needs use_dask (--use-dask)")
        if self.use_dask and self.dask_scheduler_address:
            raise ValueError(
                "use_dask starts a local cluster; drop it when giving dask_scheduler_address"
            )
        for name in ("input_data", "output_dir", "output_file", "resume_from"):
            value = getattr(self, name)
            if value is not None and is_s3_uri(value):
                try:
                    S3Location.parse(value)
                except ValueError as e:
                    raise ValueError(f"{name} ({cli_flag(name)}): {e}") from None
        for name in ("report_dir", "log_dir"):
            if is_s3_uri(getattr(self, name) or ""):
                raise ValueError(f"{name} ({cli_flag(name)}) must be a local folder, not S3")
        for name in ("s3_endpoint_url", "s3_output_endpoint_url"):
            value = getattr(self, name)
            if value and not value.startswith(("http://", "https://")):
                raise ValueError(
                    f"{name} ({cli_flag(name)}) must start with http:// or https://, got {value!r}"
                )
        for prefix in ("s3", "s3_output"):
            if getattr(self, f"{prefix}_profile") and getattr(self, f"{prefix}_credentials_env"):
                raise ValueError(
                    f"{prefix}_profile ({cli_flag(prefix + '_profile')}) and "
                    f"{prefix}_credentials_env ({cli_flag(prefix + '_credentials_env')}) both "
                    "name the credentials; keep one"
                )
        return self

    @property
    def output_s3_settings(self) -> S3Settings:
        """How the driver reaches the outputs' store: its own settings, else the data's."""
        own_credentials = self.s3_output_profile or self.s3_output_credentials_env
        data = self.s3_settings
        return dataclasses.replace(
            data,
            endpoint_url=self.s3_output_endpoint_url or data.endpoint_url,
            region=self.s3_output_region or data.region,
            profile=self.s3_output_profile if own_credentials else data.profile,
            credentials_env=self.s3_output_credentials_env if own_credentials
            else data.credentials_env,
        )  # fmt: skip

    @property
    def s3_settings(self) -> S3Settings:
        """How to reach the data's store: what the driver and every worker read it with."""
        return S3Settings(
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            profile=self.s3_profile,
            credentials_env=self.s3_credentials_env,
            max_attempts=self.s3_max_attempts,
            connect_timeout=self.s3_connect_timeout,
            read_timeout=self.s3_read_timeout,
        )

    @property
    def forecast_horizons(self) -> tuple[int, ...]:
        """The run's horizons: ``horizons``, else the one ``horizon``."""
        return self.horizons if self.horizons is not None else (self.horizon,)

    def evaluation_threshold(self, n_features: int) -> int:
        """Samples a batch's prefix needs before the batch is evaluated."""
        return self.min_train_samples or max(30, 2 * n_features)

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
            include={
                "input_data",
                "variables",
                "start_date",
                "end_date",
                "fill_limit",
                "horizon",
                "lags",
                "ridge_alpha",
                "half_life_days",
                "rules",
                "min_train_samples",
                "model",
                "exog",
                "pooled_scale",
                "scale_window",
            },
        )
        if self.horizons is not None:  # one-horizon runs keep the hash they always had
            learned["horizons"] = list(self.horizons)
        if self.ridge_alpha == "auto":  # a fixed run's hash stays what it was before the grid
            learned["alpha_grid"] = list(self.alpha_grid)
        return hashlib.sha256(json.dumps(learned, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def build(cls, **fields: Any) -> TrainingConfig:
        """Validate ``fields`` into a config, raising ConfigError with the field named."""
        try:
            return cls(**fields)
        except ValidationError as e:
            raise ConfigError(describe_validation_error(e)) from e


def cli_flag(name: str) -> str:
    """The command-line flag of a field (``report_dir`` is ``--report``)."""
    return "--" + name.replace("_", "-").replace("report-dir", "report")


def _listed(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def _number(value: Any) -> float | None:
    """``value`` as a finite float (from a number or its text), or None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _s3_uri(bucket: Any, prefix: Any) -> str:
    """``s3://bucket/prefix`` from the shorthand fields."""
    return f"s3://{str(bucket).strip('/')}/{str(prefix or '').lstrip('/')}"


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
        flag = cli_flag(field.split(".")[0])
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
        raise ConfigError(
            f"config file {path} must be a mapping of settings, got {type(loaded).__name__}"
        )
    known = set(TrainingConfig.model_fields)
    fields = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known settings are listed by --help"
        )
    return fields
