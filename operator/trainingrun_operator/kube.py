"""A few async Kubernetes calls over kr8s's HTTP session, with NotFound and Conflict made explicit.

The reconcile loop needs only read, create-if-absent, merge-patch and delete-if-present on
known resources (leader election also a conditional replace), so it names them by
(apiVersion, plural) and skips discovery. Every call is safe to repeat: creating what
exists returns the existing object, deleting what is gone is a no-op.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import kr8s
import kr8s.asyncio
from kr8s.asyncio import Api

from trainingrun_operator.constants import API_VERSION, DASK_API_VERSION, KUEUE_API_VERSION, PLURAL
from trainingrun_operator.exceptions import KubeError, KubeUnreachableError
from trainingrun_operator.objects import Manifest

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
MAX_IN_FLIGHT = 16


@dataclasses.dataclass(frozen=True)
class Resource:
    """A namespaced resource type: its apiVersion and plural name."""

    api_version: str
    plural: str


JOBS = Resource("batch/v1", "jobs")
DASK_CLUSTERS = Resource(DASK_API_VERSION, "daskclusters")
TRAINING_RUNS = Resource(API_VERSION, PLURAL)
SERVICE_ACCOUNTS = Resource("v1", "serviceaccounts")
SECRETS = Resource("v1", "secrets")
NETWORK_POLICIES = Resource("networking.k8s.io/v1", "networkpolicies")
ROLES = Resource("rbac.authorization.k8s.io/v1", "roles")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io/v1", "rolebindings")
# The kinds of a run's driver identity, by kind.
IDENTITY_RESOURCES = {
    "ServiceAccount": SERVICE_ACCOUNTS, "Role": ROLES, "RoleBinding": ROLE_BINDINGS,
}  # fmt: skip
EVENTS = Resource("v1", "events")
PODS = Resource("v1", "pods")
WORKLOADS = Resource(KUEUE_API_VERSION, "workloads")
# Cluster-scoped: read with namespace None.
RESOURCE_FLAVORS = Resource(KUEUE_API_VERSION, "resourceflavors")
WORKLOAD_PRIORITY_CLASSES = Resource(KUEUE_API_VERSION, "workloadpriorityclasses")
LEASES = Resource("coordination.k8s.io/v1", "leases")


class Kube:
    """One API connection (kr8s's HTTP session: in-cluster or $KUBECONFIG), made once and reused.

    Awaiting ``kr8s.asyncio.api()`` again re-reads credentials and opens a new session, so
    the operator makes one ``Kube`` at startup (kept in kopf's memo) and passes it down.
    """

    def __init__(self, api: Api, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        """Wrap a connected kr8s API; at most `max_in_flight` requests run at once."""
        self.api = api
        # httpcore's pool does work quadratic in waiting requests: hundreds of runs
        # reconciled at once are faster queued here than in the pool.
        self._slots = asyncio.Semaphore(max_in_flight)
        # Told (method, plural) of every request: the operator's metrics count them.
        self.on_request: Callable[[str, str], None] | None = None

    @classmethod
    async def connect(cls) -> Kube:
        """Connect with kr8s's own discovery of credentials."""
        return cls(await kr8s.asyncio.api())

    async def _call(
        self,
        method: str,
        resource: Resource,
        namespace: str | None,
        url: str,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Manifest]:
        """One request; the status code and decoded body, raising on errors but 404 and 409."""
        content = None if body is None else json.dumps(body)
        path = f"{resource.plural} {namespace}/{url}"
        if self.on_request is not None:
            self.on_request(method, resource.plural)
        try:
            async with self._slots, self.api.call_api(
                method, version=resource.api_version, namespace=namespace, url=url,
                raise_for_status=False, content=content, headers=dict(headers or {}),
            ) as response:  # fmt: skip
                decoded: Manifest = response.json() if response.content else {}
        except (httpx.TransportError, kr8s.APITimeoutError, OSError) as e:
            # Refused, reset, timed out, DNS: the server may be restarting; callers retry.
            raise KubeUnreachableError(method, path, f"{type(e).__name__}: {e}") from e
        if response.status_code >= 400 and response.status_code not in (404, 409):
            message = decoded.get("message", response.text)
            raise KubeError(method, path, response.status_code, message)
        return response.status_code, decoded

    async def read(self, resource: Resource, namespace: str | None, name: str) -> Manifest | None:
        """The object (cluster-scoped when `namespace` is None), or None when it does not exist."""
        status, body = await self._call("GET", resource, namespace, f"{resource.plural}/{name}")
        return None if status == 404 else body

    async def ensure(self, resource: Resource, manifest: Manifest) -> tuple[Manifest, bool]:
        """Create the object unless it exists; return it and whether this call created it."""
        meta = manifest["metadata"]
        existing = await self.read(resource, meta["namespace"], meta["name"])
        if existing is not None:
            return existing, False
        status, body = await self._call(
            "POST", resource, meta["namespace"], resource.plural, manifest
        )
        if status == 409:
            existing = await self.read(resource, meta["namespace"], meta["name"])
            if existing is None:
                raise KubeError("POST", resource.plural, status, body.get("message", "conflict"))
            return existing, False
        if status == 404:
            raise KubeError("POST", resource.plural, status, body.get("message", "not found"))
        return body, True

    async def merge_patch(
        self, resource: Resource, namespace: str, name: str, patch: Mapping[str, Any],
        subresource: str = "",
    ) -> Manifest | None:  # fmt: skip
        """JSON-merge-patch the object (or its subresource); None when it does not exist.

        A patch that names a resourceVersion fails with KubeError (409) when the object
        changed since it was read: the next pass reads it again.
        """
        url = f"{resource.plural}/{name}" + (f"/{subresource}" if subresource else "")
        status, body = await self._call("PATCH", resource, namespace, url, patch, MERGE_PATCH)
        if status == 409:
            raise KubeError("PATCH", f"{resource.plural} {namespace}/{url}", status,
                            body.get("message", "conflict"))  # fmt: skip
        return None if status == 404 else body

    async def replace(self, resource: Resource, manifest: Manifest) -> Manifest | None:
        """PUT the object back changed; None when someone wrote it since it was read.

        The manifest's resourceVersion is the precondition (409 Conflict otherwise), so of
        two writers racing from the same read only one succeeds.
        """
        meta = manifest["metadata"]
        url = f"{resource.plural}/{meta['name']}"
        status, body = await self._call("PUT", resource, meta["namespace"], url, manifest)
        return None if status in (404, 409) else body

    async def delete(
        self, resource: Resource, namespace: str, name: str, uid: str | None = None
    ) -> bool:
        """Delete the object (only if its UID is `uid`, when given), dependents in the background.

        False when it is already gone; a UID precondition that fails (the name now belongs
        to a newer object) counts as gone too.
        """
        options: Manifest = {
            "apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
        }  # fmt: skip
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        url = f"{resource.plural}/{name}"
        status, _ = await self._call("DELETE", resource, namespace, url, options)
        return status not in (404, 409)

    async def list_objects(
        self, resource: Resource, namespace: str | None, selector: str = ""
    ) -> list[Manifest]:
        """Every object of `resource` in `namespace` (all namespaces when None), by label."""
        url = resource.plural + (f"?labelSelector={selector}" if selector else "")
        _, body = await self._call("GET", resource, namespace, url)
        found: list[Manifest] = body.get("items", [])
        return found

    async def create(self, resource: Resource, namespace: str, manifest: Manifest) -> Manifest:
        """POST a new object (for generateName objects such as Events)."""
        _, body = await self._call("POST", resource, namespace, resource.plural, manifest)
        return body
