"""``pulse-operator``: run the TrainingRun operator (kopf) with settings from flags and env.

Flags override ``PULSE_OPERATOR_*`` variables. The settings are built and validated once,
here, and handed to the handlers in kopf's ``memo``; nothing is written back to the
environment.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

import kopf

from trainingrun_operator.exceptions import SettingsError
from trainingrun_operator.settings import OperatorSettings


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``pulse-operator``; each defaults to its PULSE_OPERATOR_* variable."""
    parser = argparse.ArgumentParser(prog="pulse-operator", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--namespace", action="append", dest="namespaces", metavar="NS",
        help="watch this namespace (repeatable); default: PULSE_OPERATOR_NAMESPACES or all",
    )  # fmt: skip
    parser.add_argument("--image", help="default image of drivers and Dask pods")
    parser.add_argument("--cpu", help="default CPU of each pod")
    parser.add_argument("--memory", help="default memory of each pod")
    parser.add_argument("--resync-seconds", type=float, help="seconds between resync passes")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--liveness-endpoint", help="e.g. http://0.0.0.0:8080/healthz; '' = off")
    parser.add_argument("--metrics-port", type=int, help="Prometheus metrics port; 0 = off")
    parser.add_argument(
        "--kueue", action=argparse.BooleanOptionalAction, default=None,
        help="admit runs labelled kueue.x-k8s.io/queue-name through Kueue Workloads",
    )  # fmt: skip
    election = parser.add_argument_group("leader election (one active replica of several)")
    election.add_argument(
        "--leader-election", action="store_const", const=True,
        help="reconcile only while holding the Lease; other replicas stand by",
    )  # fmt: skip
    election.add_argument("--lease-namespace", help="namespace of the Lease")
    election.add_argument("--lease-name", help="name of the Lease")
    election.add_argument("--identity", help="this replica's holder identity (e.g. the pod name)")
    for name, meaning in (
        ("lease-duration", "a standby waits this long after the last renewal"),
        ("renew-deadline", "a leader that could not renew this long stops"),
        ("retry-period", "between two attempts to acquire or renew"),
    ):
        election.add_argument(f"--{name}-seconds", type=float, help=f"seconds: {meaning}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, validate settings, run kopf until it stops; 1 on a bad setting."""
    args = build_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    if "namespaces" in overrides:
        overrides["namespaces"] = tuple(overrides["namespaces"])
    try:
        settings = OperatorSettings.from_env(**overrides)
    except SettingsError as e:
        print(f"pulse-operator: {e}", file=sys.stderr)
        return 1
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    handlers = importlib.import_module("trainingrun_operator.handlers")
    if settings.kueue:
        handlers.watch_workloads()
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint or None,
        memo=kopf.Memo(settings=settings),
    )
    return 0


def cli() -> NoReturn:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
