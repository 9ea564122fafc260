"""The learned state saved with every run, so a later run can resume from it.

A state is the prefix statistics of everything learned so far (referenced at ``end``,
the exclusive end of the last run's range) plus the rule counts, per horizon. It is an
``.npz`` file of plain arrays (``h<horizon>.<name>``) and one JSON header, loaded with
``allow_pickle=False`` so a state file can never execute code. Version 1 files (one
horizon, unprefixed arrays) are still read.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from recursive_training.arrays import FloatArray
from recursive_training.constants import STATE_KIND, STATE_SCHEMA_VERSION
from recursive_training.exceptions import StateError
from recursive_training.statistics import MOMENT_ARRAYS, Moments, SufficientStats

# What a state file from before model structures were recorded was trained with.
LEGACY_STRUCTURE: Final = {"model": "var", "exog": []}
# The version of one-horizon files with unprefixed arrays, still read.
ONE_HORIZON_VERSION: Final = 1


@dataclass(frozen=True)
class TrainingState:
    """Everything needed to continue learning where a run stopped."""

    end: pd.Timestamp
    variables: tuple[str, ...]
    features: tuple[str, ...]
    lags: int
    horizons: tuple[int, ...]
    half_life_days: float | None
    rules: tuple[str, ...]
    structure: dict[str, Any]
    stats: tuple[SufficientStats, ...]  # per horizon, as the model hits and misses
    model_hits: tuple[FloatArray, ...]
    model_misses: tuple[FloatArray, ...]
    # Per horizon, persistence's absolute errors and their count per series (2 x series):
    # the MASE scale a resumed run starts from.
    persistence: tuple[FloatArray, ...]
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
            "horizons": list(self.horizons),
            "half_life_days": self.half_life_days,
            "rules": list(self.rules),
            "structure": self.structure,
            "n_samples": [stats.n for stats in self.stats],
            "run_id": self.run_id,
        }

    def to_bytes(self) -> bytes:
        """Serialize as an ``.npz``, uncompressed: statistics are dense floats, which deflate
        shrank by about 13% at four times the cost of the rest of writing them."""
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {"header": np.array(json.dumps(self.header()))}
        for h, stats, hits, misses, persistence in zip(
            self.horizons,
            self.stats,
            self.model_hits,
            self.model_misses,
            self.persistence,
            strict=True,
        ):
            per_horizon = {
                **stats.moments.to_arrays(),
                "rule_hits": stats.rule_hits,
                "rule_misses": stats.rule_misses,
                "model_hits": hits,
                "model_misses": misses,
                "persistence": persistence,
            }
            arrays |= {f"h{h}.{name}": value for name, value in per_horizon.items()}
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> TrainingState:
        """Parse a state file, with a clear error when it is not one."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                header = json.loads(str(arrays["header"]))
                if header.get("schema_version") == ONE_HORIZON_VERSION:
                    horizons: tuple[int, ...] = (int(header["horizon"]),)
                    header["n_samples"] = [header["n_samples"]]
                    prefixes = [""]
                else:
                    horizons = tuple(int(h) for h in header["horizons"])
                    prefixes = [f"h{h}." for h in horizons]
                stats, model_hits, model_misses, persistence = [], [], [], []
                for prefix, n_samples in zip(prefixes, header["n_samples"], strict=True):
                    own = {
                        name[len(prefix) :]: arrays[name]
                        for name in arrays.files
                        if name.startswith(prefix) and name != "header"
                    }
                    moments = Moments.from_arrays(
                        {
                            "n": np.array([n_samples]),  # files written before counts
                            **{k: v for k, v in own.items() if k in MOMENT_ARRAYS},
                        }
                    )
                    stats.append(SufficientStats(moments, own["rule_hits"], own["rule_misses"]))
                    model_hits.append(own["model_hits"])
                    model_misses.append(own["model_misses"])
                    # version 1 files knew no persistence errors: MASE's scale starts afresh
                    persistence.append(
                        own.get("persistence", np.zeros((2, len(own["model_hits"]))))
                    )
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise StateError(
                f"{source} is not a Pulse training state file ({_why_unreadable(e, data)}); pass "
                "the state file or results.json that a run wrote to --resume-from"
            ) from e
        if header.get("kind") != STATE_KIND or header.get("schema_version") not in (
            ONE_HORIZON_VERSION,
            STATE_SCHEMA_VERSION,
        ):
            raise StateError(
                f"{source} has kind {header.get('kind')!r} version "
                f"{header.get('schema_version')!r}; this version reads {STATE_KIND} "
                f"versions {ONE_HORIZON_VERSION} and {STATE_SCHEMA_VERSION}"
            )
        return cls(
            end=pd.Timestamp(header["end"]),
            variables=tuple(header["variables"]),
            features=tuple(header["features"]),
            lags=int(header["lags"]),
            horizons=horizons,
            half_life_days=header["half_life_days"],
            rules=tuple(header["rules"]),
            structure=header.get("structure", LEGACY_STRUCTURE),
            stats=tuple(stats),
            model_hits=tuple(model_hits),
            model_misses=tuple(model_misses),
            persistence=tuple(persistence),
            run_id=str(header.get("run_id", "")),
        )

    def check_compatible(
        self,
        source: str,
        variables: tuple[str, ...],
        lags: int,
        horizons: tuple[int, ...],
        half_life_days: float | None,
        rules: tuple[str, ...],
        structure: dict[str, Any],
    ) -> None:
        """Refuse to resume into a run that would learn a different model layout (other
        horizons included: each horizon resumes from its own statistics)."""
        wanted = {
            **structure,
            "variables": variables,
            "lags": lags,
            "horizons": horizons,
            "half_life_days": half_life_days,
            "rules": rules,
        }
        saved = {
            **self.structure,
            "variables": self.variables,
            "lags": self.lags,
            "horizons": self.horizons,
            "half_life_days": self.half_life_days,
            "rules": self.rules,
        }
        for field, value in wanted.items():
            if saved.get(field) != value:
                raise StateError(
                    f"cannot resume from {source}: it was trained with "
                    f"{field}={_show(saved.get(field))} but this run has {field}={_show(value)}; "
                    "use the same setting or start afresh"
                )


def _why_unreadable(error: Exception, data: bytes) -> str:
    """What is wrong with a file that does not load, in our words: numpy's own messages
    suggest loading a pickled file "unsafely", which a state file never needs."""
    if isinstance(error, KeyError):
        return f"it has no {error} entry"
    if isinstance(error, json.JSONDecodeError):
        return "its header is not JSON"
    if "pickle" in str(error) and data.startswith(b"PK"):
        return "it holds pickled Python objects, which a state file never does"
    if isinstance(error, zipfile.BadZipFile) or not isinstance(error, OSError):
        return "it is not an .npz archive of plain arrays"
    return str(error)


def _show(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)
