"""Time a run's outputs at many series: metrics.parquet, results.json and the report.

A real small run (synthetic data, yearly batches) is widened to ``--series`` series: its
per-batch error sums are replaced by those of synthetic walk-forward predictions of that
many series (scales log-uniform over six decades, skill varying from series to series),
written batch by batch into a predictions file as the CLI's spool does. Then the code the
CLI runs after training is timed on it: the metrics and rule tables, the results document,
its JSON, the whole write_outputs, and the report.

Reference, measured in the same run: the per-series detail schema_version 1 kept in
results.json at any size (every series' metrics overall and per batch, every rule),
built and serialized the same way; the ratio says what keeping it would cost.

    python benchmarks/bench_outputs.py                       # 100,000 series
    python benchmarks/bench_outputs.py --series 10000 --days-per-batch 25
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from recursive_training.config import TrainingConfig
from recursive_training.metrics import ErrorSums
from recursive_training.report import render_report
from recursive_training.results import (
    PredictionsSpool,
    build_document,
    metrics_table,
    parquet_bytes,
    rule_trust_table,
    write_outputs,
)
from recursive_training.stages import TrainingPipeline, TrainingResult

T = TypeVar("T")


def timed(label: str, task: Callable[[], T], timings: dict[str, float]) -> T:
    """Run ``task`` once, record its wall time under ``label``."""
    began = time.perf_counter()
    value = task()
    timings[label] = time.perf_counter() - began
    return value


def widened(
    result: TrainingResult, n_series: int, days: int, spool: PredictionsSpool, seed: int
) -> TrainingResult:
    """``result`` with ``n_series`` synthetic series in place of its own, predictions spooled."""
    rng = np.random.default_rng(seed)
    names = [f"item_{j:06d}" for j in range(n_series)]
    scale = 10.0 ** rng.uniform(-3, 3, n_series)
    signal = rng.uniform(0.0, 0.6, n_series)  # how much of each change the "model" foresees
    evaluations = {}
    total = ErrorSums.zeros(n_series)
    for batch_id, evaluation in sorted(result.evaluations.items()):
        batch = next(b for b in result.batches if b.batch_id == batch_id)
        origins = pd.date_range(batch.start, periods=days, freq="B")
        actual = rng.standard_normal((days, n_series)) * scale
        predicted = signal * actual + rng.standard_normal((days, n_series)) * scale * 0.5
        origin_levels = np.full((days, n_series), 100.0) * scale
        errors = ErrorSums.from_predictions(predicted, actual, origin_levels).scaled(scale)
        spool(
            pa.Table.from_pandas(
                pd.DataFrame(
                    {
                        "origin": np.repeat(origins.to_numpy(), n_series),
                        "realized": np.repeat((origins + pd.offsets.BDay(1)).to_numpy(), n_series),
                        "batch_id": np.int32(batch_id),
                        "horizon": np.int32(1),
                        "variable": pd.Categorical.from_codes(
                            np.tile(np.arange(n_series), days), categories=names
                        ),
                        "predicted": predicted.ravel(),
                        "actual": actual.ravel(),
                    }
                ),
                preserve_index=False,
            )
        )
        evaluations[batch_id] = replace(evaluation, errors=errors, dropped_missing=0)
        total = total + errors
    rules = [
        (rule, name, 40.0, 40.0) for rule in ("momentum(5)", "mean_reversion(20)") for name in names
    ]
    rules += [
        ("model", name, float(h), float(m))
        for name, h, m in zip(names, total.hits, total.misses, strict=True)
    ]
    return replace(
        result,
        variables=names,
        features=["const"],
        coefficients=np.zeros((1, n_series)),
        evaluations=evaluations,
        errors=total,
        rule_table=rules,
        by_horizon=(),  # the widened result is the run's one horizon
    )


def version_one_detail(result: TrainingResult) -> bytes:
    """The per-series part of a schema_version 1 document: every series overall and per
    batch, every rule as a JSON object (the reference)."""
    rules = rule_trust_table(result.rule_table, result.config.fdr).to_pylist()
    detail = {
        "overall": result.errors.table(result.variables),
        "batches": [e.errors.table(result.variables) for e in result.evaluations.values()],
        "rules": rules,
    }
    return json.dumps(detail, indent=2, allow_nan=False).encode()


def main() -> None:
    """Widen a small run, time every output step, print a table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=100_000, help="default: 100000")
    parser.add_argument(
        "--days-per-batch",
        type=int,
        default=25,
        help="predictions per series and evaluated batch in the predictions file (default: 25)",
    )
    parser.add_argument("--years", type=int, default=10, help="yearly batches (default: 10)")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-outputs-") as folder,
        PredictionsSpool() as spool,
    ):
        config = TrainingConfig.build(
            input_data=f"builtin:synthetic?n_variables=3&years={args.years}&seed=1",
            batch_size_days=365,
            output_dir=f"{folder}/out",
            rules=["momentum(5)", "mean_reversion(20)", "model"],
        )
        small = TrainingPipeline().execute(config)
        began = time.perf_counter()
        result = widened(small, args.series, args.days_per_batch, spool, seed=1)
        predictions = spool.finish(small.predictions_frame())
        made = time.perf_counter() - began
        rows = args.series * args.days_per_batch * len(result.evaluations)
        print(
            f"{args.series} series, {len(result.evaluations)} evaluated batches, "
            f"{rows:,} predictions ({predictions.stat().st_size / 2**20:.0f} MiB) made in "
            f"{made:.1f}s"
        )

        timings: dict[str, float] = {}
        table = timed(
            "metrics table + Parquet bytes", lambda: parquet_bytes(metrics_table(result)), timings
        )
        rules = timed(
            "rule trust table",
            lambda: rule_trust_table(result.rule_table, result.config.fdr),
            timings,
        )
        document = timed(
            "results document (summary)", lambda: build_document(result, rules), timings
        )
        text = timed(
            "results.json serialized", lambda: json.dumps(document, indent=2).encode(), timings
        )
        reference = timed(
            "reference: v1 per-series detail + JSON", lambda: version_one_detail(result), timings
        )
        timed(
            "write_outputs (all files, local)",
            lambda: write_outputs(result, config, document, predictions),
            timings,
        )
        series = pd.read_parquet(Path(folder) / "out" / document["files"]["metrics"])
        pages = timed(
            "report (from the predictions file)",
            lambda: render_report(document, series, predictions, f"{folder}/report"),
            timings,
        )

        width = max(map(len, timings))
        for label, seconds in timings.items():
            print(f"  {label:<{width}}  {seconds:7.2f} s")
        ours = timings["results document (summary)"] + timings["results.json serialized"]
        ratio = timings["reference: v1 per-series detail + JSON"] / ours
        print(
            f"results.json: {len(text) / 2**10:.0f} KiB (v1 detail alone: "
            f"{len(reference) / 2**20:.0f} MiB, {ratio:.1f}x the time of the v2 document); "
            f"metrics.parquet {len(table) / 2**20:.1f} MiB"
        )
        html = pages[-1].stat().st_size / 2**20
        print(f"report: {len(pages) - 1} charts, index.html {html:.1f} MiB")


if __name__ == "__main__":
    main()
