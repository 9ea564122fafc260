"""Which rules are validated: a one-sided sign test per rule, Benjamini-Hochberg across rules.

With every ``cross`` pair a run holds hundreds of rules, and "the credible interval lies
above one half" then passes dozens of them by chance alone. A rule is *validated* when
the Benjamini-Hochberg procedure at level ``fdr``, over all rules of the run, rejects the
null hypothesis "hit rate <= 1/2": among the validated rules, at most a fraction ``fdr``
is expected to be noise.

The p-value of ``hits`` against ``misses`` is the upper binomial tail
``P(X >= hits | X ~ Binomial(hits + misses, 1/2))``, written as the regularized
incomplete beta function ``I_{1/2}(hits, misses + 1)``: the two are equal for integer
counts, and the beta form extends the tail continuously to the fractional counts of
exponential forgetting. There every sample weighs ``w <= 1``, so the weighted hit count
varies less under the null (variance ``sum w^2 / 4``) than a binomial count of the same
total (``sum w / 4``): the p-value is then conservative, never too small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from recursive_training.arrays import FloatArray


def sign_test_p_values(hits: FloatArray, misses: FloatArray) -> FloatArray:
    """One-sided p-values of "hit rate > 1/2": ``I_{1/2}(hits, misses + 1)``, 1 without hits."""
    # scipy.special, not scipy.stats: see beta_trust for why (import time of every run).
    from scipy.special import betainc

    h, m = np.asarray(hits, dtype=np.float64), np.asarray(misses, dtype=np.float64)
    p: FloatArray = np.ones_like(h)
    some = h > 0  # the tail from zero hits is everything; betainc needs a > 0
    p[some] = betainc(h[some], m[some] + 1.0, 0.5)
    return p


def bh_adjusted(p_values: FloatArray) -> FloatArray:
    """Benjamini-Hochberg adjusted p-values (q-values): ``min over k >= rank of n p_(k) / k``."""
    p = np.asarray(p_values, dtype=np.float64)
    n = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * n / np.arange(1, n + 1)
    adjusted = np.empty(n)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted


def bh_rejected(p_values: FloatArray, fdr: float) -> NDArray[np.bool_]:
    """The Benjamini-Hochberg step-up decisions at level ``fdr``.

    Rejects the k smallest p-values for the largest k with ``p_(k) <= k fdr / n``; the
    comparison is made as written, not through the adjusted values, so no rounding of
    ``n p / k`` can flip a decision at the boundary.
    """
    p = np.asarray(p_values, dtype=np.float64)
    n = p.size
    order = np.argsort(p, kind="stable")
    below = np.flatnonzero(p[order] <= np.arange(1, n + 1) * fdr / n)
    rejected = np.zeros(n, dtype=bool)
    if below.size:
        rejected[order[: below[-1] + 1]] = True
    return rejected


@dataclass(frozen=True)
class RuleValidation:
    """Per rule: the sign test's p-value, its BH-adjusted q-value and the decision at ``fdr``."""

    fdr: float
    p_values: FloatArray
    q_values: FloatArray
    validated: NDArray[np.bool_]


def validate_rules(hits: FloatArray, misses: FloatArray, fdr: float) -> RuleValidation:
    """Test every rule of a run at once, controlling the false discovery rate at ``fdr``."""
    p = sign_test_p_values(hits, misses)
    return RuleValidation(
        fdr=fdr, p_values=p, q_values=bh_adjusted(p), validated=bh_rejected(p, fdr)
    )
