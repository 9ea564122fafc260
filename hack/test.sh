#!/usr/bin/env bash
# Set up everything the test suite needs, then run every tier that can run here.
#
#   bash hack/test.sh                 # all tiers; a tier whose component is missing skips
#   bash hack/test.sh -m unit         # extra arguments go to pytest
#
# Steps: a virtualenv with the project and its test/operator/dev extras (.venv, reused);
# the Kubernetes control-plane binaries for the k8s tier (hack/envtest.sh builds them from
# Go modules on first use: ~12 min cold, instant warm); a Docker engine and the project
# image for the image tier when PULSE_WITH_DOCKER=1 (hack/docker-setup.sh). With
# PULSE_REQUIRE_K8S=1 / PULSE_REQUIRE_DOCKER=1 (CI sets them) a missing component fails
# its tier instead of skipping it.
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
fi

if [[ "${PULSE_WITH_DOCKER:-0}" == 1 && -x hack/docker-setup.sh ]]; then
  hack/docker-setup.sh
fi

echo "== lint" >&2
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
