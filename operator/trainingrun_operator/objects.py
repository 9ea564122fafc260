"""The one type of a Kubernetes object as the builders, the reconcile loop and kube.py see it."""

from __future__ import annotations

from typing import Any, TypeAlias

# A manifest or an object read back from the API server: plain JSON-shaped dicts, so the
# builders stay pure and testable without a client library's models.
Manifest: TypeAlias = dict[str, Any]
