#!/usr/bin/env bash
# Provide `kstatus`: a small program (hack/kstatus/main.go) that prints what the real
# kstatus library (sigs.k8s.io/cli-utils, pinned in hack/kstatus/go.mod; what Flux's
# kustomize-controller and kpt use to judge health) computes for an object read on stdin.
# The k8s tier checks TrainingRun status against it.
#
# Built from Go modules through the Go module proxy, like hack/envtest.sh's binaries,
# and cached next to them (Go build and module caches shared) under
# ${PULSE_ENVTEST_HOME:-$HOME/.cache/pulse-envtest}/kstatus-<cli-utils version>/.
#
# Usage: hack/kstatus.sh [use|find]
#   use   (default) find or build the binary, print its path on stdout
#   find  print its path if it is built and current; exit 1 otherwise (never builds)
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly MODULE_DIR="${script_dir}/kstatus"
readonly CACHE_HOME="${PULSE_ENVTEST_HOME:-${HOME}/.cache/pulse-envtest}"
CLI_UTILS_VERSION="$(awk '$1 == "sigs.k8s.io/cli-utils" {print $2}' "${MODULE_DIR}/go.mod")"
readonly CLI_UTILS_VERSION
readonly OUT_DIR="${CACHE_HOME}/kstatus-${CLI_UTILS_VERSION}"

log() { printf 'kstatus: %s\n' "$*" >&2; }

# What a build was made from: rebuild when the program or a pin changes.
fingerprint() {
  cat "${MODULE_DIR}/go.mod" "${MODULE_DIR}/go.sum" "${MODULE_DIR}/main.go" | sha256sum | cut -d' ' -f1
}

current() {
  [[ -x "${OUT_DIR}/kstatus" && "$(cat "${OUT_DIR}/.fingerprint" 2>/dev/null)" == "$(fingerprint)" ]]
}

build() {
  command -v go >/dev/null || { log "error: go is not on PATH"; exit 1; }
  mkdir -p "${CACHE_HOME}"
  exec 9>"${CACHE_HOME}/.kstatus.lock"
  flock 9
  current && return 0
  log "building kstatus against sigs.k8s.io/cli-utils ${CLI_UTILS_VERSION}"
  local stage="${OUT_DIR}.stage"
  rm -rf "${stage}"
  mkdir -p "${stage}"
  (
    cd "${MODULE_DIR}"
    export GOCACHE="${CACHE_HOME}/go-build" GOMODCACHE="${CACHE_HOME}/go-mod"
    export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -modcacherw -buildvcs=false"
    go build -mod=readonly -ldflags "-s -w" -o "${stage}/kstatus" .
  )
  fingerprint >"${stage}/.fingerprint"
  rm -rf "${OUT_DIR}"
  mv "${stage}" "${OUT_DIR}"
}

case "${1:-use}" in
  use) current || build; printf '%s\n' "${OUT_DIR}/kstatus" ;;
  find) current || { log "not built: run hack/kstatus.sh"; exit 1; }; printf '%s\n' "${OUT_DIR}/kstatus" ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
