"""Run defaults agree in the three places that state them.

The operator must not import the pipeline (test_layers.py), so the CRD builder and
``RunSpec`` repeat the defaults of ``TrainingConfig``; these tests keep the copies equal.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from recursive_training.config import TrainingConfig
from recursive_training.run_training import create_config_from_args, parse_args
from trainingrun_operator.crd import MEMORY_PATTERN, build_crd
from trainingrun_operator.spec import RunSpec, cli_arguments

# TrainingConfig field: (its path under the CRD's spec, its RunSpec field or None).
DEFAULTED: dict[str, tuple[tuple[str, ...], str | None]] = {
    "input_data": (("data", "uri"), "data_uri"),
    "input_format": (("data", "format"), "data_format"),
    "batch_size_days": (("batchSizeDays",), "batch_size_days"),
    "horizon": (("horizon",), "horizon"),
    "lags": (("lags",), "lags"),
    "ridge_alpha": (("ridgeAlpha",), "ridge_alpha"),
    "alpha_grid": (("alphaGrid",), "alpha_grid"),
    "fdr": (("fdr",), "fdr"),
    "intervals": (("intervals",), "intervals"),
    "model": (("model", "structure"), "model"),
    "pooled_scale": (("model", "pooledScale"), "pooled_scale"),
    "scale_window": (("model", "scaleWindow"), "scale_window"),
    # RunSpec keeps rules empty and passes no --rules then: the pipeline's default applies.
    "rules": (("rules",), None),
}


def pipeline_default(name: str) -> Any:
    return TrainingConfig.model_fields[name].default


def crd_default(path: tuple[str, ...]) -> Any:
    """The default the API server fills in at ``spec.<path>`` (as the CRD builder says)."""
    version = build_crd()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name in path:
        schema = schema["properties"][name]
    return schema["default"]


@pytest.mark.parametrize("name", sorted(DEFAULTED))
def test_crd_defaults_are_the_pipelines(name: str) -> None:
    default = crd_default(DEFAULTED[name][0])
    expected = pipeline_default(name)
    assert (tuple(default) if isinstance(default, list) else default) == expected


@pytest.mark.parametrize("name", sorted(n for n, (_, field) in DEFAULTED.items() if field))
def test_runspec_defaults_are_the_pipelines(name: str) -> None:
    field = DEFAULTED[name][1]
    assert field is not None
    assert RunSpec.__dataclass_fields__[field].default == pipeline_default(name)


def test_a_run_that_sets_nothing_trains_with_the_pipelines_defaults() -> None:
    run = RunSpec(name="run", namespace="team", uid="u", output_uri="s3://results/run")
    config = create_config_from_args(parse_args(cli_arguments(run, "tcp://scheduler:8786")))
    for name in DEFAULTED:
        assert getattr(config, name) == pipeline_default(name), name


def test_horizons_default_to_the_one_horizon_everywhere() -> None:
    """No CRD default, an empty RunSpec tuple and a None config field all mean: the one
    ``horizon``; the driver then passes --horizon, never both flags."""
    version = build_crd()["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "default" not in spec["properties"]["horizons"]
    assert RunSpec.__dataclass_fields__["horizons"].default == ()
    assert pipeline_default("horizons") is None
    run = RunSpec(name="run", namespace="team", uid="u", output_uri="s3://results/run")
    arguments = cli_arguments(run, "tcp://scheduler:8786")
    assert not any(a.startswith("--horizons") for a in arguments)
    several = RunSpec(
        name="run", namespace="team", uid="u", output_uri="s3://results/run", horizons=(1, 5, 20)
    )
    arguments = cli_arguments(several, "tcp://scheduler:8786")
    assert not any(a.startswith("--horizon=") for a in arguments)
    config = create_config_from_args(parse_args(arguments))
    assert config.forecast_horizons == (1, 5, 20)


@pytest.mark.parametrize(
    "written", ["8Gi", "8GiB", "512Mi", "512MiB", "12GB", "500kB", "64KB", "2TB", "1.5GB", "4096"]
)
def test_every_max_memory_the_crd_accepts_the_pipeline_reads(written: str) -> None:
    """The CRD's maxMemory pattern is a subset of what --max-memory parses."""
    assert re.fullmatch(MEMORY_PATTERN, written)
    TrainingConfig.build(max_memory=written)


@pytest.mark.parametrize("written", ["500m", "8G", "-1", "8 GB", "eight"])
def test_the_crd_refuses_max_memory_the_pipeline_would_misread(written: str) -> None:
    """500m (Kubernetes milli) or a bare 8G (GB or GiB?) are refused at kubectl apply."""
    assert not re.fullmatch(MEMORY_PATTERN, written)
