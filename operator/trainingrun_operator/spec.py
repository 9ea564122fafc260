"""A TrainingRun's spec as a frozen value object, and its translation to ``pulse-train`` flags.

The CRD schema already applied defaults and rejected bad values; ``RunSpec.from_body``
only reads, so the builders get typed fields instead of nested dict lookups. The flags
are the one contract with the pipeline (``recursive_training.run_training``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from trainingrun_operator.constants import DEFAULT_ALPHA_GRID, OUTPUT_CREDENTIALS_PREFIX
from trainingrun_operator.exceptions import InvalidSpecError

CHECKPOINT_FOLDER = "checkpoints"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """The fields of one TrainingRun that the builders and the reconcile loop use."""

    name: str
    namespace: str
    uid: str
    output_uri: str
    data_uri: str = "builtin:synthetic"
    data_format: str = "auto"
    data_secret: str | None = None
    data_endpoint: str | None = None
    output_secret: str | None = None
    output_endpoint: str | None = None
    variables: tuple[str, ...] = ()
    start_date: str | None = None
    end_date: str | None = None
    batch_size_days: int = 365
    horizon: int = 1
    horizons: tuple[int, ...] = ()  # several horizons; empty: the one `horizon`
    lags: int = 5
    ridge_alpha: float | str = 0.01  # a number, or "auto"
    alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID
    half_life_days: float | None = None
    rules: tuple[str, ...] = ()
    fdr: float = 0.1
    intervals: tuple[float, ...] = ()
    model: str = "var"
    exog: tuple[str, ...] = ()
    pooled_scale: str = "rms"
    scale_window: int = 52
    # The var memory guard's budget (--max-memory), as written in the spec; None: the default.
    max_memory: str | None = None
    resume_from: str | None = None
    workers: int = 2
    # Workers that must run before the driver starts; None: all of `workers`.
    min_workers: int | None = None
    threads: int = 1
    dask_resources: Mapping[str, Any] | None = None
    dask_image: str | None = None
    image: str | None = None
    service_account_name: str | None = None
    node_selector: Mapping[str, str] | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    active_deadline_seconds: int | None = None
    startup_deadline_seconds: int | None = None
    backoff_limit: int = 2
    ttl_seconds_after_finished: int | None = None
    suspend: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunSpec:
        """Read a TrainingRun object as the API server returns it."""
        meta = body["metadata"]
        spec: Mapping[str, Any] = body.get("spec") or {}
        data: Mapping[str, Any] = spec.get("data") or {}
        output: Mapping[str, Any] = spec.get("output") or {}
        dask: Mapping[str, Any] = spec.get("dask") or {}
        model: Mapping[str, Any] = spec.get("model") or {}
        if not output.get("uri"):
            raise InvalidSpecError("output.uri", "is required")
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            output_uri=output["uri"],
            data_uri=data.get("uri", cls.data_uri),
            data_format=data.get("format", cls.data_format),
            data_secret=data.get("credentialsSecret"),
            data_endpoint=data.get("endpoint"),
            output_secret=output.get("credentialsSecret"),
            output_endpoint=output.get("endpoint"),
            variables=tuple(spec.get("variables", ())),
            start_date=spec.get("startDate"),
            end_date=spec.get("endDate"),
            batch_size_days=spec.get("batchSizeDays", cls.batch_size_days),
            horizon=spec.get("horizon", cls.horizon),
            horizons=tuple(spec.get("horizons", ())),
            lags=spec.get("lags", cls.lags),
            ridge_alpha=spec.get("ridgeAlpha", cls.ridge_alpha),
            alpha_grid=tuple(spec.get("alphaGrid", cls.alpha_grid)),
            half_life_days=spec.get("halfLifeDays"),
            rules=tuple(spec.get("rules", ())),
            fdr=spec.get("fdr", cls.fdr),
            intervals=tuple(spec.get("intervals", ())),
            model=model.get("structure", cls.model),
            exog=tuple(model.get("exog", ())),
            pooled_scale=model.get("pooledScale", cls.pooled_scale),
            scale_window=model.get("scaleWindow", cls.scale_window),
            max_memory=model.get("maxMemory"),
            resume_from=spec.get("resumeFrom"),
            workers=dask.get("workers", cls.workers),
            min_workers=dask.get("minWorkers"),
            threads=dask.get("threads", cls.threads),
            dask_resources=dask.get("resources"),
            dask_image=dask.get("image"),
            image=spec.get("image"),
            service_account_name=spec.get("serviceAccountName"),
            node_selector=spec.get("nodeSelector"),
            tolerations=tuple(spec.get("tolerations", ())),
            active_deadline_seconds=spec.get("activeDeadlineSeconds"),
            startup_deadline_seconds=spec.get("startupDeadlineSeconds"),
            backoff_limit=spec.get("backoffLimit", cls.backoff_limit),
            ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
            suspend=bool(spec.get("suspend", False)),
        )

    @property
    def workers_to_start(self) -> int:
        """Running workers the Dask cluster needs before the driver starts."""
        return min(self.workers, self.min_workers or self.workers)

    @property
    def separate_output_credentials(self) -> bool:
        """Data and output name two Secrets: the output's keys must not override the data's."""
        return bool(
            self.data_secret and self.output_secret and self.data_secret != self.output_secret
        )

    @property
    def shared_secrets(self) -> tuple[str, ...]:
        """The Secrets every pod gets whole (envFrom): the data's, and the output's when it is
        the only one (then it may carry AWS_ENDPOINT_URL and the region for both, as before)."""
        names = (self.data_secret,) if self.separate_output_credentials else (
            self.data_secret, self.output_secret,
        )  # fmt: skip
        return tuple(dict.fromkeys(name for name in names if name))

    @property
    def checkpoint_uri(self) -> str:
        """Where finished batches are saved, so a retried driver skips them."""
        return f"{self.output_uri.rstrip('/')}/{CHECKPOINT_FOLDER}"


def cli_arguments(run: RunSpec, scheduler_address: str) -> list[str]:
    """The ``pulse-train`` flags that run `run` on the Dask scheduler at `scheduler_address`."""
    args = [
        f"--input-data={run.data_uri}",
        f"--input-format={run.data_format}",
        f"--batch-size-days={run.batch_size_days}",
        f"--horizons={','.join(map(str, run.horizons))}"
        if run.horizons
        else f"--horizon={run.horizon}",
        f"--lags={run.lags}",
        f"--ridge-alpha={run.ridge_alpha}",
        f"--alpha-grid={','.join(str(alpha) for alpha in run.alpha_grid)}",
        f"--fdr={run.fdr}",
        f"--model={run.model}",
        f"--pooled-scale={run.pooled_scale}",
        f"--scale-window={run.scale_window}",
        f"--dask-scheduler-address={scheduler_address}",
        f"--output-dir={run.output_uri}",
        f"--checkpoint-dir={run.checkpoint_uri}",
        # The run owns its output folder: a retry after results were written must not fail.
        "--overwrite",
        "--no-progress",
    ]
    optional = {
        "--variables": ",".join(run.variables),
        "--start-date": run.start_date,
        "--end-date": run.end_date,
        "--half-life-days": run.half_life_days,
        "--rules": ",".join(run.rules),
        "--intervals": ",".join(str(level) for level in run.intervals),
        "--exog": ",".join(run.exog),
        "--max-memory": run.max_memory,
        "--resume-from": run.resume_from,
        "--s3-endpoint-url": run.data_endpoint,
        "--s3-output-endpoint-url": run.output_endpoint,
        "--s3-output-credentials-env": (
            OUTPUT_CREDENTIALS_PREFIX if run.separate_output_credentials else None
        ),
    }
    args += [f"{flag}={value}" for flag, value in optional.items() if value not in (None, "")]
    return args
