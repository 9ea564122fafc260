"""Shared pytest setup: every test gets the marker of its tier from its folder.

tests/unit -> unit, tests/integration -> integration, tests/k8s -> k8s, tests/e2e -> e2e,
so ``pytest -m unit`` selects a tier without each test having to say it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "integration", "k8s", "e2e")
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the tier named by its top-level folder; cluster tests go last.

    The single-node cluster (tests/e2e) lives as long as the session; running its tests
    last keeps its dozen processes from competing for the CPUs with every other tier.
    """
    for item in items:
        tier = Path(item.path).relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
    items.sort(key=lambda item: "local_cluster" in getattr(item, "fixturenames", ()))
