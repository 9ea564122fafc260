"""Rules that predict the sign of a variable's next change, and their Beta trust.

A rule abstains when its prediction or the realized change is zero (or missing). Trust
in a rule is the Beta(1 + hits, 1 + misses) posterior of its hit rate. Whether a rule is
*validated* is decided over all rules of a run at once, in ``trust.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
from numpy.typing import NDArray

from recursive_training.arrays import FloatArray
from recursive_training.constants import CONFIDENCE_LEVEL, MODEL_RULE
from recursive_training.exceptions import ConfigError

# cross without a pair counts V * (V - 1) rules: 9,900 at 100 series, still a table one
# can sort; at 3,000 series it would be 9 million, which nobody reads.
MAX_CROSS_SERIES: Final = 100
_WINDOWED = re.compile(r"^(momentum|mean_reversion)\((\d+)\)$")
_PAIR = re.compile(r"^cross\(\s*([^()\s>-][^()>]*?)\s*->\s*([^()\s][^()]*?)\s*\)$")


@dataclass(frozen=True)
class RuleSpec:
    """One parsed rule: ``kind`` with a window, or with a source -> target pair."""

    kind: str
    window: int = 0
    source: str | None = None
    target: str | None = None

    @property
    def history(self) -> int:
        """Rows of history before the origin that the rule reads."""
        return {"momentum": self.window, "mean_reversion": self.window - 1}.get(self.kind, 1)

    def __str__(self) -> str:
        if self.kind in ("momentum", "mean_reversion"):
            return f"{self.kind}({self.window})"
        if self.kind == "cross" and self.source is not None:
            return f"cross({self.source}->{self.target})"
        return self.kind


def parse_rule(text: str) -> RuleSpec:
    """Parse one rule spec such as ``momentum(5)`` or ``cross(spx_close->us_10y_yield)``."""
    spec = text.strip()
    if spec in ("cross", MODEL_RULE):
        return RuleSpec(spec)
    if match := _WINDOWED.match(spec):
        window = int(match.group(2))
        if window < 1 or (match.group(1) == "mean_reversion" and window < 2):
            raise ConfigError(
                f"rule {spec!r}: the window must be at least "
                f"{2 if match.group(1) == 'mean_reversion' else 1}"
            )
        return RuleSpec(match.group(1), window=window)
    if match := _PAIR.match(spec):
        source, target = match.group(1), match.group(2)
        if source == target:
            raise ConfigError(f"rule {spec!r}: source and target must differ (use momentum(1))")
        return RuleSpec("cross", source=source, target=target)
    raise ConfigError(
        f"unknown rule {spec!r}; known rules: momentum(W), mean_reversion(W), cross, "
        f"cross(U->V), {MODEL_RULE}"
    )


def parse_rules(specs: Iterable[str]) -> tuple[RuleSpec, ...]:
    """Parse rule specs, rejecting duplicates."""
    return _parse_rules(tuple(specs))


@lru_cache(maxsize=64)
def _parse_rules(specs: tuple[str, ...]) -> tuple[RuleSpec, ...]:
    """``parse_rules``, once per rule list and process (every task parses its run's list)."""
    parsed = tuple(parse_rule(s) for s in specs)
    seen: set[str] = set()
    for rule in parsed:
        if str(rule) in seen:
            raise ConfigError(f"rule {rule} is listed more than once")
        seen.add(str(rule))
    return parsed


def fixed_rules(rules: Sequence[RuleSpec]) -> tuple[RuleSpec, ...]:
    """The rules that do not learn (everything except ``model``)."""
    return tuple(r for r in rules if r.kind != MODEL_RULE)


def rule_history(rules: Sequence[RuleSpec]) -> int:
    """Rows of history the fixed rules need before an origin."""
    return max((r.history for r in fixed_rules(rules)), default=0)


def check_rule_variables(rules: Sequence[RuleSpec], variables: Sequence[str]) -> None:
    """Fail when a pair rule names a variable that is not modelled, or when ``cross``
    would count every ordered pair of more series than anyone can read the trust of."""
    if any(r.kind == "cross" and r.source is None for r in rules) and (
        len(variables) > MAX_CROSS_SERIES
    ):
        pairs = len(variables) * (len(variables) - 1)
        raise ConfigError(
            f"rule cross over {len(variables):,} series would count {pairs:,} ordered pairs; "
            f"list the pairs you mean as cross(U->V), or use cross with at most "
            f"{MAX_CROSS_SERIES} series"
        )
    for rule in rules:
        for name in (rule.source, rule.target):
            if name is not None and name not in variables:
                raise ConfigError(
                    f"rule {rule} names variable {name!r}, which is not among the modelled "
                    f"variables ({', '.join(variables)})"
                )


def rule_entries(rules: Sequence[RuleSpec], variables: Sequence[str]) -> list[tuple[str, str]]:
    """The (rule, target variable) pairs whose counts the fixed rules produce, in order."""
    entries: list[tuple[str, str]] = []
    for rule in fixed_rules(rules):
        if rule.kind == "cross" and rule.source is None:
            entries += [(f"cross({u}->{v})", v) for v in variables for u in variables if u != v]
        elif rule.kind == "cross":
            assert rule.target is not None
            entries.append((str(rule), rule.target))
        else:
            entries += [(str(rule), v) for v in variables]
    return entries


def _rolling_mean(levels: FloatArray, origins: NDArray[np.intp], window: int) -> FloatArray:
    """Mean of the ``window`` levels ending at each origin; NaN if any is missing or unloaded.

    Summed per origin, oldest level first, rather than by cumulative sums, which one
    missing value would poison for every later row of the window; one slice of rows at a
    time rather than one (origins x window x variables) gather, which cost more than the
    rest of the batch with thousands of series. The order of the additions is the gather's.
    """
    total = _rows_back(levels, origins, window - 1).copy()
    for back in range(window - 2, -1, -1):
        total += _rows_back(levels, origins, back)
    mean: FloatArray = total / window
    mean[origins < window - 1] = np.nan
    return mean


def _rows_back(levels: FloatArray, origins: NDArray[np.intp], rows: int) -> FloatArray:
    """``levels[max(origin - rows, 0)]`` for each origin: a view when the origins are
    consecutive and all far enough from the top (the rows of a batch), else a gather."""
    first = int(origins[0]) - rows if len(origins) else 0
    if len(origins) and first >= 0 and origins[-1] - origins[0] == len(origins) - 1:
        return levels[first : first + len(origins)]
    return levels[np.maximum(origins - rows, 0)]


def sign_hits_misses(
    predicted: FloatArray, outcome: FloatArray, weights: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Weighted hit and miss counts per column; NaN and zero on either side abstain."""
    up, down = predicted > 0, predicted < 0
    rose, fell = outcome > 0, outcome < 0
    w = weights[:, None]
    hits = ((up & rose) | (down & fell)) * w
    misses = ((up & fell) | (down & rose)) * w
    return hits.sum(axis=0), misses.sum(axis=0)


def fixed_rule_counts(
    levels: FloatArray,
    origins: NDArray[np.intp],
    outcome: FloatArray,
    weights: FloatArray,
    rules: Sequence[RuleSpec],
    variables: Sequence[str],
) -> tuple[FloatArray, FloatArray]:
    """Hits and misses of every fixed rule entry (see ``rule_entries``) on these samples.

    ``levels`` are the loaded rows, ``origins`` the row of each sample's origin and
    ``outcome`` its realized change per variable.
    """
    column = {v: j for j, v in enumerate(variables)}
    now = _rows_back(levels, origins, 0)

    def back(rows: int) -> FloatArray:
        """Levels ``rows`` before each origin; NaN (abstain) before the first loaded row."""
        earlier = _rows_back(levels, origins, rows)
        before = origins < rows
        if before.any():
            earlier = earlier.copy()  # never write into the levels
            earlier[before] = np.nan
        return earlier

    hits: list[FloatArray] = []
    misses: list[FloatArray] = []
    for rule in fixed_rules(rules):
        if rule.kind == "momentum":
            h, m = sign_hits_misses(now - back(rule.window), outcome, weights)
        elif rule.kind == "mean_reversion":
            h, m = sign_hits_misses(
                _rolling_mean(levels, origins, rule.window) - now, outcome, weights
            )
        elif rule.source is not None:
            assert rule.target is not None
            src, dst = column[rule.source], column[rule.target]
            change = now[:, [src]] - back(1)[:, [src]]
            h, m = sign_hits_misses(change, outcome[:, [dst]], weights)
        else:
            h, m = _cross_all_pairs(now - back(1), outcome, weights)
        hits.append(h)
        misses.append(m)
    if not hits:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(hits), np.concatenate(misses)


def _cross_all_pairs(
    change: FloatArray, outcome: FloatArray, weights: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Counts of cross(u->v) for every ordered pair u != v, by matrix products.

    Ordered target-major to match ``rule_entries``: for each v, every u != v.
    """
    up, down = (change > 0).astype(float), (change < 0).astype(float)
    w = weights[:, None]
    rose, fell = (outcome > 0) * w, (outcome < 0) * w
    hits = up.T @ rose + down.T @ fell  # [u, v]
    misses = up.T @ fell + down.T @ rose
    off_diagonal = ~np.eye(change.shape[1], dtype=bool)
    return hits.T[off_diagonal.T], misses.T[off_diagonal.T]


@dataclass(frozen=True)
class Trust:
    """Beta posterior summary of the hit rate of each of a set of rules (arrays)."""

    mean: FloatArray
    lower: FloatArray
    upper: FloatArray

    @property
    def interval_above_half(self) -> NDArray[np.bool_]:
        """Where the lower end of the credible interval is above a coin flip.

        Right for one rule looked at alone; over hundreds of rules it passes some by chance,
        so it is reported beside, not instead of, the FDR-controlled verdict.
        """
        return self.lower > 0.5


def beta_trust(hits: FloatArray, misses: FloatArray) -> Trust:
    """Beta(1 + hits, 1 + misses) mean and central credible interval of each rule."""
    # The Beta quantile itself (scipy.stats.beta.ppf calls it): scipy.stats alone takes
    # about 0.5 s to import, which every run and --help paid when it was imported here.
    from scipy.special import betaincinv

    a, b = 1.0 + np.asarray(hits, float), 1.0 + np.asarray(misses, float)
    tail = (1.0 - CONFIDENCE_LEVEL) / 2
    return Trust(a / (a + b), betaincinv(a, b, tail), betaincinv(a, b, 1.0 - tail))
