"""skforecast's side of ``bench_alpha_auto.py --skforecast-python``: its grid search in its
backtesting, run by the reference interpreter (skforecast pins pandas < 3, so it lives in
its own venv and this script imports nothing from Pulse). Create that venv with
``python3 -m venv /tmp/venv-skforecast && /tmp/venv-skforecast/bin/pip install skforecast
"pandas<3" scikit-learn``.

It reads the wide CSV the benchmark wrote (a ``date`` column, one column per series),
builds one ``ForecasterRecursive`` per series (Pulse's ``ar``: each series on its own lags
of its first differences, ``differentiation=1``) with a ridge on z-scored features and a
mean loss (``StandardizedRidge``), and backtests it refitted on the expanding window at
the start of every batch: ``--protocol one-step`` (``TimeSeriesFold(steps=1,
refit=<rows per batch>)``, one-step-ahead forecasts, Pulse's) or ``batch``
(``TimeSeriesFold(steps=<rows per batch>, refit=True)``, each batch forecast recursively
from its first origin). ``grid`` runs ``grid_search_forecaster`` over ``--alphas`` for
every series; ``fixed`` runs ``backtesting_forecaster`` at one alpha and writes its
forecasts as changes (for the benchmark's check against Pulse). It prints one JSON line:
wall and CPU seconds of that work (data loaded, imports done), the versions, and with
``grid`` the alpha skforecast picks per series.

    python benchmarks/skforecast_grid_search.py data.csv --batch-rows 65 --lags 5 \
        --initial-train-size 66 --alphas 0.001,0.01,0.1 grid
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
import skforecast  # type: ignore[import-not-found]
import sklearn  # type: ignore[import-untyped]
from skforecast.model_selection import (  # type: ignore[import-not-found]
    TimeSeriesFold,
    backtesting_forecaster,
    grid_search_forecaster,
)
from skforecast.recursive import ForecasterRecursive  # type: ignore[import-not-found]
from sklearn.base import BaseEstimator, RegressorMixin  # type: ignore[import-untyped]
from sklearn.linear_model import Ridge  # type: ignore[import-untyped]
from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]


class StandardizedRidge(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Pulse's penalty: ridge on z-scored features with a mean loss, intercept free.

    scikit-learn's ``Ridge`` has a sum loss, so Pulse's ``alpha`` is ``alpha * n`` for it
    (``statistics.ridge_penalty``: ``alpha * sum(w) * var_j`` on raw features). A fixed
    ``Pipeline(StandardScaler(), Ridge(alpha))`` cannot say that, because n grows with the
    expanding window: hence this estimator, whose ``alpha`` is what the grid search sets.
    """

    def __init__(self, alpha: float = 0.01) -> None:
        self.alpha = alpha

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> StandardizedRidge:  # noqa: N803 (skforecast passes X=)
        features = np.asarray(X, dtype=float)
        weight = np.ones(len(features)) if sample_weight is None else np.asarray(sample_weight)
        self.scaler_ = StandardScaler().fit(features, sample_weight=weight)
        self.ridge_ = Ridge(alpha=self.alpha * weight.sum()).fit(
            self.scaler_.transform(features), np.asarray(y, dtype=float), weight
        )
        return self

    def predict(self, X: Any) -> Any:  # noqa: N803 (skforecast passes X=)
        return self.ridge_.predict(self.scaler_.transform(np.asarray(X, dtype=float)))


def without_last_sample(index: pd.Index) -> Any:
    """Weight 0 for the newest training sample, 1 for the others.

    A refit fold trains on every observation up to the forecast origin, so its newest
    sample is realized at the first origin it predicts; Pulse's batch model knows only
    samples realized before the batch starts, one fewer. With this weight the two train on
    the same samples (the scaler and the penalty's n use the weights too).
    """
    weights = np.ones(len(index))
    weights[-1] = 0.0
    return weights


def forecaster(lags: int, alpha: float) -> Any:
    """Pulse ``ar`` for one series: its own ``lags`` lagged first differences."""
    return ForecasterRecursive(
        estimator=StandardizedRidge(alpha),
        lags=lags,
        differentiation=1,
        weight_func=without_last_sample,
    )


def folds(args: argparse.Namespace) -> Any:
    """Refitted on everything so far at each batch start; ``one-step``: one-step-ahead
    predictions (a fold per row, a refit every ``batch_rows`` folds), ``batch``: a fold per
    batch, its rows predicted recursively from the batch's first origin."""
    one_step = args.protocol == "one-step"
    return TimeSeriesFold(
        steps=1 if one_step else args.batch_rows,
        initial_train_size=args.initial_train_size,
        refit=args.batch_rows if one_step else True,
        fixed_train_size=False,
        differentiation=1,
        allow_incomplete_fold=True,
        verbose=False,
    )


def grid(levels: pd.DataFrame, args: argparse.Namespace) -> dict[str, float]:
    """Every alpha backtested for every series; the alpha skforecast picks per series."""
    chosen = {}
    for name in levels.columns:
        results = grid_search_forecaster(
            forecaster(args.lags, args.alphas[0]),
            levels[name],
            folds(args),
            param_grid={"alpha": list(args.alphas)},
            metric="mean_squared_error",
            return_best=False,
            n_jobs=1,
            show_progress=False,
        )
        chosen[name] = float(results["alpha"].iloc[0])
    return chosen


def fixed(levels: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """Backtest predictions at ``args.alpha``, as predicted changes (level minus last level)."""
    frames = []
    for name in levels.columns:
        _, predictions = backtesting_forecaster(
            forecaster(args.lags, args.alpha),
            levels[name],
            folds(args),
            metric="mean_squared_error",
            n_jobs=1,
            show_progress=False,
        )
        last = levels[name].shift(1).reindex(predictions.index)
        frames.append(
            pd.DataFrame(
                {
                    "realized": predictions.index,
                    "variable": name,
                    "predicted": predictions["pred"] - last,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="wide CSV: a date column, one column per series")
    parser.add_argument("--lags", type=int, required=True)
    parser.add_argument("--batch-rows", type=int, required=True, help="rows per batch")
    parser.add_argument("--initial-train-size", type=int, required=True)
    parser.add_argument("--alphas", type=lambda s: [float(a) for a in s.split(",")])
    parser.add_argument("--alpha", type=float, default=0.01, help="the fixed run's alpha")
    parser.add_argument("--predictions", help="fixed: where to write the predictions (CSV)")
    parser.add_argument("--protocol", choices=["one-step", "batch"], default="one-step")
    parser.add_argument("work", choices=["grid", "fixed"])
    args = parser.parse_args()
    levels = pd.read_csv(args.data, index_col="date", parse_dates=True).asfreq("B")
    warnings.simplefilter("ignore")  # advisory warnings (e.g. the intermittent refit's n_jobs)
    wall, cpu = time.perf_counter(), time.process_time()
    report: dict[str, Any] = {}
    if args.work == "grid":
        report["chosen"] = grid(levels, args)
    else:
        fixed(levels, args).to_csv(args.predictions, index=False)
    report["wall"], report["cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    report["versions"] = {
        "skforecast": skforecast.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
