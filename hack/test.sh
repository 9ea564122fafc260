#!/usr/bin/env bash
# Set up everything the test suite needs, then run every tier that can run here.
#
#   bash hack/test.sh                 # all tiers; a tier whose component is missing skips
#   bash hack/test.sh -m unit         # extra arguments go to pytest
#
# Steps: a virtualenv with the project and its test/operator/dev extras (.venv, reused);
# the Kubernetes control-plane binaries for the k8s tier (hack/envtest.sh builds them from
# Go modules on first use: ~12 min cold, instant warm); a Docker engine and the project
# image for the image tier when PULSE_WITH_DOCKER=1 (hack/docker-setup.sh); the node
# binaries of the single-node cluster the e2e tier starts (hack/local-cluster.sh) and its
# NetworkPolicy enforcer (hack/kube-network-policies.sh) when PULSE_WITH_CLUSTER=1. With
# PULSE_REQUIRE_K8S=1 / PULSE_REQUIRE_DOCKER=1 / PULSE_REQUIRE_CLUSTER=1 (CI sets them) a
# missing component fails its tier instead of skipping it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly VENV="${PULSE_VENV:-.venv}"

if [[ ! -x "${VENV}/bin/python" ]]; then
  python3 -m venv "${VENV}"
fi
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
# The dateutil cap is in pyproject too; repeating it here keeps pip's resolver from
# backtracking through old boto releases when an older pip reads the extras.
"${VENV}/bin/python" -m pip install --quiet -e ".[operator,test,dev]" "python-dateutil<3"

if [[ "${PULSE_SKIP_K8S_SETUP:-0}" != 1 ]]; then
  eval "$(hack/envtest.sh)"
  export KUBEBUILDER_ASSETS
  # The kstatus program tests/k8s/test_gitops_health.py runs: built here, not in a fixture,
  # so a cold build (~2.5 min) is a setup step and not part of a test's timeout.
  hack/kstatus.sh >/dev/null
  # Kueue's manager and CRDs for tests/k8s/test_kueue.py (cold build ~6 min, then cached):
  # with PULSE_REQUIRE_K8S=1 that tier fails, not skips, when they are missing.
  hack/kueue.sh >/dev/null
fi

if [[ "${PULSE_WITH_DOCKER:-0}" == 1 && -x hack/docker-setup.sh ]]; then
  hack/docker-setup.sh
fi

# Built here rather than inside the first cluster test, so a cold build (minutes) is a
# setup step with its own log lines, not a fixture timeout.
if [[ "${PULSE_WITH_CLUSTER:-0}" == 1 ]]; then
  hack/envtest.sh node >/dev/null
  # The cluster's NetworkPolicy enforcer (cold build ~3 min, then cached).
  hack/kube-network-policies.sh >/dev/null
fi

# Install the Debian package named like its command, $1, when the command is missing and
# this is a root Debian machine.
apt_install_missing() {
  if ! command -v "$1" >/dev/null && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null; }
  fi
}
# The image's init: tests/integration/dask/test_worker_shutdown.py starts a worker pod's
# command with it (and fails without it when CI=true).
apt_install_missing tini

echo "== lint" >&2
apt_install_missing shellcheck
if command -v shellcheck >/dev/null; then
  shellcheck hack/*.sh .ci/run
elif [[ "${CI:-}" == true ]]; then
  echo "shellcheck is missing and could not be installed" >&2
  exit 1
fi
"${VENV}/bin/ruff" check recursive_training operator tests benchmarks examples
"${VENV}/bin/python" -m mypy

echo "== tests" >&2
status=0
"${VENV}/bin/python" -m pytest "$@" || status=$?
if [[ ${status} -eq 5 ]]; then
  echo "pytest collected no tests for: $*" >&2
  status=0
fi
exit "${status}"
