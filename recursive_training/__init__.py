"""Pulse recursive training: walk-forward ridge models and rule trust over date-range batches."""

from __future__ import annotations

from functools import cache

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed package's metadata on first use:
    importlib.metadata costs more to import than the rest of ``pulse-train --help``."""
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pulse-recursive-training")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"
