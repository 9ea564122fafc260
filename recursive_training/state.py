"""The learned state saved with every run, so a later run can resume from it.

A state is the prefix statistics of everything learned so far (referenced at ``end``,
the exclusive end of the last run's range) plus the rule counts, per horizon. It is an
``.npz`` file of plain arrays (``h<horizon>.<name>``) and one JSON header, loaded with
``allow_pickle=False`` so a state file can never execute code.

Version 3 also carries what the walk-forward choices of later batches depend on, so a
resumed run continues them exactly as one long run would: per horizon the conformal
residual sketch (``--intervals``: ``sketch_*`` arrays, an ``intervals.CompactSketch``) and
each grid value's walk-forward errors (``--ridge-alpha auto``: ``penalty_*``). Each is
there only when the run computed it. Older files are still read: version 2 (per horizon,
no sketch or penalty errors) and version 1 (one horizon, unprefixed arrays, no MASE scale
either); what a file lacks starts afresh in the resumed run.
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
from recursive_training.intervals import CompactSketch
from recursive_training.penalty import PenaltyErrors
from recursive_training.statistics import MOMENT_ARRAYS, Moments, SufficientStats

# What a state file from before model structures were recorded was trained with.
LEGACY_STRUCTURE: Final = {"model": "var", "exog": []}
# The version of one-horizon files with unprefixed arrays, still read.
ONE_HORIZON_VERSION: Final = 1
# Versions this module reads: one-horizon files, per-horizon files without the walk-forward
# choices' sketch and errors, and the current one.
READABLE_VERSIONS: Final = (ONE_HORIZON_VERSION, 2, STATE_SCHEMA_VERSION)
SKETCH_PREFIX: Final = "sketch_"
PENALTY_PREFIX: Final = "penalty_"


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
    # Per horizon, the conformal residual sketch of every walk-forward prediction so far
    # (None: the run had no --intervals, or resumed a state without it).
    sketches: tuple[CompactSketch | None, ...] = ()
    # Per horizon, every grid value's walk-forward errors (None: not --ridge-alpha auto).
    penalty_errors: tuple[PenaltyErrors | None, ...] = ()

    def sketch(self, index: int) -> CompactSketch | None:
        """Horizon ``index``'s residual sketch, if the state carries one."""
        return self.sketches[index] if self.sketches else None

    def penalty(self, index: int) -> PenaltyErrors | None:
        """Horizon ``index``'s walk-forward errors of the penalty grid, if carried."""
        return self.penalty_errors[index] if self.penalty_errors else None

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
            "interval_sketch": any(s is not None for s in self.sketches),
            "penalty_grid": next(
                (list(p.grid) for p in self.penalty_errors if p is not None), None
            ),
        }

    def to_bytes(self) -> bytes:
        """Serialize as an ``.npz``, uncompressed: statistics are dense floats, which deflate
        shrank by about 13% at four times the cost of the rest of writing them."""
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {"header": np.array(json.dumps(self.header()))}
        for index, (h, stats, hits, misses, persistence) in enumerate(
            zip(
                self.horizons,
                self.stats,
                self.model_hits,
                self.model_misses,
                self.persistence,
                strict=True,
            )
        ):
            per_horizon = {
                **stats.moments.to_arrays(),
                "rule_hits": stats.rule_hits,
                "rule_misses": stats.rule_misses,
                "model_hits": hits,
                "model_misses": misses,
                "persistence": persistence,
            }
            sketch, penalty = self.sketch(index), self.penalty(index)
            if sketch is not None:
                per_horizon |= {
                    f"{SKETCH_PREFIX}occupied": sketch.occupied,
                    f"{SKETCH_PREFIX}buckets": sketch.buckets,
                    f"{SKETCH_PREFIX}counts": sketch.counts,
                }
            if penalty is not None:
                per_horizon |= {
                    f"{PENALTY_PREFIX}grid": np.asarray(penalty.grid, dtype=np.float64),
                    f"{PENALTY_PREFIX}totals": penalty.totals,
                    f"{PENALTY_PREFIX}seen": penalty.seen,
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
                sketches: list[CompactSketch | None] = []
                penalties: list[PenaltyErrors | None] = []
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
                    # files before version 3, and runs without --intervals or auto, carry
                    # neither: the resumed run starts those choices afresh
                    sketches.append(_sketch(own))
                    penalties.append(_penalty(own))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise StateError(
                f"{source} is not a Pulse training state file ({_why_unreadable(e, data)}); pass "
                "the state file or results.json that a run wrote to --resume-from"
            ) from e
        if header.get("kind") != STATE_KIND or header.get("schema_version") not in (
            READABLE_VERSIONS
        ):
            raise StateError(
                f"{source} has kind {header.get('kind')!r} version "
                f"{header.get('schema_version')!r}; this version reads {STATE_KIND} "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}"
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
            sketches=tuple(sketches),
            penalty_errors=tuple(penalties),
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


def _sketch(arrays: dict[str, Any]) -> CompactSketch | None:
    """A horizon's residual sketch from its ``sketch_*`` arrays, if it has them."""
    if f"{SKETCH_PREFIX}occupied" not in arrays:
        return None
    return CompactSketch(
        occupied=arrays[f"{SKETCH_PREFIX}occupied"].astype(np.int32),
        buckets=arrays[f"{SKETCH_PREFIX}buckets"].astype(np.int32),
        counts=arrays[f"{SKETCH_PREFIX}counts"],
    )


def _penalty(arrays: dict[str, Any]) -> PenaltyErrors | None:
    """A horizon's walk-forward errors of the penalty grid, if it has them."""
    if f"{PENALTY_PREFIX}grid" not in arrays:
        return None
    return PenaltyErrors(
        tuple(float(a) for a in arrays[f"{PENALTY_PREFIX}grid"]),
        arrays[f"{PENALTY_PREFIX}totals"],
        arrays[f"{PENALTY_PREFIX}seen"].astype(bool),
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
