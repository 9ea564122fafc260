"""The two kube-apiserver command lines (test control plane, local cluster) stay in step.

tests/k8s/controlplane.py starts the API server the k8s tier runs against and
hack/local-cluster.sh the one of the real single-node cluster. They differ where one of
them has something the other has not (a node, loopback only); every such difference is
declared below with its reason, and any other flag must be in both with the same value.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Flags only the local cluster sets: it has a node whose kubelet the API server calls.
NODE_ONLY = {
    "kubelet-certificate-authority": "verify the kubelet's serving certificate",
    "kubelet-client-certificate": "authenticate to the kubelet (logs, exec)",
    "kubelet-client-key": "authenticate to the kubelet (logs, exec)",
    "kubelet-preferred-address-types": "reach the node by its InternalIP",
}
# Flags only the test control plane sets.
CONTROL_PLANE_ONLY = {
    "endpoint-reconciler-type": "loopback cannot be the kubernetes Service's endpoint",
}
# Flags in both whose values differ on purpose.
VALUES_DIFFER = {
    "authorization-mode": "the Node authorizer serves kubelets, and only the cluster has one",
    "enable-admission-plugins": "NodeRestriction guards kubelets; the test plane lists the "
    "defaults it relies on explicitly",
}


def _between(text: str, start: str, end: str) -> str:
    """The part of `text` from `start` up to the next `end`."""
    tail = text[text.index(start) :]
    return tail[: tail.index(end)]


def control_plane_flags() -> dict[str, str]:
    """Flag -> value (as written) of `ControlPlane._start_apiserver`."""
    source = (REPO / "tests" / "k8s" / "controlplane.py").read_text()
    block = _between(source, "def _start_apiserver", "self._wait(")
    return dict(re.findall(r'"--([a-z0-9-]+)(?:=([^"]*))?"', block))


def local_cluster_flags() -> dict[str, str]:
    """Flag -> value (as written) of `start_apiserver` in hack/local-cluster.sh."""
    source = (REPO / "hack" / "local-cluster.sh").read_text()
    block = _between(source, "start_apiserver() {", "wait_for kube-apiserver")
    return dict(re.findall(r'--([a-z0-9-]+)(?:="?([^\s"\\]*)"?)?', block))


def _literal(value: str) -> bool:
    """True for a value written out, not computed (no Python `{}` or shell `${}`)."""
    return "{" not in value and "$" not in value


def test_both_api_servers_have_the_same_flags_but_the_declared_differences() -> None:
    """A flag added to one command line only fails here until it is added or declared."""
    plane, cluster = control_plane_flags(), local_cluster_flags()
    assert len(plane) > 20 and len(cluster) > 20, "the parser no longer finds the flags"
    assert set(cluster) - set(plane) == set(NODE_ONLY)
    assert set(plane) - set(cluster) == set(CONTROL_PLANE_ONLY)
    differing = {
        flag
        for flag in set(plane) & set(cluster)
        if _literal(plane[flag]) and _literal(cluster[flag]) and plane[flag] != cluster[flag]
    }
    assert differing <= set(VALUES_DIFFER), differing - set(VALUES_DIFFER)
    assert set(VALUES_DIFFER) <= set(plane) & set(cluster)
