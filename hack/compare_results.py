"""Compare two runs' outputs numerically, timing and identity fields aside.

    python hack/compare_results.py BEFORE_DIR AFTER_DIR [--tolerance 1e-12]

Each directory holds a run's results.json and the predictions and state files it names
(runs before the run-unique names: predictions.parquet and state.npz). Prints every
difference, one per line, and exits 1 when there is any; so a refactoring can show that
it changed no number. Ignored: when and how long a run took, where it ran and was written
(run_id, created, seconds, workers, config.output_dir, resumed_from, files).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

IGNORED_KEYS = frozenset({"run_id", "created", "seconds", "workers", "files"})
IGNORED_PATHS = frozenset({"config.output_dir", "resumed_from"})


def differences(before: Any, after: Any, tolerance: float, path: str = "") -> Iterator[str]:
    """Every place where two JSON values differ by more than ``tolerance`` (relative)."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            where = f"{path}.{key}" if path else key
            if key in IGNORED_KEYS or where in IGNORED_PATHS:
                continue
            if key not in before or key not in after:
                yield f"{where}: only in {'after' if key in after else 'before'}"
                continue
            yield from differences(before[key], after[key], tolerance, where)
    elif isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            yield f"{path}: {len(before)} items before, {len(after)} after"
            return
        for index, (b, a) in enumerate(zip(before, after, strict=True)):
            yield from differences(b, a, tolerance, f"{path}[{index}]")
    elif _is_number(before) and _is_number(after):
        if not _close(float(before), float(after), tolerance):
            yield f"{path}: {before!r} before, {after!r} after"
    elif before != after:
        yield f"{path}: {before!r} before, {after!r} after"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _close(before: float, after: float, tolerance: float) -> bool:
    if math.isnan(before) or math.isnan(after):
        return math.isnan(before) and math.isnan(after)
    return abs(before - after) <= tolerance * max(1.0, abs(before), abs(after))


def array_differences(
    name: str, before: np.ndarray[Any, Any], after: np.ndarray[Any, Any], tolerance: float
) -> Iterator[str]:
    """How two arrays differ (shape, dtype, values beyond ``tolerance``), if they do."""
    if before.shape != after.shape or before.dtype != after.dtype:
        yield f"{name}: {before.dtype}{before.shape} before, {after.dtype}{after.shape} after"
    elif before.dtype.kind == "f":
        scale = np.maximum(1.0, np.maximum(np.abs(before), np.abs(after)))
        bad = ~(
            (np.abs(before - after) <= tolerance * scale) | (np.isnan(before) & np.isnan(after))
        )
        if bad.any():
            yield f"{name}: {int(bad.sum())} values differ, first at {np.argwhere(bad)[0].tolist()}"
    elif not np.array_equal(before, after):
        yield f"{name}: values differ"


def _data_files(directory: Path, document: dict[str, Any]) -> tuple[Path, Path]:
    """The predictions and state files a results document names (next to it)."""
    files = document.get("files", {})
    return (
        directory / Path(files.get("predictions", "predictions.parquet")).name,
        directory / Path(files.get("state", "state.npz")).name,
    )


def compare_runs(before: Path, after: Path, tolerance: float) -> list[str]:
    """All differences between the outputs in two run directories."""
    documents = [json.loads((d / "results.json").read_text()) for d in (before, after)]
    found = list(differences(*documents, tolerance))
    (old_predictions, old_state_file), (new_predictions, new_state_file) = (
        _data_files(d, document) for d, document in zip((before, after), documents, strict=True)
    )
    if old_predictions.exists():
        old = pd.read_parquet(old_predictions)
        new = pd.read_parquet(new_predictions)
        if list(old.columns) != list(new.columns) or len(old) != len(new):
            found.append(f"predictions: {old.shape} before, {new.shape} after")
        else:
            for column in old.columns:
                found += array_differences(
                    f"predictions.{column}",
                    np.asarray(
                        old[column].astype(str) if old[column].dtype == "category" else old[column]
                    ),
                    np.asarray(
                        new[column].astype(str) if new[column].dtype == "category" else new[column]
                    ),
                    tolerance,
                )
    if old_state_file.exists():
        with np.load(old_state_file) as old_state, np.load(new_state_file) as new_state:
            if set(old_state.files) != set(new_state.files):
                found.append(
                    f"state: {sorted(old_state.files)} before, {sorted(new_state.files)} after"
                )
            for key in sorted(set(old_state.files) & set(new_state.files) - {"header"}):
                found += array_differences(
                    f"state.{key}", old_state[key], new_state[key], tolerance
                )
            if "header" in old_state.files and "header" in new_state.files:
                found += differences(
                    json.loads(str(old_state["header"])),
                    json.loads(str(new_state["header"])),
                    tolerance,
                    "state.header",
                )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.0, help="relative; default exact")
    args = parser.parse_args()
    found = compare_runs(args.before, args.after, args.tolerance)
    for line in found:
        print(line)
    verdict = f"{len(found)} differences" if found else "identical"
    print(f"{args.before} vs {args.after}: {verdict}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
