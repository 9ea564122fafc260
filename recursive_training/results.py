"""The results document, its files, and the short summary printed after a run.

Files of one run, in ``output_dir``: ``predictions-<run id>.parquet`` (every walk-forward
prediction), ``metrics-<run id>.parquet`` (one row per series), ``rules-<run id>.parquet``
(every rule's trust), ``state-<run id>.npz`` (to resume from) and the results JSON, which names
them and is written last, in one atomic step: it is the commit. Before it, an earlier
run's results JSON still names that run's own files, which nothing here has touched;
after it, the earlier run's files are deleted. See docs/outputs.md.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recursive_training import __version__, interrupts, storage
from recursive_training.arrays import FloatArray
from recursive_training.config import TrainingConfig
from recursive_training.constants import (
    CONFIDENCE_LEVEL,
    METRICS_FILE,
    PENALTIES_FILE,
    PENALTIES_KIND,
    PREDICTIONS_FILE,
    RESULTS_KIND,
    RESULTS_SCHEMA_VERSION,
    RULE_TRUST_KIND,
    RULES_FILE,
    SERIES_DETAIL_LIMIT,
    SERIES_METRICS_KIND,
    STATE_FILE,
)
from recursive_training.exceptions import OutputError, StateError
from recursive_training.intervals import (
    BUCKET_GROWTH,
    IntervalSums,
    level_label,
    min_residuals,
    pooled_metrics,
    series_metrics,
)
from recursive_training.metrics import ErrorSums
from recursive_training.rules import beta_trust
from recursive_training.series_metrics import (
    distribution,
    series_summary,
    series_table,
    skill_spread,
)
from recursive_training.stages.training_stages import TrainingResult
from recursive_training.trust import validate_rules

log = logging.getLogger(__name__)
# Predictions the spool gathers before it writes them (about 2 MiB): bounded, so the
# driver's memory stays flat in the length of the history.
SPOOL_ROWS: Final = 2**16


EXTREME_RULES: Final = 20
"""Most and least trusted rules kept in the results document at any number of series."""


def rule_trust_table(rule_table: list[tuple[str, str, float, float]], fdr: float) -> pa.Table:
    """Counts, Beta trust and both verdicts of every rule: FDR-controlled and the interval's.

    ``validated`` is the Benjamini-Hochberg decision at ``fdr`` over all rules of the run;
    ``interval_above_half`` is the older, per-rule criterion (the credible interval's lower
    end above one half), kept for comparison: over many rules it passes some by chance.
    """
    hits = np.array([r[2] for r in rule_table], dtype=np.float64)
    misses = np.array([r[3] for r in rule_table], dtype=np.float64)
    trust = beta_trust(hits, misses)
    tested = validate_rules(hits, misses, fdr)
    return pa.table(
        {
            "rule": pa.array([r[0] for r in rule_table], pa.string()),
            "target": pa.array([r[1] for r in rule_table], pa.string()),
            "hits": pa.array(hits),
            "misses": pa.array(misses),
            "trust_mean": pa.array(trust.mean, pa.float64()),
            "trust_lower": pa.array(trust.lower, pa.float64()),
            "trust_upper": pa.array(trust.upper, pa.float64()),
            "p_value": pa.array(tested.p_values, pa.float64()),
            "q_value": pa.array(tested.q_values, pa.float64()),
            "validated": pa.array(tested.validated, pa.bool_()),
            "interval_above_half": pa.array(trust.interval_above_half, pa.bool_()),
        }
    )


def metrics_table(result: TrainingResult) -> pa.Table:
    """The per-series metrics of a run (``metrics.parquet``): one row per series and
    horizon, horizon by horizon."""
    return pa.concat_tables(
        [_with_horizon(_horizon_metrics(r), r.structure.horizon, 1) for r in _horizons(result)]
    )


def run_rules_table(result: TrainingResult) -> pa.Table:
    """Every rule of every horizon (``rules.parquet``), each horizon's rules validated
    among themselves, as a run of that horizon alone validates them."""
    return pa.concat_tables(
        [
            _with_horizon(rule_trust_table(r.rule_table, result.config.fdr), r.structure.horizon, 2)
            for r in _horizons(result)
        ]
    )


def _horizons(result: TrainingResult) -> tuple[TrainingResult, ...]:
    return result.by_horizon or (result,)


def _with_horizon(table: pa.Table, horizon: int, position: int) -> pa.Table:
    """``table`` with a ``horizon`` column at ``position``."""
    column = pa.array(np.full(table.num_rows, horizon, dtype=np.int32))
    return table.add_column(position, "horizon", column)


def _horizon_metrics(result: TrainingResult) -> pa.Table:
    """One horizon's per-series metrics (``metrics.parquet``), with, per interval level,
    ``interval_n_<label>`` (predictions that had an interval), ``coverage_<label>``,
    ``mean_width_<label>`` and ``winkler_<label>``."""
    dropped = np.zeros(len(result.variables))
    for evaluation in result.evaluations.values():
        dropped = dropped + evaluation.dropped_missing  # a count per series or for all
    table = series_table(result.variables, result.errors, dropped)
    metrics = interval_totals(result).metrics()
    for i, level in enumerate(result.config.intervals):
        label = level_label(level)
        table = table.append_column(f"interval_n_{label}", pa.array(metrics["n"][i], pa.int64()))
        for name in ("coverage", "mean_width", "winkler"):
            table = table.append_column(
                f"{name}_{label}", pa.array(metrics[name][i], pa.float64(), from_pandas=True)
            )
    return table


def interval_totals(result: TrainingResult) -> IntervalSums:
    """The interval sums of every evaluated batch together (levels x series)."""
    return sum(
        result.intervals.values(),
        IntervalSums.zeros(len(result.config.intervals), len(result.variables)),
    )


def interval_document(result: TrainingResult, detailed: bool) -> dict[str, Any]:
    """The results document's ``metrics.intervals``: how they are made, and per level the
    pooled coverage, mean width and Winkler score, the spread of coverage across series
    and (up to SERIES_DETAIL_LIMIT series) each series' metrics."""
    levels = result.config.intervals
    totals = interval_totals(result)
    coverage = totals.metrics()["coverage"]
    document: dict[str, Any] = {
        "method": "walk-forward split conformal: absolute residuals of each series' "
        "predictions realized before the batch starts",
        "quantile": {
            "kind": "log-bucket sketch",
            "bucket_growth": BUCKET_GROWTH,
            "bound": f"exact conformal quantile <= half-width < {BUCKET_GROWTH:g} x it",
        },
        "levels": {
            label: {"level": q, "min_residuals": min_residuals(q)}
            | metrics
            | {"coverage_across_series": distribution(coverage[i])}
            for i, (q, (label, metrics)) in enumerate(
                zip(levels, pooled_metrics(levels, totals).items(), strict=True)
            )
        },
    }
    if detailed:
        document["series"] = series_metrics(levels, totals, result.variables)
    return document


def penalty_table(result: TrainingResult) -> pa.Table:
    """The penalty each evaluated batch's model used for each target it predicted, at
    every horizon (``penalties.parquet``, --ridge-alpha auto only), in horizon, batch,
    then target order."""
    return pa.concat_tables(
        [_with_horizon(_horizon_penalties(r), r.structure.horizon, 2) for r in _horizons(result)]
    )


def _horizon_penalties(result: TrainingResult) -> pa.Table:
    """One horizon's chosen penalties, by batch and target."""
    assert result.penalties is not None
    chosen = result.penalties.chosen
    targets = result.penalties.targets
    starts = {b.batch_id: b.start for b in result.batches}
    batch_ids = sorted(chosen)
    alphas = np.array([chosen[k] for k in batch_ids]).reshape(len(batch_ids), len(targets))
    rows, columns = np.nonzero(np.isfinite(alphas))
    ids = np.array(batch_ids, dtype=np.int32)[rows]
    return pa.table(
        {
            "batch_id": pa.array(ids, pa.int32()),
            "batch_start": pa.array([starts[k] for k in ids.tolist()], pa.timestamp("ns")),
            "target": pa.DictionaryArray.from_arrays(
                pa.array(columns, pa.int32()), pa.array(list(targets), pa.string())
            ),
            "ridge_alpha": pa.array(alphas[rows, columns], pa.float64()),
        }
    )


def penalty_summary(alphas: FloatArray) -> dict[str, Any]:
    """Median, least and largest of some chosen penalties (NaN: target not predicted)."""
    known = alphas[np.isfinite(alphas)]
    if not len(known):
        return {"median": None, "min": None, "max": None}
    return {
        "median": float(np.median(known)),
        "min": float(known.min()),
        "max": float(known.max()),
    }


def _batch_penalty(result: TrainingResult, batch_id: int, detailed: bool) -> dict[str, Any]:
    """The penalties a batch's model used: their summary, and per target when listed."""
    assert result.penalties is not None
    alphas = result.penalties.chosen.get(batch_id)
    if alphas is None:
        return penalty_summary(np.zeros(0))
    record = penalty_summary(alphas)
    if detailed:
        record["by_target"] = {
            t: (None if np.isnan(a) else float(a))
            for t, a in zip(result.penalties.targets, alphas.tolist(), strict=True)
        }
    return record


def _penalty_section(result: TrainingResult, detailed: bool) -> dict[str, Any]:
    """How --ridge-alpha auto chose: the grid, the fallback, each target's final penalty
    (or their summary beyond SERIES_DETAIL_LIMIT) and how often each value was chosen."""
    penalties = result.penalties
    assert penalties is not None
    final = np.asarray(penalties.grid)[penalties.choice()]
    every = np.concatenate([*penalties.chosen.values(), np.zeros(0)])
    every = every[np.isfinite(every)]
    section: dict[str, Any] = {
        "grid": list(penalties.grid),
        "fallback": penalties.grid[penalties.fallback],
        "chosen_by": "least squared walk-forward error of the predictions realized before "
        "the batch starts, per target",
        "final": penalty_summary(final),
        "times_chosen": {f"{a:g}": int((every == a).sum()) for a in penalties.grid},
    }
    if detailed:
        section["final_by_target"] = dict(zip(penalties.targets, final.tolist(), strict=True))
    return section


def stamped(table: pa.Table, kind: str, run_id: str) -> pa.Table:
    """``table`` with its kind and run id in the Parquet metadata (to match a run's files)."""
    return table.replace_schema_metadata({"pulse.dev/kind": kind, "pulse.dev/run-id": run_id})


def build_document(result: TrainingResult, rules: pa.Table | None = None) -> dict[str, Any]:
    """The versioned results JSON of a run (plain types only).

    The series' names, every series' metrics (overall and per batch), every rule and the
    coefficients (unless one model serves all) are listed only up to SERIES_DETAIL_LIMIT
    series; the summary across series is there at any size. ``rules`` is the first
    horizon's rule_trust_table when the caller has it.

    Schema 3: everything of schema 2 is there and is about the run's first horizon (so a
    reader of schema 2 reads a one-horizon run as before); ``horizons`` lists the horizons
    and, with more than one, ``by_horizon`` holds each horizon's metrics, batches, rules
    and model as the top level holds the first's.
    """
    document = _horizon_document(result, rules)
    document["horizons"] = list(result.horizons)
    if len(result.by_horizon) > 1:
        document["by_horizon"] = [
            {"horizon": r.structure.horizon}
            | {k: v for k, v in _horizon_document(r).items() if k in HORIZON_SECTIONS}
            for r in result.by_horizon
        ]
    return document


HORIZON_SECTIONS: Final = ("metrics", "model", "rule_extremes", "batches", "rules")
"""The parts of the results document that ``by_horizon`` repeats for each horizon."""


def _horizon_document(result: TrainingResult, rules: pa.Table | None = None) -> dict[str, Any]:
    """The results document of one horizon of ``result`` (its per-horizon fields)."""
    variables = result.variables
    detailed = len(variables) <= SERIES_DETAIL_LIMIT
    if rules is None:
        rules = rule_trust_table(result.rule_table, result.config.fdr)
    by_trust = rules.take(
        pc.sort_indices(rules, [("trust_mean", "descending")]) if len(rules) else []
    )
    batches = []
    for batch in result.batches:
        stats = result.statistics[batch.batch_id]
        evaluation = result.evaluations.get(batch.batch_id)
        errors = evaluation.errors if evaluation else ErrorSums.zeros(len(variables))
        record: dict[str, Any] = {
            "batch_id": batch.batch_id,
            "start": batch.start.isoformat(),
            "end": batch.end.isoformat(),
            "samples_trained": stats.stats.n,
            "samples_evaluated": result.structure.sample_count(errors.n),
            "evaluated": evaluation is not None,
            "dropped_missing": stats.dropped_missing
            + (evaluation.dropped_missing if evaluation else 0),
            "seconds": {
                "statistics": stats.seconds,
                "evaluation": evaluation.seconds if evaluation else 0.0,
            },
            "workers": {
                "statistics": stats.worker,
                "evaluation": evaluation.worker if evaluation else None,
            },
            "skill_across_series": skill_spread(errors),
        }
        if detailed:
            record["metrics"] = errors.table(variables)
        if batch.batch_id in result.intervals:
            record["intervals"] = pooled_metrics(
                result.config.intervals, result.intervals[batch.batch_id]
            )
        if result.penalties is not None:
            record["ridge_alpha"] = _batch_penalty(result, batch.batch_id, detailed)
        batches.append(record)
    across = series_summary(variables, result.errors)
    skill = across["skill_vs_persistence"]
    headline = {
        "horizon": result.structure.horizon,
        "series": len(variables),
        "mean_skill_vs_persistence": skill["mean"],
        "median_skill_vs_persistence": skill["p50"],
        "share_skill_positive": skill["share_positive"],
        "mean_directional_accuracy": across["directional_accuracy"]["mean"],
        "median_mase": across["mase"]["p50"],
        "rules_validated": int(pc.sum(rules["validated"]).as_py() or 0),
        "rules_validated_by_interval": int(pc.sum(rules["interval_above_half"]).as_py() or 0),
        "rules_total": len(rules),
        "fdr": result.config.fdr,
    }
    metrics: dict[str, Any] = {"headline": headline, "across_series": across}
    if detailed:
        metrics["overall"] = result.errors.table(variables)
    if result.config.intervals:
        metrics["intervals"] = interval_document(result, detailed)
    document: dict[str, Any] = {
        "kind": RESULTS_KIND,
        "schema_version": RESULTS_SCHEMA_VERSION,
        "run_id": result.run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "config": result.config.model_dump(mode="json"),
        "config_hash": result.config.training_fingerprint(),
        "engine": result.engine,
        "seconds": result.seconds,
        "resumed_from": result.resumed_from,
        "data": {
            "source": result.source,
            "series": len(variables),
            "start": result.start.isoformat(),
            "end": result.end.isoformat(),
            "rows": result.n_rows,
            "batches": len(result.batches),
            "samples_trained": sum(s.stats.n for s in result.statistics.values()),
            "samples_evaluated": result.structure.sample_count(result.errors.n),
            "samples_dropped_missing": sum(b["dropped_missing"] for b in batches),
        },
        "model": {
            **result.structure.describe(),
            "features": result.features,
            "ridge_alpha": result.config.ridge_alpha,
            "half_life_days": result.config.half_life_days,
            "samples": result.state.stats[result.state.horizons.index(result.structure.horizon)].n,
            "min_train_samples": result.config.evaluation_threshold(len(result.features)),
        },
        "series_detail": {"listed": detailed, "limit": SERIES_DETAIL_LIMIT},
        "metrics": metrics,
        "rule_extremes": {
            "most_trusted": by_trust.slice(0, EXTREME_RULES).to_pylist(),
            "least_trusted": by_trust.slice(
                max(len(rules) - EXTREME_RULES, EXTREME_RULES)
            ).to_pylist(),
        },
        "batches": batches,
        "files": {
            role: _reference(location, result.config.results_path)
            for role, location in data_files(result.config, result.run_id).items()
        },
    }
    if result.penalties is not None:
        document["model"]["penalty"] = _penalty_section(result, detailed)
    coefficients = result.structure.coefficient_table(result.coefficients)
    if len(coefficients) <= SERIES_DETAIL_LIMIT:  # a pooled model's one row at any V
        document["model"]["coefficients"] = coefficients
    if detailed:
        document["data"]["variables"] = variables
        document["rules"] = rules.to_pylist()
    return document


# One line per value below this depth: a batch's metrics of one series, a rule's entry.
JSON_LINE_DEPTH: Final = 3
# The C encoder (json's only fast path; it does not indent, so it renders the deep values)
_JSON_LINE = json.JSONEncoder(allow_nan=False, separators=(", ", ": "))


def document_json(document: dict[str, Any]) -> bytes:
    """The results document as indented JSON, its containers down to ``JSON_LINE_DEPTH``
    one item a line and each deeper value on one line of its own.

    ``json.dumps(indent=2)`` runs json's pure-Python encoder over every number of every
    batch and series, which cost a run of 10 series more than its statistics did.
    """
    parts: list[str] = []
    _json_lines(document, 0, parts)
    return "".join(parts).encode()


def _json_lines(value: Any, depth: int, parts: list[str]) -> None:
    """Append ``value``'s JSON at ``depth`` (see ``document_json``) to ``parts``."""
    if depth >= JSON_LINE_DEPTH or not isinstance(value, dict | list) or not value:
        parts.append(_JSON_LINE.encode(value))
        return
    inner = "\n" + "  " * (depth + 1)
    if isinstance(value, dict):
        parts.append("{")
        for position, (key, item) in enumerate(value.items()):
            # the keys json.dumps accepts, written as it writes them
            name = key if isinstance(key, str) else _JSON_LINE.encode(key).strip('"')
            parts.append(f"{',' if position else ''}{inner}{_JSON_LINE.encode(name)}: ")
            _json_lines(item, depth + 1, parts)
        parts.append("\n" + "  " * depth + "}")
        return
    parts.append("[")
    for position, item in enumerate(value):
        parts.append(("," if position else "") + inner)
        _json_lines(item, depth + 1, parts)
    parts.append("\n" + "  " * depth + "]")


PARQUET: Final = "application/vnd.apache.parquet"


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as a Parquet file in memory (zstd: the tables are numbers and names)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    return bytes(buffer.getvalue())


def data_files(config: TrainingConfig, run_id: str) -> dict[str, str]:
    """Where the run ``run_id`` writes its state, predictions, metrics and rule tables (and
    the chosen penalties under --ridge-alpha auto)."""
    names = {
        "state": STATE_FILE,
        "predictions": PREDICTIONS_FILE,
        "metrics": METRICS_FILE,
        "rules": RULES_FILE,
    }
    if config.ridge_alpha == "auto":
        names["penalties"] = PENALTIES_FILE
    return {
        role: storage.join(config.output_dir, name.format(run_id=run_id))
        for role, name in names.items()
    }


def _reference(location: str, results_path: str) -> str:
    """How the results document names a file: relative to its own folder when inside it."""
    folder, _, name = location.rpartition("/")
    if folder == results_path.rpartition("/")[0]:
        return name
    return location if "://" in location else str(Path(location).resolve())


def resolve_reference(reference: str, results_path: str) -> str:
    """The location of a file the results document at ``results_path`` names."""
    if "://" in reference or Path(reference).is_absolute():
        return reference
    return storage.join(results_path.rpartition("/")[0] or ".", reference)


def referenced_files(data: bytes, results_path: str) -> dict[str, str] | None:
    """The data files a results document names, or None when ``data`` is not one."""
    try:
        document = json.loads(data)
        if document.get("kind") != RESULTS_KIND:
            return None
        files = document["files"].items()
    except (ValueError, TypeError, AttributeError, KeyError):
        return None
    return {str(k): resolve_reference(str(v), results_path) for k, v in files}


def check_output_free(config: TrainingConfig) -> None:
    """Refuse to replace an earlier run's results unless --overwrite was given."""
    if not config.overwrite and storage.exists(config.results_path, config.output_s3_settings):
        raise OutputError(
            f"{config.results_path} already holds the results of an earlier run; "
            "pass --overwrite to replace them or choose another --output-dir"
        )


class PredictionsSpool:
    """Collects walk-forward predictions batch by batch in a temporary Parquet file.

    Used as the pipeline's ``predictions_sink`` so the driver keeps no prediction in memory;
    ``write_outputs`` then copies the file to the output location.
    """

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="pulse-predictions-")
        self.path = Path(self._folder.name) / PREDICTIONS_FILE.format(run_id="spool")
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def __call__(self, predictions: pa.Table) -> None:
        """Append one batch's predictions (written once SPOOL_ROWS have gathered)."""
        self._pending.append(predictions)
        self._pending_rows += predictions.num_rows
        if self._pending_rows >= SPOOL_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Write the gathered batches as one row group: the per-write cost (page headers,
        statistics) is paid once per SPOOL_ROWS rows, not once per batch."""
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        if self._writer is None:
            # Dictionary-encode and compress only the columns with few distinct values: on
            # the float columns dictionaries tripled the time to write, and compression cost
            # a quarter of it and saved nothing. Min/max statistics only on the time, batch
            # and horizon columns (what readers filter on): on ``variable`` (a dictionary
            # column) Arrow finds the distinct codes of every page to compute them, which
            # was half the write at 10,000 series, and every row group spans all series.
            keys = ["origin", "realized", "batch_id", "horizon", "variable"]
            self._writer = pq.ParquetWriter(
                self.path,
                table.schema,
                use_dictionary=keys,
                compression={
                    name: "snappy" if name in keys else "none" for name in table.schema.names
                },
                write_statistics=["origin", "realized", "batch_id", "horizon"],
            )
        self._writer.write_table(table)

    def finish(self, empty: Callable[[], pd.DataFrame]) -> Path:
        """Close the file (writing the schema of the frame ``empty`` makes if no batch was
        evaluated)."""
        self._flush()
        if self._writer is None:
            empty().to_parquet(self.path, index=False)
        else:
            self._writer.close()
            self._writer = None
        return self.path

    def __enter__(self) -> PredictionsSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._writer is not None:
            self._writer.close()
        self._folder.cleanup()


def write_outputs(
    result: TrainingResult,
    config: TrainingConfig,
    document: dict[str, Any],
    predictions: Path | None = None,
    on_commit: Callable[[], None] | None = None,
) -> None:
    """Write predictions, state, the metrics and rule tables, then commit ``document``; all
    of it or none.

    ``predictions`` is the spooled Parquet file when the run used a PredictionsSpool;
    otherwise the predictions the result holds are written. ``on_commit`` is called the
    moment the results document is in place (signals are held from the write until then).
    """
    if predictions is None:
        buffer = io.BytesIO()
        result.predictions_frame().to_parquet(buffer, index=False)
    locations = data_files(config, result.run_id)
    files: list[tuple[str, bytes | Path, str]] = [
        (
            locations["predictions"],
            buffer.getvalue() if predictions is None else predictions,
            PARQUET,
        ),
        (locations["state"], result.state.to_bytes(), "application/octet-stream"),
        (
            locations["metrics"],
            parquet_bytes(stamped(metrics_table(result), SERIES_METRICS_KIND, result.run_id)),
            PARQUET,
        ),
        (
            locations["rules"],
            parquet_bytes(stamped(run_rules_table(result), RULE_TRUST_KIND, result.run_id)),
            PARQUET,
        ),
    ]
    if result.penalties is not None:
        table = stamped(penalty_table(result), PENALTIES_KIND, result.run_id)
        files.append((locations["penalties"], parquet_bytes(table), PARQUET))
    # stored with S3 objects, so a reader can match the files of one run
    metadata = {"run-id": result.run_id, "config-hash": document["config_hash"]}
    earlier = _earlier_files(config)
    started: list[str] = []
    committed = False
    try:
        for location, data, content_type in files:
            started.append(location)  # before the write: an interrupted write is undone too
            storage.write_bytes(
                location,
                data,
                config.output_s3_settings,
                content_type=content_type,
                metadata=metadata,
                consume=True,  # the spool: moved into place when it is on the same disk
            )
        with interrupts.held():
            try:
                storage.write_bytes(
                    config.results_path,
                    document_json(document),
                    config.output_s3_settings,
                    content_type="application/json",
                    metadata=metadata,
                )
            except OutputError:
                if not _landed_anyway(config, result.run_id):
                    raise
            committed = True
            if on_commit is not None:
                on_commit()
            for location in sorted(set(earlier) - set(locations.values())):
                _remove_leftover(location, config, "of the replaced run")
    except BaseException as e:
        if committed:  # a signal held during the commit: the results stand
            raise
        with interrupts.held():
            for location in started:
                _remove_leftover(location, config, "of the failed run")
        if isinstance(e, OSError):
            raise OutputError(f"cannot write results to {config.output_dir}: {e}") from e
        raise


def _earlier_files(config: TrainingConfig) -> list[str]:
    """The data files of the run whose results this one replaces (deleted after the commit)."""
    if not config.overwrite or not storage.exists(config.results_path, config.output_s3_settings):
        return []
    try:
        data = storage.read_bytes(config.results_path, config.output_s3_settings)
    except StateError:
        return []
    return list((referenced_files(data, config.results_path) or {}).values())


def _landed_anyway(config: TrainingConfig, run_id: str) -> bool:
    """True when a results write that reported an error stored them all the same (an S3
    PUT whose answer was lost); the data files must then stay."""
    try:
        data = storage.read_bytes(config.results_path, config.output_s3_settings)
        return bool(json.loads(data).get("run_id") == run_id)
    except (StateError, ValueError, AttributeError):
        return False


def _remove_leftover(location: str, config: TrainingConfig, whose: str) -> None:
    """Delete a file no results document names; if that fails, say so and carry on."""
    try:
        storage.remove(location, config.output_s3_settings)
    except (OSError, OutputError) as e:
        log.warning("could not remove %s %s (%s); delete it by hand", location, whose, e)


SUMMARY_ROWS: Final = 12
"""Series listed in the terminal summary: all of them up to this, else the best and worst half."""


def summary(document: dict[str, Any]) -> str:
    """A few lines for the terminal, as many for 100,000 series as for 3: what ran, how
    well across series, the best and worst series, where the files are."""
    data, headline = document["data"], document["metrics"]["headline"]
    across = document["metrics"]["across_series"]
    skill = across["skill_vs_persistence"]
    share = skill["share_positive"]
    lines = [
        f"Trained on {across['count']} series, {data['start'][:10]} to "
        f"{data['end'][:10]}: {data['samples_trained']} samples in {data['batches']} batches "
        f"({document['seconds']:.1f}s, {document['engine']})",
        f"Walk-forward: {data['samples_evaluated']} samples evaluated, mean skill vs persistence "
        f"{_fmt(skill['mean'])} (median {_fmt(skill['p50'])}, "
        f"{'n/a' if share is None else f'{share:.0%}'} of series above 0), directional accuracy "
        f"{_fmt(headline['mean_directional_accuracy'])}",
        f"Rules validated: {headline['rules_validated']} of {headline['rules_total']} at false "
        f"discovery rate {headline['fdr']:g} (Benjamini-Hochberg); "
        f"{headline['rules_validated_by_interval']} have their {CONFIDENCE_LEVEL:.0%} "
        "interval above 0.5",
    ]
    for section in document.get("by_horizon", []):
        h = section["metrics"]["headline"]
        lines.append(
            f"  horizon {section['horizon']}: median skill {_fmt(h['median_skill_vs_persistence'])}"
            f", directional accuracy {_fmt(h['mean_directional_accuracy'])}, median MASE "
            f"{_fmt(h['median_mase'])}, rules validated {h['rules_validated']}"
        )
    intervals = document["metrics"].get("intervals")
    if intervals:
        lines.append(
            "Intervals: "
            + "; ".join(
                f"{m['level']:.0%} covered {_percent(m['coverage'])} of {m['n']} "
                f"(Winkler score {_fmt(m['winkler'])})"
                for m in intervals["levels"].values()
            )
        )
    penalty = document["model"].get("penalty")
    if penalty is not None:
        final = penalty["final"]
        lines.append(
            f"Ridge penalty chosen walk-forward from {len(penalty['grid'])} values: final "
            f"{_fmt(final['median'])} (median over targets; {_fmt(final['min'])} to "
            f"{_fmt(final['max'])}); per batch and target in {document['files']['penalties']}"
        )
    lines += [
        "",
        f"{'series':<24} {'n':>7} {'rmse':>11} {'skill':>7} {'dir.acc':>7} {'mase':>7}"
        + (f"  (horizon {document['horizons'][0]})" if "by_horizon" in document else ""),
    ]
    overall = document["metrics"].get("overall", {})
    if across["count"] <= SUMMARY_ROWS and overall:
        listed = [{"series": name} | m for name, m in overall.items()]
    else:
        half = SUMMARY_ROWS // 2
        listed = [*across["best"][:half], None, *across["worst"][:half][::-1]]
    for m in listed:
        if m is None:
            lines.append(f"{'...':<24} (best above, worst below; every series in metrics.parquet)")
            continue
        lines.append(
            f"{m['series'][:24]:<24} {m['n']:>7} {_fmt(m['rmse'], 11)} "
            f"{_fmt(m['skill_vs_persistence'], 7)} {_fmt(m['directional_accuracy'], 7)} "
            f"{_fmt(m['mase'], 7)}"
        )
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _fmt(value: float | None, width: int = 0) -> str:
    text = (
        "n/a"
        if value is None
        else f"{value:.4g}"
        if abs(value) >= 1e-3 or value == 0
        else f"{value:.2e}"
    )
    return text.rjust(width)
