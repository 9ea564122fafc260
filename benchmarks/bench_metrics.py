"""Cost of the operator's Prometheus metrics: a scrape over HTTP, and the bookkeeping per event.

- scrape: GET /metrics from the same server the operator starts
  (``prometheus_client.start_http_server``) with N runs tracked, against the same GET on a
  registry with no run (the reference: HTTP and the operator-wide series alone);
- per event: what a watch event and a reconcile pass add (``RunCollector.observe`` of the
  run's body + ``record_pass``), against ``json.loads`` of the same body (the reference:
  what decoding the watch event costs anyway).

    python benchmarks/bench_metrics.py --runs 10,100,1000,5000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]

import prometheus_client  # noqa: E402

from trainingrun_operator.metrics import PHASES, OperatorMetrics  # noqa: E402


def run_body(index: int) -> dict[str, Any]:
    """A TrainingRun as the API server returns it, mid-run."""
    return {
        "apiVersion": "pulse.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"name": f"run-{index}", "namespace": f"team-{index % 7}", "generation": 1,
                     "uid": f"uid-{index}", "resourceVersion": str(1000 + index)},
        "spec": {"output": {"uri": f"s3://results/run-{index}"}, "dask": {"workers": 2}},
        "status": {"phase": PHASES[index % len(PHASES)], "startTime": "2026-01-01T00:00:00Z",
                   "progress": {"stage": "training", "batchesCompleted": index % 10,
                                "batchesTotal": 10, "summary": f"{index % 10}/10"}},
    }  # fmt: skip


def best_of(repeats: int, action: Any) -> float:
    """Fastest of `repeats` timings of `action()`, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def scrape_seconds(metrics: OperatorMetrics, repeats: int) -> tuple[float, int]:
    """Best time of one GET of the metrics, and the size of the answer."""
    server, _ = prometheus_client.start_http_server(0, "127.0.0.1", metrics.registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        size = len(urllib.request.urlopen(url, timeout=30).read())
        seconds = best_of(repeats, lambda: urllib.request.urlopen(url, timeout=30).read())
    finally:
        server.shutdown()
    return seconds, size


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="10,100,1000,5000", help="comma-separated run counts")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    empty, empty_size = scrape_seconds(OperatorMetrics.create(), args.repeats)
    print(f"reference: scrape with no run {empty * 1e3:.2f} ms ({empty_size} bytes)")
    print(f"{'runs':>6} {'scrape ms':>10} {'x no-run':>9} {'bytes':>9}")
    for count in (int(n) for n in args.runs.split(",")):
        metrics = OperatorMetrics.create()
        for index in range(count):
            metrics.runs.observe(run_body(index))
        seconds, size = scrape_seconds(metrics, args.repeats)
        print(f"{count:>6} {seconds * 1e3:>10.2f} {seconds / empty:>9.1f} {size:>9}")

    metrics = OperatorMetrics.create()
    body = run_body(3)
    text = json.dumps(body)
    events = 10_000

    def bookkeeping() -> None:
        for _ in range(events):
            metrics.runs.observe(body)
            metrics.record_pass(0.01, None)

    def decoding() -> None:
        for _ in range(events):
            json.loads(text)

    book = best_of(5, bookkeeping) / events
    decode = best_of(5, decoding) / events
    print(f"per event: metrics {book * 1e6:.1f} us, json.loads of the body {decode * 1e6:.1f} us "
          f"(x{book / decode:.1f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
