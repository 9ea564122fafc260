"""Model structures: ``var`` (every series on every series' lags), ``ar`` (each series on
its own lags) and ``pooled`` (one model shared by all series), behind one interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from recursive_training.constants import DEFAULT_SCALE_WINDOW
from recursive_training.exceptions import ConfigError
from recursive_training.models.ar import AutoRegressive
from recursive_training.models.base import Forecast, ModelStructure
from recursive_training.models.memory import (
    check_var_memory,
    default_memory_budget,
    series_per_shard,
)
from recursive_training.models.pooled import Pooled
from recursive_training.models.var import VectorAutoRegressive
from recursive_training.statistics import Moments

STRUCTURES: Final[dict[str, type[ModelStructure]]] = {
    cls.name: cls for cls in (VectorAutoRegressive, AutoRegressive, Pooled)
}


def build_structure(
    model: str,
    series: Sequence[str],
    lags: int,
    horizon: int,
    exog: Sequence[str] = (),
    scale: str = "rms",
    scale_window: int = DEFAULT_SCALE_WINDOW,
) -> ModelStructure:
    """The structure named ``model`` over these series, with a clear error for a bad name."""
    overlap = sorted(set(series) & set(exog))
    if overlap:
        raise ConfigError(
            f"exog {', '.join(overlap)} cannot also be a modelled series; exog are shared "
            "regressors only"
        )
    if model == Pooled.name:
        return Pooled(tuple(series), lags, horizon, tuple(exog), scale, scale_window)
    if model not in STRUCTURES:
        raise ConfigError(f"--model {model!r} is unknown; use one of {', '.join(STRUCTURES)}")
    return STRUCTURES[model](tuple(series), lags, horizon, tuple(exog))


__all__ = [
    "STRUCTURES",
    "AutoRegressive",
    "Forecast",
    "ModelStructure",
    "Moments",
    "Pooled",
    "VectorAutoRegressive",
    "build_structure",
    "check_var_memory",
    "default_memory_budget",
    "series_per_shard",
]
