"""The learned state saved with every run, so a later run can resume from it.

A state is the prefix statistics of everything learned so far (referenced at ``end``,
the exclusive end of the last run's range) plus the rule counts. It is an ``.npz`` file
of plain arrays and one JSON header, loaded with ``allow_pickle=False`` so a state file
can never execute code.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recursive_training.arrays import FloatArray
from recursive_training.constants import STATE_KIND, STATE_SCHEMA_VERSION
from recursive_training.exceptions import StateError
from recursive_training.statistics import SufficientStats


@dataclass(frozen=True)
class TrainingState:
    """Everything needed to continue learning where a run stopped."""

    end: pd.Timestamp
    variables: tuple[str, ...]
    features: tuple[str, ...]
    lags: int
    horizon: int
    half_life_days: float | None
    rules: tuple[str, ...]
    stats: SufficientStats
    model_hits: FloatArray
    model_misses: FloatArray
    run_id: str

    def header(self) -> dict[str, Any]:
        """The JSON part of the file: what the arrays mean."""
        return {
            "kind": STATE_KIND,
            "schema_version": STATE_SCHEMA_VERSION,
            "end": self.end.isoformat(),
            "variables": list(self.variables),
            "features": list(self.features),
            "lags": self.lags,
            "horizon": self.horizon,
            "half_life_days": self.half_life_days,
            "rules": list(self.rules),
            "n_samples": self.stats.n,
            "run_id": self.run_id,
        }

    def to_bytes(self) -> bytes:
        """Serialize as a compressed ``.npz``."""
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            header=np.array(json.dumps(self.header())),
            xtx=self.stats.xtx,
            xty=self.stats.xty,
            yty=self.stats.yty,
            rule_hits=self.stats.rule_hits,
            rule_misses=self.stats.rule_misses,
            model_hits=self.model_hits,
            model_misses=self.model_misses,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> TrainingState:
        """Parse a state file, with a clear error when it is not one."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                header = json.loads(str(arrays["header"]))
                stats = SufficientStats(
                    xtx=arrays["xtx"],
                    xty=arrays["xty"],
                    yty=arrays["yty"],
                    n=int(header["n_samples"]),
                    rule_hits=arrays["rule_hits"],
                    rule_misses=arrays["rule_misses"],
                )
                model_hits, model_misses = arrays["model_hits"], arrays["model_misses"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise StateError(f"{source} is not a Pulse training state file ({e})") from e
        if header.get("kind") != STATE_KIND or header.get("schema_version") != STATE_SCHEMA_VERSION:
            raise StateError(
                f"{source} has kind {header.get('kind')!r} version "
                f"{header.get('schema_version')!r}; this version reads {STATE_KIND} "
                f"version {STATE_SCHEMA_VERSION}"
            )
        return cls(
            end=pd.Timestamp(header["end"]),
            variables=tuple(header["variables"]),
            features=tuple(header["features"]),
            lags=int(header["lags"]),
            horizon=int(header["horizon"]),
            half_life_days=header["half_life_days"],
            rules=tuple(header["rules"]),
            stats=stats,
            model_hits=model_hits,
            model_misses=model_misses,
            run_id=str(header.get("run_id", "")),
        )

    def check_compatible(
        self,
        source: str,
        variables: tuple[str, ...],
        lags: int,
        horizon: int,
        half_life_days: float | None,
        rules: tuple[str, ...],
    ) -> None:
        """Refuse to resume into a run that would learn a different model layout."""
        wanted = {
            "variables": variables,
            "lags": lags,
            "horizon": horizon,
            "half_life_days": half_life_days,
            "rules": rules,
        }
        saved = {
            "variables": self.variables,
            "lags": self.lags,
            "horizon": self.horizon,
            "half_life_days": self.half_life_days,
            "rules": self.rules,
        }
        for field, value in wanted.items():
            if saved[field] != value:
                raise StateError(
                    f"cannot resume from {source}: it was trained with "
                    f"{field}={_show(saved[field])} but this run has {field}={_show(value)}; "
                    "use the same setting or start afresh"
                )


def _show(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
