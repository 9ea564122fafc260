"""Start-up cost of ``pulse-train``: ``--help``, the CLI module's imports and a small run,
against a reference checkout measured in the same invocation.

    git -C /work/main worktree add --detach /tmp/pulse-ref <commit>
    python benchmarks/bench_startup.py --reference /tmp/pulse-ref [--repeat 5]

Each measurement runs a fresh interpreter (``PYTHONPATH`` set to the checkout), the two
checkouts alternating, and keeps the best of ``--repeat`` wall times: start-up is what a
user waits for before anything happens, and the best time is the least disturbed by
other load on the machine. Also lists which heavy libraries ``--help`` loads.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "numpy", "scipy", "scipy.stats", "pyarrow", "boto3", "distributed", "matplotlib")
LOADED_AFTER_HELP = f"""
import contextlib, io, sys
from recursive_training.run_training import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["--help"])
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


def environment(checkout: Path) -> dict[str, str]:
    """The environment that makes ``checkout``'s code the one imported."""
    return {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{checkout / 'operator'}"}


def wall_time(checkout: Path, arguments: list[str]) -> float:
    """Seconds one ``python ARGUMENTS`` takes with ``checkout`` on the path."""
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, *arguments],
        env=environment(checkout),
        cwd=checkout,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - began


def import_seconds(checkout: Path) -> float:
    """Cumulative import time of the CLI module, from ``python -X importtime``."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import recursive_training.run_training"],
        env=environment(checkout),
        cwd=checkout,
        check=True,
        capture_output=True,
        text=True,
    )
    line = next(
        line
        for line in result.stderr.splitlines()
        if line.endswith("recursive_training.run_training")
    )
    return int(line.split("|")[1]) / 1e6


def loaded_by_help(checkout: Path) -> str:
    """The heavy libraries in ``sys.modules`` after ``--help``."""
    result = subprocess.run(
        [sys.executable, "-c", LOADED_AFTER_HELP],
        env=environment(checkout),
        cwd=checkout,
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout to compare with")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (best kept)")
    args = parser.parse_args()
    checkouts = {"reference": args.reference.resolve(), "this": HERE}
    with tempfile.TemporaryDirectory(prefix="pulse-startup-") as out:
        small_run = [
            "-m",
            "recursive_training.run_training",
            "--input-data",
            "builtin:synthetic?n_variables=2&years=2",
            "--output-dir",
            out,
            "--overwrite",
            "--log-level",
            "WARNING",
        ]
        measures = {
            "pulse-train --help": lambda c: wall_time(
                c, ["-m", "recursive_training.run_training", "--help"]
            ),
            "import run_training (-X importtime)": import_seconds,
            "small run (2 variables, 2 years)": lambda c: wall_time(c, small_run),
        }
        print(f"{'':38} {'reference':>10} {'this':>10} {'ratio':>7}   (best of {args.repeat}, s)")
        for name, measure in measures.items():
            best = {label: float("inf") for label in checkouts}
            for _ in range(args.repeat):
                for label, checkout in checkouts.items():
                    best[label] = min(best[label], measure(checkout))
            ratio = best["reference"] / best["this"]
            print(f"{name:38} {best['reference']:10.3f} {best['this']:10.3f} {ratio:6.2f}x")
    for label, checkout in checkouts.items():
        print(f"heavy libraries loaded by --help ({label}): {loaded_by_help(checkout)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
