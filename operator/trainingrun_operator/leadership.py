"""Leader election on a coordination.k8s.io Lease: one operator replica reconciles, the rest wait.

The protocol of client-go's ``leaderelection`` (what controller-runtime, and so KubeRay and
Kubeflow Trainer, use), on one Lease:

- Every ``retry_period`` each replica reads the Lease. The holder renews it (``renewTime``);
  a standby takes it only when its holder is empty or the Lease has not changed for
  ``leaseDurationSeconds`` as measured on the standby's own clock since it last saw it
  change, so clock skew between nodes does not matter.
- Every write is a replace with the read ``resourceVersion`` as precondition: of two
  replicas racing for a free Lease exactly one wins.
- A leader that cannot renew for ``renew_deadline`` (< lease duration) stops reconciling
  before anyone may take over; one that finds another holder stops at once.
- A leader that shuts down cleanly releases the Lease (empty holder), so a standby takes
  over within one retry period instead of waiting out the lease duration.

Why a Lease and not kopf's peering: kopf freezes *every* operator when two peers share a
priority (replicas of one Deployment do), its dead peers count until their 60 s lifetime
ends, it needs its own cluster-wide CRD, and it pauses kopf's handlers only, not this
operator's own resync loop.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
import math
import socket
import time
import uuid
from collections.abc import Callable

from trainingrun_operator import kube
from trainingrun_operator.exceptions import KubeError
from trainingrun_operator.objects import Manifest
from trainingrun_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


class Claim(enum.Enum):
    """What one attempt on the Lease found out."""

    HELD = "this replica holds the Lease"
    TAKEN = "another replica holds the Lease"
    UNKNOWN = "the Lease could not be read or written"


def _micro_time(now: datetime.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds)."""
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """<hostname>_<random>: unique even for two processes on one host (client-go's form)."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class LeaderElection:
    """Holds or waits for the Lease; ``leading`` says whether this replica may reconcile."""

    def __init__(
        self,
        api: kube.Kube,
        settings: OperatorSettings,
        on_change: Callable[[bool], None],
    ) -> None:
        """Elect on the Lease named in `settings`; `on_change(leading)` on every transition."""
        self.api = api
        self.namespace = settings.lease_namespace
        self.name = settings.lease_name
        self.identity = settings.identity or default_identity()
        self.lease_duration = settings.lease_duration_seconds
        self.renew_deadline = settings.renew_deadline_seconds
        self.retry_period = settings.retry_period_seconds
        self.on_change = on_change
        self.leading = False
        self._renewed_at = -math.inf
        self._seen: tuple[str, str, str] | None = None  # holder, renewTime, resourceVersion
        self._seen_at = -math.inf

    async def run(self) -> None:
        """Try to acquire or renew every retry period, forever (cancel to stop)."""
        while True:
            try:
                claim = await self.try_claim()
            except KubeError as e:
                log.warning("leader election: %s", e)
                claim = Claim.UNKNOWN
            self._settle(claim, time.monotonic())
            await asyncio.sleep(self.retry_period)

    def _settle(self, claim: Claim, now: float) -> None:
        """Lead after a successful claim; stop on another holder or past the renew deadline."""
        if claim is Claim.HELD and not self.leading:
            self._transition(True, "acquired")
        elif self.leading and claim is Claim.TAKEN:
            self._transition(False, "lost to another replica")
        elif self.leading and now - self._renewed_at > self.renew_deadline:
            self._transition(False, f"not renewed for {self.renew_deadline:g} s")

    def _transition(self, leading: bool, why: str) -> None:
        """Change role, log it, tell the operator."""
        self.leading = leading
        role = "leading" if leading else "standing by"
        log.info("leader election: %s Lease %s/%s: %s as %s",
                 why, self.namespace, self.name, role, self.identity)  # fmt: skip
        self.on_change(leading)

    async def try_claim(self) -> Claim:
        """Read the Lease; create, take or renew it when this replica may."""
        lease = await self.api.read(kube.LEASES, self.namespace, self.name)
        now = datetime.datetime.now(datetime.UTC)
        if lease is None:
            _, created = await self.api.ensure(kube.LEASES, self._lease(None, now))
            return self._held_if(created)
        spec: Manifest = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        seen = (holder, str(spec.get("renewTime")), lease["metadata"]["resourceVersion"])
        if seen != self._seen:
            self._seen, self._seen_at = seen, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and time.monotonic() < self._seen_at + duration:
            return Claim.TAKEN
        replaced = await self.api.replace(kube.LEASES, self._lease(lease, now))
        return self._held_if(replaced is not None)

    def _held_if(self, written: bool) -> Claim:
        """HELD (and the renewal time noted) when this replica's write went through."""
        if not written:
            return Claim.UNKNOWN
        self._renewed_at = time.monotonic()
        return Claim.HELD

    def _lease(self, current: Manifest | None, now: datetime.datetime) -> Manifest:
        """The Lease held by this replica from `now`, as an update of `current` (None: new)."""
        spec: Manifest = dict((current or {}).get("spec") or {})
        stamp = _micro_time(now)
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = int(spec.get("leaseTransitions", -1)) + 1
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=math.ceil(self.lease_duration),
            renewTime=stamp,
        )
        metadata = (current or {}).get("metadata") or {
            "name": self.name, "namespace": self.namespace,
        }  # fmt: skip
        return {
            "apiVersion": kube.LEASES.api_version, "kind": "Lease",
            "metadata": metadata, "spec": spec,
        }  # fmt: skip

    async def release(self) -> None:
        """Give the Lease up (empty holder) if this replica holds it: a standby takes over now."""
        if not self.leading:
            return
        self.leading = False
        self.on_change(False)
        lease = await self.api.read(kube.LEASES, self.namespace, self.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        stamp = _micro_time(datetime.datetime.now(datetime.UTC))
        spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1,
                "renewTime": stamp}  # fmt: skip
        if await self.api.replace(kube.LEASES, {**lease, "spec": spec}) is not None:
            log.info("leader election: released Lease %s/%s", self.namespace, self.name)
