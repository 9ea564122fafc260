"""Checks that stop a run whose result would be useless, as early as it can be known.

Both are cheap at any scale: the batch count is arithmetic on the date range, and the
coverage of each variable is counted by the statistics stage as it reads each batch, so
no process ever reads the panel a second time to find an empty column.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recursive_training.config import TrainingConfig
from recursive_training.exceptions import ConfigError, DataError

if TYPE_CHECKING:
    from recursive_training.stages.tasks import BatchStatistics

log = logging.getLogger(__name__)


def check_batch_count(start: pd.Timestamp, end: pd.Timestamp, config: TrainingConfig) -> None:
    """Refuse a plan of more than ``max_batches`` batches before any of it is built."""
    count = int(np.ceil((end - start) / pd.Timedelta(days=config.batch_size_days)))
    if count > config.max_batches:
        raise ConfigError(
            f"[{start:%Y-%m-%d}, {end:%Y-%m-%d}) in batches of {config.batch_size_days} days "
            f"makes {count} batches, more than --max-batches {config.max_batches}; check "
            "--start-date/--end-date, use a larger --batch-size-days, or raise --max-batches"
        )


def check_coverage(
    variables: Sequence[str], statistics: Collection[BatchStatistics], source: str
) -> None:
    """Fail when a variable has no usable sample, or no sample has every variable; warn
    about variables that lose more than half of their samples to missing values."""
    candidates = sum(s.candidates for s in statistics)
    if candidates == 0:
        return  # a range without samples is reported when it is planned
    usable = np.sum([s.usable for s in statistics], axis=0)
    empty = [v for v, n in zip(variables, usable, strict=True) if n == 0]
    if empty:
        raise DataError(
            f"no usable values for variable{'s' if len(empty) > 1 else ''} "
            f"{', '.join(map(repr, empty))} in the range (every sample needs the variable at "
            "its origin, its lags and its target); drop it from --variables or fix the data",
            source=source,
        )
    if sum(s.stats.n for s in statistics) == 0:
        raise DataError(
            "no sample has values of every variable at once (their missing values never "
            "overlap); choose --variables that are observed at the same times",
            source=source,
        )
    for name, n in zip(variables, usable, strict=True):
        if n < candidates / 2:
            log.warning(
                "Variable %r has values for only %d of %d samples (%.0f%%); the others are "
                "dropped for every variable",
                name,
                n,
                candidates,
                100 * n / candidates,
            )
