"""The run's report: charts to look at instead of numbers to read, on one HTML page.

``render_report`` draws PNGs from the results document, the per-series metrics table and
the walk-forward predictions. Up to SERIES_DETAIL_LIMIT series: one chart per shown
variable (predicted against actual change, calibration, cumulative skill against
persistence), a skill heatmap of variables x batches, the skill of each batch across
variables, and the trust of every rule. Beyond it, distributions instead of one chart per
series: a histogram of skill across series, skill against the series' scale, the same
walk-forward charts for the best and worst few series only (reading just their rows of
the predictions file), the skill of each batch across series and the most and least
trusted rules, so the number of charts and the time to draw them are bounded at any V.
It then writes ``index.html`` with every PNG embedded, so the page can be copied alone.
Figures are drawn on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot), so no global
matplotlib state is touched, and every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TypeVar

import matplotlib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from recursive_training import storage
from recursive_training.arrays import FloatArray
from recursive_training.constants import CONFIDENCE_LEVEL
from recursive_training.exceptions import OutputError

MAX_VARIABLE_CHARTS: Final = 12
"""Variables drawn one chart each (in data order) in a report that lists every series."""
EXTREME_CHARTS: Final = 3
"""Best and worst series drawn one chart each in a report of many series."""
HISTOGRAM_BINS: Final = 60
TAIL_QUANTILE: Final = 0.01
"""Skill below this quantile across series is drawn at the lower edge of the distribution
charts (skill is at most 1 but unbounded below: one hopeless series would flatten the rest)."""
MAX_HEATMAP_ROWS: Final = 40
"""Variables in the skill heatmap; beyond this, the best and worst half of it."""
MAX_RULE_BARS: Final = 40
"""Rules in the trust chart; beyond this, the most and least trusted half of it."""
DPI: Final = 100
SKILL_LIMITS: Final = (0.1, 0.2, 0.5, 1.0)
"""Heatmap colours saturate at the first of these that covers 90% of the cells (the last if
none does): a tiny batch can score -900, and typical skills of 0.05 would all look white."""
ACTUAL, PREDICTED, VALIDATED, OTHER = "#7f7f7f", "#1f77b4", "#2a9d8f", "#c4c4c4"
INTERVAL_PREFIXES: Final = ("lower_", "upper_")
NOT_EVALUATED: Final = "No batch was evaluated (see the walk-forward predictions above)."

T = TypeVar("T")


@dataclass(frozen=True)
class Section:
    """One chart of the page, or the reason it could not be drawn (``path`` is None)."""

    title: str
    caption: str
    path: Path | None = None


@dataclass(frozen=True)
class Panel:
    """The charts of one horizon (``horizon`` None: the page of a one-horizon run)."""

    horizon: int | None
    sections: dict[str, list[Section]]


Predictions = pd.DataFrame | Path
"""Walk-forward predictions: a frame, or a Parquet file of which only the drawn series are read."""


def render_report(
    document: dict[str, Any], series: pd.DataFrame, predictions: Predictions, out_dir: str
) -> list[Path]:
    """Write the charts and ``index.html`` into ``out_dir``; return their paths, the page last.

    ``series`` is the per-series metrics table (metrics.parquet) of the same run.
    """
    folder = _prepare_folder(out_dir)
    if "by_horizon" not in document:
        panels = [Panel(None, _horizon_sections(document, series, predictions, folder))]
        overview: list[Section] = []
    else:
        panels = [
            Panel(
                int(section["horizon"]),
                _horizon_sections(
                    _horizon_view(document, section),
                    _series_at(series, int(section["horizon"])),
                    predictions,
                    _prepare_folder(str(folder / f"horizon-{section['horizon']}")),
                ),
            )
            for section in document["by_horizon"]
        ]
        overview = [_horizon_chart(document, folder)]
    page = folder / "index.html"
    _write(page, _page(document, overview, panels).encode())
    charts = [
        s.path
        for group in [overview, *(g for p in panels for g in p.sections.values())]
        for s in group
        if s.path is not None
    ]
    return [*charts, page]


def _horizon_view(document: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """The document as one horizon's charts read it: its ``by_horizon`` entry's metrics,
    model, batches and rules in place of the first horizon's, its sample counts in
    ``data``, and ``horizon`` set."""
    counts = {
        f"samples_{what}": sum(b[f"samples_{what}"] for b in section["batches"])
        for what in ("trained", "evaluated")
    }
    dropped = sum(b["dropped_missing"] for b in section["batches"])
    data = {**document["data"], **counts, "samples_dropped_missing": dropped}
    return {**document, **section, "data": data}


def _series_at(series: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """The per-series metrics of one horizon (metrics.parquet has a row per horizon)."""
    if "horizon" not in series.columns:
        return series
    return series[series["horizon"] == horizon].reset_index(drop=True)


def _labelled(document: dict[str, Any], title: str) -> str:
    """A chart's title, naming the horizon when the chart is one of several horizons'."""
    return f"{title}, horizon {document['horizon']}" if "horizon" in document else title


def _horizon_sections(
    document: dict[str, Any], series: pd.DataFrame, predictions: Predictions, folder: Path
) -> dict[str, list[Section]]:
    """The charts of one horizon (of the run's only one, or of a view), by heading."""
    if document["series_detail"]["listed"]:
        variables: list[str] = document["data"]["variables"]
        sections = {
            "Walk-forward predictions": _variable_sections(
                document,
                variables[:MAX_VARIABLE_CHARTS],
                predictions,
                folder,
                left_out=len(variables) - MAX_VARIABLE_CHARTS,
            ),
            "Skill against persistence by batch": [
                _skill_heatmap(document, folder),
                _skill_by_batch(document, folder),
            ],
            "Rule trust": [_rule_trust(document, folder)],
        }
    else:
        across = document["metrics"]["across_series"]
        extremes = [m["series"] for m in across["best"][:EXTREME_CHARTS]]
        worst = [m["series"] for m in across["worst"][:EXTREME_CHARTS]][::-1]
        extremes += [name for name in worst if name not in extremes]
        sections = {
            "Skill across series": [
                _skill_histogram(document, series, folder),
                _skill_against_scale(document, series, folder),
            ],
            "Walk-forward predictions of the best and worst series": _variable_sections(
                document, extremes, predictions, folder
            ),
            "Skill against persistence by batch": [_skill_by_batch(document, folder)],
            "Rule trust": [_rule_trust(document, folder)],
        }
    if "intervals" in document["metrics"]:
        sections["Prediction intervals"] = [_interval_coverage(document, folder)]
    if "penalty" in document["model"]:
        sections["Ridge penalty chosen walk-forward"] = [_penalty_path(document, folder)]
    return {
        _labelled(document, heading): [
            replace(section, title=_labelled(document, section.title)) for section in group
        ]
        for heading, group in sections.items()
    }


def _prepare_folder(out_dir: str) -> Path:
    """The report folder, created if missing; OutputError when that is impossible."""
    if "://" in out_dir:
        raise OutputError(
            f"the report is written to a local folder, not to {out_dir}; "
            "pass a local path to --report"
        )
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the report folder {folder}: {e.strerror or e}") from e
    return folder


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; OutputError naming the path on failure."""
    try:
        storage.write_bytes(str(path), data)
    except OSError as e:
        raise OutputError(f"cannot write the report file {path}: {e.strerror or e}") from e


def _save(figure: Figure, path: Path) -> Path:
    """Render ``figure`` as a PNG at ``path`` (atomically) and return the path."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    _write(path, buffer.getvalue())
    return path


def _text(value: str) -> str:
    """``value`` as literal figure text: a ``$`` would otherwise start mathtext."""
    return value.replace("$", r"\$")


def _number(value: float | int | None) -> str:
    """A metric for people: four significant digits, ``n/a`` when there were no samples."""
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1 (English ``-s``/``-es``, and ``series``)."""
    if n == 1 or noun.endswith("series"):
        return f"{n} {noun}"
    return f"{n} {noun}{'es' if noun.endswith(('s', 'ch')) else 's'}"


def _ends(items: Sequence[T], limit: int) -> tuple[list[T], int]:
    """``items`` if they fit in ``limit``, else its first and last halves; and how many left out."""
    if len(items) <= limit:
        return list(items), 0
    half = limit // 2
    return [*items[:half], *items[-half:]], len(items) - 2 * half


def _date_axis(axes: Axes) -> None:
    """Concise date ticks that do not overlap, whatever the span."""
    # matplotlib.dates leaves these two constructors unannotated
    locator = AutoDateLocator(maxticks=8)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


# --- per-variable charts ---------------------------------------------------------------


def _predictions_of(predictions: Predictions, names: Sequence[str], horizon: int) -> pd.DataFrame:
    """The walk-forward predictions of ``names`` at ``horizon`` only, in time order.

    From a file, only those rows are materialized: the file of a run of 100,000 series
    holds a hundred million predictions, of which the report draws a few thousand.
    """
    columns = ["realized", "variable", "predicted", "actual"]
    if isinstance(predictions, pd.DataFrame):
        columns += [c for c in predictions.columns if c.startswith(INTERVAL_PREFIXES)]
        chosen = predictions["variable"].isin(names) & (predictions["horizon"] == horizon)
        frame = predictions.loc[chosen, columns]
    else:
        try:
            names_in_file = pq.read_schema(predictions).names
            columns += [c for c in names_in_file if c.startswith(INTERVAL_PREFIXES)]
            table = pq.read_table(
                predictions,
                columns=columns,
                filters=[("variable", "in", list(names)), ("horizon", "=", horizon)],
            )
        except OSError as e:
            raise OutputError(f"cannot read the predictions {predictions}: {e}") from e
        frame = table.to_pandas()
    return frame.sort_values("realized", kind="stable", ignore_index=True)


def _series_metrics(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Whole-run metrics of the series the document names: all, or the best and worst."""
    metrics = document["metrics"]
    if "overall" in metrics:
        return dict(metrics["overall"])
    across = metrics["across_series"]
    return {m["series"]: m for m in [*across["best"], *across["worst"]]}


def _variable_sections(
    document: dict[str, Any],
    names: Sequence[str],
    predictions: Predictions,
    folder: Path,
    left_out: int = 0,
) -> list[Section]:
    """One walk-forward chart per series in ``names`` and a note on the ``left_out`` ones
    (the variables after the first few), or why there are none."""
    horizon = _horizon_of(document)
    frame = _predictions_of(predictions, names, horizon) if names else pd.DataFrame()
    if frame.empty:
        return [Section("No walk-forward predictions", _why_not_evaluated(document))]
    known = _series_metrics(document)
    by_name = dict(tuple(frame.groupby("variable", observed=True, sort=False)))
    sections = []
    for index, name in enumerate(names, start=1):
        if name not in by_name:
            sections.append(Section(name, "No walk-forward prediction of this variable."))
            continue
        path = folder / f"variable_{index:02d}_{_slug(name)}.png"
        metrics = known.get(name, {})
        sections.append(
            Section(
                name,
                "Skill vs persistence "
                f"{_number(metrics.get('skill_vs_persistence'))}, directional accuracy "
                f"{_number(metrics.get('directional_accuracy'))}, RMSE "
                f"{_number(metrics.get('rmse'))} over {_number(metrics.get('n'))} predictions.",
                _variable_chart(name, by_name[name], horizon, path),
            )
        )
    if left_out > 0:
        sections.append(
            Section(
                f"{_count(left_out, 'more variable')} not drawn",
                f"Only the first {len(names)} variables (in data order) get a chart; the "
                "table above lists them all. Choose which with --variables.",
            )
        )
    return sections


def _first_horizon(document: dict[str, Any]) -> int:
    """The horizon the document's top level is about (schema 2 knew only ``horizon``)."""
    return int(document.get("horizons", [document["config"]["horizon"]])[0])


def _horizon_of(document: dict[str, Any]) -> int:
    """The horizon a (view of the) document is about."""
    return int(document["horizon"]) if "horizon" in document else _first_horizon(document)


def _horizon_chart(document: dict[str, Any], folder: Path) -> Section:
    """Median skill (with its interquartile range across series) and median MASE against
    the horizon: how fast the forecasts lose their edge."""
    sections = document["by_horizon"]
    horizons = [s["horizon"] for s in sections]
    across = [s["metrics"]["across_series"] for s in sections]

    def values(key: str, quantile: str) -> FloatArray:
        return np.array(
            [np.nan if a[key][quantile] is None else a[key][quantile] for a in across], float
        )

    figure = Figure(figsize=(9.0, 3.8), layout="constrained")
    skill, mase = figure.subplots(1, 2)
    positions = np.arange(len(horizons))
    skill.fill_between(
        positions,
        values("skill_vs_persistence", "p25"),
        values("skill_vs_persistence", "p75"),
        color=PREDICTED,
        alpha=0.2,
        label="interquartile range across series",
    )
    skill.plot(positions, values("skill_vs_persistence", "p50"), color=PREDICTED, marker="o",
               label="median across series")  # fmt: skip
    skill.axhline(0.0, color="black", lw=0.6)
    skill.set(xlabel="horizon (steps)", ylabel="skill vs persistence")
    skill.legend(fontsize=8, loc="best")
    mase.plot(positions, values("mase", "p50"), color=PREDICTED, marker="o")
    mase.axhline(1.0, color="black", lw=0.6)
    mase.set(xlabel="horizon (steps)", ylabel="median MASE across series")
    for axes in (skill, mase):
        axes.set_xticks(positions, [str(h) for h in horizons])
    path = _save(figure, folder / "metrics_by_horizon.png")
    return Section(
        "Skill and MASE by horizon",
        "Each horizon has its own walk-forward models, as if run alone. Skill above zero and "
        "MASE below one beat predicting no change; each horizon's charts and tables are in "
        "its panel below.",
        path,
    )


def _why_not_evaluated(document: dict[str, Any]) -> str:
    """The page's explanation when no batch produced walk-forward predictions."""
    return (
        "No batch was evaluated, so there is nothing to compare against the actual changes. "
        "A batch is evaluated only once --min-train-samples "
        f"({document['model']['min_train_samples']}) samples were learned before it, so the "
        f"first batch never is; this run had {_count(document['data']['batches'], 'batch')}. "
        "Train on a longer range or with smaller --batch-size-days."
    )


def _slug(name: str) -> str:
    """A file-name-safe version of a variable name (the page shows the real name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40] or "variable"


def _variable_chart(name: str, frame: pd.DataFrame, horizon: int, path: Path) -> Path:
    """Predicted vs actual change over time, as a scatter, and cumulative skill over time.

    The cumulative panel is the running squared-error gain over persistence (Goyal-Welch),
    scaled so that it ends at the whole-run skill: rising stretches are where the model helps.
    """
    realized = frame["realized"].to_numpy()
    predicted = frame["predicted"].to_numpy(dtype=np.float64)
    actual = frame["actual"].to_numpy(dtype=np.float64)
    change = f"{horizon}-step change"
    figure = Figure(figsize=(15, 3.8), layout="constrained")
    series, scatter, cumulative = figure.subplots(1, 3, width_ratios=[2.2, 1, 1.4])
    figure.suptitle(f"{_text(name)}: walk-forward {change}", fontweight="bold")

    dense = len(frame) > 400
    for values, color, width, label in (
        (actual, ACTUAL, 1.0, "actual"),
        (predicted, PREDICTED, 1.2, "predicted"),
    ):
        series.plot(
            realized,
            values,
            color=color,
            lw=width * (0.6 if dense else 1.0),
            label=label,
            marker=None if dense else ".",
        )
    _interval_bands(series, frame)
    series.axhline(0.0, color="black", lw=0.5)
    series.set(
        title="Predicted and actual change",
        xlabel="realized date",
        ylabel=f"{change} (units of the variable)",
    )
    series.legend(loc="upper left", fontsize=8)
    _date_axis(series)

    _calibration(scatter, predicted, actual)
    scatter.set(xlabel=f"predicted {change}", ylabel=f"actual {change}")

    persistence = float(np.sum(actual**2))
    gain = np.cumsum(actual**2 - (predicted - actual) ** 2) / (persistence or 1.0)
    cumulative.plot(realized, gain, color=PREDICTED)
    cumulative.axhline(0.0, color="black", lw=0.5)
    cumulative.set(
        title="Cumulative skill vs persistence",
        xlabel="realized date",
        ylabel="running ΔSSE / total SSE(persistence)",
    )
    _date_axis(cumulative)
    return _save(figure, path)


def _interval_bands(axes: Axes, frame: pd.DataFrame) -> None:
    """The prediction intervals as bands around the prediction, the widest palest."""
    labels = [c.removeprefix("lower_") for c in frame.columns if c.startswith("lower_")]
    for i, label in enumerate(labels[::-1]):
        axes.fill_between(
            frame["realized"].to_numpy(),
            frame[f"lower_{label}"].to_numpy(dtype=np.float64),
            frame[f"upper_{label}"].to_numpy(dtype=np.float64),
            color=PREDICTED,
            alpha=0.25 + 0.2 * i,
            lw=0,
            label=f"{label.replace('_', '.')}% interval",
        )


def _calibration(axes: Axes, predicted: FloatArray, actual: FloatArray) -> None:
    """Scatter of actual against predicted change, the diagonal, and the fitted slope."""
    axes.scatter(
        predicted,
        actual,
        s=5,
        alpha=0.35 if len(actual) > 400 else 0.7,
        color=PREDICTED,
        edgecolors="none",
    )
    low, high = float(predicted.min()), float(predicted.max())
    axes.plot([low, high], [low, high], color="black", lw=0.8, ls="--", label="actual = predicted")
    if len(actual) > 1 and high > low:
        slope, intercept = np.polyfit(predicted, actual, 1)
        axes.plot(
            [low, high],
            [intercept + slope * low, intercept + slope * high],
            color="#d62728",
            lw=1.2,
            label=f"fit: slope {slope:.2f}",
        )
    axes.axhline(0.0, color="black", lw=0.4)
    axes.axvline(0.0, color="black", lw=0.4)
    axes.set_title(f"Calibration ({len(actual)} predictions)")
    axes.legend(loc="upper left", fontsize=8)


# --- skill across series ---------------------------------------------------------------


def _skill_range(skill: FloatArray) -> tuple[float, float]:
    """The x range of the distribution charts: from the TAIL_QUANTILE of skill (or 0) to the
    best skill (or 0), so that zero, where the model ties persistence, is always in view."""
    low = min(float(np.quantile(skill, TAIL_QUANTILE)), 0.0)
    high = max(float(skill.max()), 0.0)
    return (low, high) if high > low else (low - 0.1, high + 0.1)


def _skill_histogram(document: dict[str, Any], series: pd.DataFrame, folder: Path) -> Section:
    """How many series reach each skill, the ones below the range stacked in the first bar."""
    title = "Distribution of skill across series"
    skill = series["skill_vs_persistence"].to_numpy(dtype=np.float64, na_value=np.nan)
    skill = skill[~np.isnan(skill)]
    if skill.size == 0:
        return Section(title, NOT_EVALUATED)
    low, high = _skill_range(skill)
    below = int((skill < low).sum())
    median = float(np.median(skill))

    figure = Figure(figsize=(10, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.hist(np.clip(skill, low, high), bins=HISTOGRAM_BINS, range=(low, high), color=PREDICTED)
    axes.axvline(0.0, color="#d62728", ls="--", lw=1.2, label="persistence (skill 0)")
    axes.axvline(median, color="black", lw=1.2, label=f"median ({median:.3g})")
    axes.set(xlabel="skill vs persistence (1 - SSE / SSE of no change)", ylabel="series")
    axes.set_title(
        _labelled(document, f"Skill vs persistence across {_count(skill.size, 'series')}"),
        fontweight="bold",
    )
    axes.legend(fontsize=8, loc="upper left")
    path = _save(figure, folder / "skill_histogram.png")
    share = document["metrics"]["across_series"]["skill_vs_persistence"]["share_positive"]
    caption = (
        f"Right of the dashed line the model beats predicting no change: {share:.1%} of the "
        "series with a defined skill."
    )
    if below:
        caption += (
            f" {_count(below, 'series')} with skill below {low:.3g} (the worst "
            f"{TAIL_QUANTILE:.0%}) are counted in the leftmost bar."
        )
    return Section(title, caption, path)


def _skill_against_scale(document: dict[str, Any], series: pd.DataFrame, folder: Path) -> Section:
    """Skill of every series against its scale, with the median skill along the scale."""
    title = "Skill against the series' scale"
    skill = series["skill_vs_persistence"].to_numpy(dtype=np.float64, na_value=np.nan)
    scale = series["rms_change"].to_numpy(dtype=np.float64, na_value=np.nan)
    shown = ~np.isnan(skill) & (np.nan_to_num(scale) > 0)
    if not shown.any():
        return Section(title, NOT_EVALUATED)
    skill, scale = skill[shown], scale[shown]
    low, high = _skill_range(skill)
    dense = skill.size > 2000

    figure = Figure(figsize=(10, 5), layout="constrained")
    axes = figure.subplots()
    axes.scatter(
        scale,
        np.clip(skill, low, high),
        s=3 if dense else 12,
        alpha=0.2 if dense else 0.7,
        color=PREDICTED,
        edgecolors="none",
        rasterized=True,
    )
    edges = np.geomspace(scale.min(), scale.max(), 21) if scale.max() > scale.min() else None
    if edges is not None:
        bins = np.clip(np.searchsorted(edges, scale, side="right") - 1, 0, len(edges) - 2)
        centres, medians = [], []
        for b in range(len(edges) - 1):
            inside = skill[bins == b]
            if inside.size >= 5:
                centres.append(float(np.sqrt(edges[b] * edges[b + 1])))
                medians.append(float(np.median(inside)))
        axes.plot(centres, medians, color="black", lw=1.5, marker="o", ms=3, label="median skill")
    axes.axhline(0.0, color="#d62728", ls="--", lw=1, label="persistence (skill 0)")
    axes.set_xscale("log")
    axes.set_ylim(low - 0.02 * (high - low), high + 0.02 * (high - low))
    axes.set(
        xlabel="scale: RMS of the actual change (units of the series, log)",
        ylabel="skill vs persistence",
    )
    axes.set_title(
        _labelled(document, f"Skill against scale, {_count(skill.size, 'series')}"),
        fontweight="bold",
    )
    axes.legend(fontsize=8, loc="lower right")
    path = _save(figure, folder / "skill_vs_scale.png")
    return Section(
        title,
        "Each dot is a series. A trend in the median line means the model's quality depends on "
        "the series' scale (for example near-constant or very noisy series); skill below the "
        "chart is drawn at its lower edge.",
        path,
    )


# --- skill by batch ----------------------------------------------------------------------


def _evaluated_batches(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The batches that were evaluated walk-forward (the first ones only train)."""
    return [b for b in document["batches"] if b["evaluated"]]


def _skill(metrics: dict[str, Any]) -> float:
    """Skill vs persistence of a metrics entry, NaN when it is undefined."""
    value = metrics.get("skill_vs_persistence")
    return np.nan if value is None else float(value)


def _batch_label(batch: dict[str, Any]) -> str:
    """A batch as its start date (the ids mean nothing to a reader)."""
    return str(batch["start"])[:10]


def _skill_heatmap(document: dict[str, Any], folder: Path) -> Section:
    """Skill of each variable in each evaluated batch, with the whole run as the last column."""
    title = "Skill by variable and batch"
    batches = _evaluated_batches(document)
    if not batches:
        return Section(title, NOT_EVALUATED)
    overall = document["metrics"]["overall"]
    ranked = sorted(overall, key=lambda v: -np.nan_to_num(_skill(overall[v]), nan=-np.inf))
    rows, left_out = _ends(ranked, MAX_HEATMAP_ROWS)
    values = np.array(
        [[_skill(b["metrics"][v]) for b in batches] + [_skill(overall[v])] for v in rows]
    )
    columns = [f"{_batch_label(b)}, n={b['samples_evaluated']}" for b in batches]
    columns.append(f"whole run, n={document['data']['samples_evaluated']}")

    figure = Figure(
        figsize=(max(8.0, 3.0 + 0.5 * len(columns)), max(3.5, 1.8 + 0.3 * len(rows))),
        layout="constrained",
    )
    axes = figure.subplots()
    limit = _colour_limit(values)
    colours = matplotlib.colormaps["RdBu"].with_extremes(bad="#e6e6e6")
    image = axes.imshow(
        np.ma.masked_invalid(values),
        cmap=colours,
        vmin=-limit,
        vmax=limit,
        aspect="auto",
        interpolation="nearest",
    )
    colourbar = figure.colorbar(image, ax=axes, extend="both", shrink=0.9)
    colourbar.set_label(f"skill (colour clipped to ±{limit:g})")
    if values.size <= 600:
        _annotate(axes, values, limit)
    axes.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(rows)), [_text(v) for v in rows], fontsize=8)
    axes.axvline(len(columns) - 1.5, color="black", lw=1.5)
    if left_out:
        axes.axhline(len(rows) / 2 - 0.5, color="black", lw=1.5, ls="--")
    axes.set(xlabel="batch start date, samples evaluated", ylabel="variable")
    axes.set_title(
        _labelled(document, "Skill vs persistence (1 - SSE/SSE of no change), by batch"),
        fontweight="bold",
    )
    path = _save(figure, folder / "skill_heatmap.png")
    caption = (
        "Blue beats persistence (predicting no change), red is worse; grey means undefined. "
        "Rows are sorted by skill over the whole run (last column). Batches with few samples "
        "(often the last, partial one) give noisy skill."
    )
    if left_out:
        caption += f" Showing the best and worst {len(rows) // 2}; left out in between: "
        caption += f"{_count(left_out, 'variable')} (the table above lists them all)."
    return Section(title, caption, path)


def _colour_limit(values: FloatArray) -> float:
    """The heatmap's symmetric colour range: the smallest of SKILL_LIMITS covering most cells."""
    magnitudes = np.abs(values[~np.isnan(values)])
    typical = float(np.percentile(magnitudes, 90)) if magnitudes.size else 0.0
    return next((limit for limit in SKILL_LIMITS if typical <= limit), SKILL_LIMITS[-1])


def _annotate(axes: Axes, values: FloatArray, limit: float) -> None:
    """Write each heatmap cell's value on it, readable on both dark and light colours."""
    for (row, column), value in np.ndenumerate(values):
        if np.isnan(value):
            continue
        text = f"{value:.0f}" if abs(value) >= 10 else f"{value:.2f}"
        colour = "white" if abs(value) > 0.6 * limit else "black"
        axes.text(column, row, text, ha="center", va="center", fontsize=7, color=colour)


def _skill_by_batch(document: dict[str, Any], folder: Path) -> Section:
    """Median and spread of skill across variables per batch, over the samples evaluated."""
    title = "Skill across variables by batch"
    batches = _evaluated_batches(document)
    if not batches:
        return Section(title, NOT_EVALUATED)
    quartiles = np.array(
        [
            [np.nan if b["skill_across_series"][q] is None else b["skill_across_series"][q]
             for q in ("p25", "p50", "p75")]
            for b in batches
        ],
        dtype=np.float64,
    )  # fmt: skip
    positions = np.arange(len(batches))
    headline = document["metrics"]["headline"]["mean_skill_vs_persistence"]

    figure = Figure(figsize=(max(8.0, 2.0 + 0.45 * len(batches)), 5.5), layout="constrained")
    skill, samples = figure.subplots(2, 1, sharex=True, height_ratios=[2.5, 1])
    skill.fill_between(
        positions,
        quartiles[:, 0],
        quartiles[:, 2],
        color=PREDICTED,
        alpha=0.2,
        label="interquartile range across variables",
    )
    skill.plot(
        positions, quartiles[:, 1], color=PREDICTED, marker="o", label="median across variables"
    )
    if headline is not None:
        skill.axhline(
            headline,
            color="#d62728",
            ls="--",
            lw=1,
            label=f"whole run, mean over variables ({headline:.3g})",
        )
    skill.axhline(0.0, color="black", lw=0.6)
    skill.set(ylabel="skill vs persistence")
    skill.set_title(_labelled(document, "Skill vs persistence by batch"), fontweight="bold")
    skill.legend(fontsize=8, loc="best")
    samples.bar(positions, [b["samples_evaluated"] for b in batches], color=ACTUAL)
    samples.set(ylabel="samples evaluated", xlabel="batch start date")
    samples.set_xticks(
        positions, [_batch_label(b) for b in batches], rotation=45, ha="right", fontsize=8
    )
    path = _save(figure, folder / "skill_by_batch.png")
    return Section(
        title,
        "Above zero the model beats predicting no change. Batches with few "
        "samples (often the last, partial one) give noisy skill.",
        path,
    )


# --- prediction intervals ------------------------------------------------------------------


def _interval_coverage(document: dict[str, Any], folder: Path) -> Section:
    """Empirical against nominal coverage per level (with the binomial band a calibrated
    interval would fall in), and the coverage of every batch."""
    title = "Coverage against nominal"
    levels = document["metrics"]["intervals"]["levels"]
    measured = {label: m for label, m in levels.items() if m["coverage"] is not None}
    if not measured:
        return Section(
            title,
            "No prediction had an interval yet: a series needs "
            + ", ".join(
                f"{m['min_residuals']} residuals at {m['level']:g}" for m in levels.values()
            )
            + " realized before a batch starts.",
        )
    figure = Figure(figsize=(13, 4.5), layout="constrained")
    overall, by_batch = figure.subplots(1, 2, width_ratios=[1, 2])
    nominal = np.array([m["level"] for m in measured.values()])
    coverage = np.array([m["coverage"] for m in measured.values()])
    band = 2 * np.sqrt(nominal * (1 - nominal) / np.array([m["n"] for m in measured.values()]))
    low = min(nominal.min(), coverage.min()) - 0.05
    overall.plot([low, 1], [low, 1], color="black", lw=0.6, label="calibrated")
    overall.errorbar(
        nominal, nominal, yerr=band, fmt="none", color=OTHER, lw=6, label="±2 binomial s.d."
    )
    overall.scatter(nominal, coverage, color=PREDICTED, zorder=3, label="measured")
    spread = [m["coverage_across_series"] for m in measured.values()]
    overall.vlines(
        nominal,
        [np.nan if s["p05"] is None else s["p05"] for s in spread],
        [np.nan if s["p95"] is None else s["p95"] for s in spread],
        color=PREDICTED,
        lw=1,
        label="5-95% across series",
    )
    overall.set(xlim=(low, 1), ylim=(low, 1), xlabel="nominal level", ylabel="coverage")
    overall.set_title(_labelled(document, "Whole run"), fontweight="bold")
    overall.legend(fontsize=8, loc="upper left")
    batches = [b for b in document["batches"] if "intervals" in b]
    positions = np.arange(len(batches))
    for i, (label, m) in enumerate(measured.items()):
        color = f"C{i}"
        values = [b["intervals"][label]["coverage"] for b in batches]
        by_batch.plot(
            positions,
            [np.nan if v is None else v for v in values],
            color=color,
            marker="o",
            label=f"{m['level']:g}",
        )
        by_batch.axhline(m["level"], color=color, ls="--", lw=1)
    by_batch.set(ylabel="coverage", xlabel="batch start date")
    by_batch.set_xticks(
        positions, [_batch_label(b) for b in batches], rotation=45, ha="right", fontsize=8
    )
    by_batch.set_title(_labelled(document, "By batch (dashed: nominal)"), fontweight="bold")
    by_batch.legend(fontsize=8, loc="lower right", title="level")
    path = _save(figure, folder / "interval_coverage.png")
    summary = "; ".join(
        f"{m['level']:g}: {m['coverage']:.1%} of {m['n']}, mean width {_number(m['mean_width'])}, "
        f"Winkler score {_number(m['winkler'])}"
        for m in measured.values()
    )
    return Section(
        title,
        f"{summary}. Conformal intervals from the residuals realized before each batch; a "
        "series has none until it has enough of them (the first evaluated batch never does). "
        "Below the grey band the intervals are too narrow, above it too wide.",
        path,
    )


def _penalty_path(document: dict[str, Any], folder: Path) -> Section:
    """The penalty each batch's model used (--ridge-alpha auto): one line per target up to
    MAX_VARIABLE_CHARTS targets, else the median and range across targets."""
    title = "Chosen ridge penalty by batch"
    batches = [b for b in _evaluated_batches(document) if b["ridge_alpha"]["median"] is not None]
    if not batches:
        return Section(title, NOT_EVALUATED)
    grid = document["model"]["penalty"]["grid"]
    positions = np.arange(len(batches))
    figure = Figure(figsize=(max(8.0, 2.0 + 0.45 * len(batches)), 4.5), layout="constrained")
    axes = figure.subplots()
    targets = list(batches[0]["ridge_alpha"].get("by_target", {}))
    if targets and len(targets) <= MAX_VARIABLE_CHARTS:
        for target in targets:
            values = [b["ridge_alpha"]["by_target"][target] for b in batches]
            axes.step(positions, np.array(values, dtype=np.float64), where="mid", label=target)
    else:
        low, high = ([b["ridge_alpha"][k] for b in batches] for k in ("min", "max"))
        axes.fill_between(
            positions, low, high, step="mid", color=PREDICTED, alpha=0.2, label="range"
        )
        median = [b["ridge_alpha"]["median"] for b in batches]
        axes.step(positions, median, where="mid", color=PREDICTED, label="median")
    positive = [a for a in grid if a > 0]
    axes.set_yscale("log")
    if positive:
        axes.set_ylim(min(positive) / 2, max(positive) * 2)
    axes.set(ylabel="ridge alpha (log scale)", xlabel="batch start date")
    axes.set_title(
        _labelled(document, "Penalty with the least walk-forward error so far"),
        fontweight="bold",
    )
    axes.legend(fontsize=8, loc="best", ncol=2)
    axes.set_xticks(
        positions, [_batch_label(b) for b in batches], rotation=45, ha="right", fontsize=8
    )
    path = _save(figure, folder / "penalty_by_batch.png")
    fallback = document["model"]["penalty"]["fallback"]
    return Section(
        title,
        f"Each batch predicts with, per target, the grid value ({len(grid)} from {grid[0]:g} "
        f"to {grid[-1]:g}) of least squared error over the walk-forward predictions realized "
        f"before it starts; {fallback:g} before there is any. Larger means more shrinkage "
        "towards predicting the mean change.",
        path,
    )


# --- rule trust -----------------------------------------------------------------------------


def _rule_label(rule: dict[str, Any]) -> str:
    """A rule and its target, without repeating a target the rule name already holds."""
    name, target = str(rule["rule"]), str(rule["target"])
    return name if name.endswith(f"->{target})") else f"{name} on {target}"


def _rule_trust(document: dict[str, Any], folder: Path) -> Section:
    """Trust of each rule with its credible interval, bars growing from a coin flip (0.5)."""
    title = "Rule trust"
    shown, left_out = _shown_rules(document)
    if not shown:
        return Section(title, "The run learned no rules (--rules was empty).")
    rules_total = len(shown) + left_out
    means = np.array([r["trust_mean"] for r in shown], dtype=np.float64)
    lower = np.array([r["trust_lower"] for r in shown], dtype=np.float64)
    upper = np.array([r["trust_upper"] for r in shown], dtype=np.float64)
    positions = np.arange(len(shown))[::-1]
    level = f"{CONFIDENCE_LEVEL:.0%}"

    figure = Figure(figsize=(10, max(3.0, 1.6 + 0.26 * len(shown))), layout="constrained")
    axes = figure.subplots()
    axes.barh(
        positions,
        means - 0.5,
        left=0.5,
        height=0.7,
        color=[VALIDATED if r["validated"] else OTHER for r in shown],
    )
    axes.errorbar(
        means,
        positions,
        xerr=[means - lower, upper - means],
        fmt="none",
        ecolor="black",
        elinewidth=0.9,
        capsize=2,
    )
    axes.axvline(0.5, color="#d62728", lw=1, ls="--")
    axes.set_yticks(positions, [_text(_rule_label(r)) for r in shown], fontsize=8)
    axes.set_ylim(-0.7, len(shown) - 0.3)
    margin = 0.05 * max(float(upper.max() - lower.min()), 0.02)
    axes.set_xlim(min(float(lower.min()), 0.5) - margin, max(float(upper.max()), 0.5) + margin)
    if left_out:
        axes.axhline(len(shown) / 2 - 0.5, color="black", lw=1.2, ls=":")
    axes.set_xlabel(f"trust: posterior mean hit rate, with {level} credible interval")
    heading = "Rule trust"
    if left_out:
        heading += f": the {len(shown) // 2} most and least trusted of {rules_total} rules"
    axes.set_title(_labelled(document, heading), fontweight="bold")
    axes.legend(handles=_trust_legend(_fdr(document)), fontsize=8, loc="lower right")
    path = _save(figure, folder / "rule_trust.png")
    headline = document["metrics"]["headline"]
    caption = (
        f"{headline['rules_validated']} of {headline['rules_total']} rules are validated: "
        f"Benjamini-Hochberg over all rules at false discovery rate {_fdr(document)} rejects "
        f"'hit rate <= 0.5' (a coin flip, dashed line). The {level} interval lies above 0.5 "
        f"for {_count(headline['rules_validated_by_interval'], 'rule')}, a criterion that over "
        "many rules also passes some by chance."
    )
    if left_out:
        caption += f" Left out of the chart, in the middle: {_count(left_out, 'rule')}; "
        caption += "the table below lists them all." if "rules" in document else _IN_RULES_FILE
    return Section(title, caption, path)


def _fdr(document: dict[str, Any]) -> str:
    """The run's false discovery rate for rule validation, as printed."""
    return f"{document['metrics']['headline']['fdr']:g}"


_IN_RULES_FILE: Final = "rules.parquet (next to results.json) lists them all."


def _shown_rules(document: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The rules to chart, most trusted first, and how many are left out in the middle.

    A document listing every rule gives its most and least trusted MAX_RULE_BARS; one of
    many series keeps only its extremes, which are the same rules.
    """
    if "rules" in document:
        ranked = sorted(document["rules"], key=lambda r: -float(r["trust_mean"]))
        return _ends(ranked, MAX_RULE_BARS)
    extremes = document["rule_extremes"]
    half = MAX_RULE_BARS // 2
    shown = [*extremes["most_trusted"][:half], *extremes["least_trusted"][-half:]]
    return shown, document["metrics"]["headline"]["rules_total"] - len(shown)


def _trust_legend(fdr: str) -> list[Artist]:
    """Legend entries for the trust chart's bar colours and the coin-flip line."""
    return [
        Patch(color=VALIDATED, label=f"validated (Benjamini-Hochberg, FDR {fdr})"),
        Patch(color=OTHER, label="not validated"),
        Line2D([], [], color="#d62728", ls="--", label="coin flip (0.5)"),
    ]


# --- the page --------------------------------------------------------------------------------

STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1500px;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
td.worse { color: #b2182b; }
figure { margin: 0 0 2em; }
img { max-width: 100%; box-sizing: border-box; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 0.9em; }
.meta { color: #555; }
details.horizon { border-top: 2px solid #ccc; margin: 1em 0; }
details.horizon > summary { cursor: pointer; color: #555; }
details.horizon > summary > h2 { display: inline; color: #222; }
"""


def _e(value: object) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def _page(document: dict[str, Any], overview: list[Section], panels: list[Panel]) -> str:
    """The self-contained HTML page: run facts, tables, then every chart embedded; with
    several horizons, the charts across horizons and then one folding panel per horizon
    (the first open), each with that horizon's tables and charts."""
    data = document["data"]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Training report {_e(document['run_id'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Training report: run {_e(document['run_id'])}</h1>",
        f'<p class="meta">{_e(data["source"])}, {_e(str(data["start"])[:10])} to '
        f"{_e(str(data['end'])[:10])}: {_count(data['series'], 'series')}, "
        f"{_count(data['batches'], 'batch')} of {_e(document['config']['batch_size_days'])} days "
        f"({len(_evaluated_batches(document))} evaluated walk-forward). Created "
        f"{_e(document['created'])}.</p>",
        _headline_table(document),
        _horizon_table(document),
    ]
    if overview:
        parts.append("<h2>Metrics by horizon</h2>")
        parts.extend(_section(s) for s in overview)
    for panel in panels:
        if panel.horizon is None:
            parts.append(_panel_body(document, panel))
            continue
        view = _horizon_view(document, _by_horizon(document, panel.horizon))
        parts.append(
            f'<details class="horizon" id="horizon-{panel.horizon}"'
            f"{' open' if panel is panels[0] else ''}><summary><h2>Horizon {panel.horizon}</h2> "
            f"{_count(panel.horizon, 'step')} ahead: {_e(_panel_summary(view))}</summary>"
            f"{_panel_body(view, panel)}</details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _by_horizon(document: dict[str, Any], horizon: int) -> dict[str, Any]:
    """The ``by_horizon`` entry of one horizon."""
    return next(s for s in document["by_horizon"] if int(s["horizon"]) == horizon)


def _panel_summary(view: dict[str, Any]) -> str:
    """One line of a horizon's panel header: its median skill and validated rules."""
    headline = view["metrics"]["headline"]
    return (
        f"median skill {_number(headline['median_skill_vs_persistence'])}, median MASE "
        f"{_number(headline['median_mase'])}, {headline['rules_validated']} of "
        f"{headline['rules_total']} rules validated"
    )


def _panel_body(document: dict[str, Any], panel: Panel) -> str:
    """One horizon's tables and charts (the whole page body of a one-horizon run)."""
    parts = [_series_tables(document)]
    for heading, group in panel.sections.items():
        parts.append(f"<h2>{_e(heading)}</h2>")
        parts.extend(_section(s) for s in group)
    parts.append(_rule_table(document))
    return "\n".join(parts)


def _headline_table(document: dict[str, Any]) -> str:
    """The run's headline numbers as a two-column table."""
    headline, data, config = document["metrics"]["headline"], document["data"], document["config"]
    share = headline["share_skill_positive"]
    rows = [
        ("Series", _number(headline["series"])),
        ("Mean skill vs persistence", _number(headline["mean_skill_vs_persistence"])),
        ("Median skill vs persistence", _number(headline["median_skill_vs_persistence"])),
        ("Series beating persistence", "n/a" if share is None else f"{share:.1%}"),
        ("Mean directional accuracy", _number(headline["mean_directional_accuracy"])),
        (
            "Median MASE / sMAPE",
            f"{_number(headline.get('median_mase'))} / "
            f"{_number(document['metrics']['across_series'].get('smape', {}).get('p50'))}",
        ),
        (
            "Rules validated",
            f"{headline['rules_validated']} of {headline['rules_total']} at FDR "
            f"{_fdr(document)} ({headline['rules_validated_by_interval']} by the interval alone)",
        ),
        ("Samples trained / evaluated", f"{data['samples_trained']} / {data['samples_evaluated']}"),
        ("Horizon, lags", f"{_first_horizon(document)} step(s), {config['lags']} lag(s)"),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<h2>Headline</h2><table>{body}</table>"


def _horizon_table(document: dict[str, Any]) -> str:
    """One row per horizon of a multi-horizon run (nothing for one horizon)."""
    if "by_horizon" not in document:
        return ""
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "horizon", "samples evaluated", "median skill", "series beating persistence",
            "mean directional accuracy", "median MASE", "median sMAPE", "rules validated",
        )
    )  # fmt: skip
    rows = []
    for section in document["by_horizon"]:
        h = section["metrics"]["headline"]
        evaluated = sum(b["samples_evaluated"] for b in section["batches"])
        share = h["share_skill_positive"]
        cells = (
            section["horizon"], evaluated, _number(h["median_skill_vs_persistence"]),
            "n/a" if share is None else f"{share:.1%}", _number(h["mean_directional_accuracy"]),
            _number(h["median_mase"]),
            _number(section["metrics"]["across_series"]["smape"]["p50"]),
            f"{h['rules_validated']} of {h['rules_total']}",
        )  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return (
        f"<h2>Per horizon</h2><table><tr>{head}</tr>{''.join(rows)}</table>"
        f'<p class="note">The headline above is about horizon {_first_horizon(document)}; each '
        "horizon's tables and charts are in its panel below (click a horizon to open it), and "
        "every horizon's rows are in the predictions, metrics and rules files (column "
        "horizon).</p>"
    )


def _series_tables(document: dict[str, Any]) -> str:
    """Every series' metrics when the document lists them; else their distribution and the
    best and worst series, with where the rest are."""
    metrics = document["metrics"]
    if "overall" in metrics:
        return "<h2>Per variable (whole run)</h2>" + _variable_table(metrics["overall"].items())
    across = metrics["across_series"]
    names = list(QUANTILE_LABELS)
    head = "".join(f"<th>{_e(h)}</th>" for h in ("across series", "count", "mean", *names))
    rows = "".join(
        f"<tr><td>{_e(label)}</td>"
        + "".join(
            f"<td>{_e(_number(across[key][q]))}</td>"
            for q in ("count", "mean", *QUANTILE_LABELS.values())
        )
        + "</tr>"
        for label, key in (
            ("skill vs persistence", "skill_vs_persistence"),
            ("directional accuracy", "directional_accuracy"),
        )
    )
    return (
        f"<h2>Across {_count(across['count'], 'series')} (whole run)</h2>"
        f"<table><tr>{head}</tr>{rows}</table>"
        f'<p class="note">{_count(across["evaluated"], "series")} evaluated; every series\' '
        "metrics are in metrics.parquet next to results.json.</p>"
        f"<h3>Best {len(across['best'])} by skill</h3>"
        + _variable_table((m["series"], m) for m in across["best"])
        + f"<h3>Worst {len(across['worst'])} by skill</h3>"
        + _variable_table((m["series"], m) for m in across["worst"])
    )


QUANTILE_LABELS: Final = {"min": "min", "5%": "p05", "25%": "p25", "median": "p50",
                          "75%": "p75", "95%": "p95", "max": "max"}  # fmt: skip


def _variable_table(metrics: Iterable[tuple[str, dict[str, Any]]]) -> str:
    """Whole-run metrics of the given variables, negative skill marked."""
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "variable", "n", "MAE", "RMSE", "RMS change", "directional accuracy",
            "skill vs persistence", "MASE", "sMAPE",
        )
    )  # fmt: skip
    rows = []
    for name, m in metrics:
        skill = m["skill_vs_persistence"]
        worse = ' class="worse"' if skill is not None and skill < 0 else ""
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_e(_number(m['n']))}</td><td>{_e(_number(m['mae']))}</td>"
            f"<td>{_e(_number(m['rmse']))}</td><td>{_e(_number(m['rms_change']))}</td>"
            f"<td>{_e(_number(m['directional_accuracy']))}</td>"
            f"<td{worse}>{_e(_number(skill))}</td><td>{_e(_number(m.get('mase')))}</td>"
            f"<td>{_e(_number(m.get('smape')))}</td></tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _rule_table(document: dict[str, Any]) -> str:
    """Every rule's counts and trust, most trusted first, folded away (there can be thousands)."""
    if "rules" not in document:
        return f'<p class="note">The trust of every rule: {_IN_RULES_FILE}</p>'
    rules = sorted(document["rules"], key=lambda r: -float(r["trust_mean"]))
    if not rules:
        return ""
    level = f"{CONFIDENCE_LEVEL:.0%}"
    head = "".join(
        f"<th>{_e(h)}</th>"
        for h in (
            "rule", "target", "hits", "misses", "trust", f"{level} interval", "p-value",
            "q-value (BH)", f"validated (FDR {_fdr(document)})", "interval above 0.5",
        )
    )  # fmt: skip
    rows = "".join(
        f"<tr><td>{_e(r['rule'])}</td><td>{_e(r['target'])}</td><td>{_e(_number(r['hits']))}</td>"
        f"<td>{_e(_number(r['misses']))}</td><td>{_e(_number(r['trust_mean']))}</td>"
        f"<td>{_e(_number(r['trust_lower']))} to {_e(_number(r['trust_upper']))}</td>"
        f"<td>{_e(_number(r['p_value']))}</td><td>{_e(_number(r['q_value']))}</td>"
        f"<td>{'yes' if r['validated'] else 'no'}</td>"
        f"<td>{'yes' if r['interval_above_half'] else 'no'}</td></tr>"
        for r in rules
    )
    return (
        f"<details><summary>All {len(rules)} rules</summary>"
        f"<table><tr>{head}</tr>{rows}</table></details>"
    )


def _section(section: Section) -> str:
    """A chart embedded as a data URI with its caption, or the note saying why it is missing."""
    if section.path is None:
        return f'<h3>{_e(section.title)}</h3><p class="note">{_e(section.caption)}</p>'
    encoded = base64.b64encode(section.path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{_e(section.title)}">'
        f"<figcaption><strong>{_e(section.title)}</strong>: {_e(section.caption)}</figcaption>"
        "</figure>"
    )
