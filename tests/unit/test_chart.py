"""The chart's values: each one commented, in values.schema.json, and in docs/helm.md.

The chart's sync with the builders is checked by tests/unit/test_operator_manifests.py
(generated files) and tests/k8s/test_chart.py (`helm template` output, real API server).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pulse-recursive-training"


def _leaves(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the values the schema describes as a whole (not property by property)."""
    paths = []
    for key, value in values.items():
        assert key in schema.get("properties", {}), f"{prefix}{key} is not in values.schema.json"
        node = schema["properties"][key]
        assert node.get("description"), f"{prefix}{key} has no description in the schema"
        # Resources are one value (requests and limits), as in a pod spec.
        if isinstance(value, dict) and "properties" in node and key != "resources":
            paths += _leaves(value, node, f"{prefix}{key}.")
        else:
            paths.append(f"{prefix}{key}")
    return paths


def _values_and_leaves() -> tuple[str, list[str]]:
    """values.yaml's text and its leaf paths."""
    text = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    return text, _leaves(yaml.safe_load(text), schema)


def test_every_value_is_in_the_schema_and_commented() -> None:
    """Each value's line in values.yaml follows a comment line."""
    text, leaves = _values_and_leaves()
    stack: list[tuple[int, str]] = []
    previous = ""
    commented = set()
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match:
            indent = len(match.group(1))
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, match.group(2))]
            path = ".".join(key for _, key in stack)
            if path in leaves and previous.lstrip().startswith("#"):
                commented.add(path)
        if line.strip():
            previous = line
    assert set(leaves) - commented == set()


def test_every_value_is_in_the_docs_table() -> None:
    """docs/helm.md's reference table names every value."""
    docs = (REPO / "docs" / "helm.md").read_text()
    _, leaves = _values_and_leaves()
    assert [path for path in leaves if f"`{path}`" not in docs] == []
