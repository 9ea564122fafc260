#!/usr/bin/env bash
# Provide kube-network-policies (sigs.k8s.io/kube-network-policies, the NetworkPolicy
# enforcer kind runs on its nodes): hack/local-cluster.sh runs it so that the single-node
# cluster enforces NetworkPolicy, which its bridge CNI does not (docs/local-cluster.md).
#
# Built from the Go module proxy like hack/envtest.sh's binaries (`go install pkg@version`:
# the module's own go.mod and go.sum pin every dependency; v0.8.0 is the newest release the
# proxy serves), static (CGO off), and cached next to them (Go build and module caches
# shared) under ${PULSE_ENVTEST_HOME:-$HOME/.cache/pulse-envtest}/kube-network-policies-<version>/.
#
# Usage: hack/kube-network-policies.sh [use|find|version]
#   use      (default) find or build the binary, print its path on stdout
#   find     print its path if it is built and current; exit 1 otherwise (never builds)
#   version  print the pinned version
set -euo pipefail

readonly MODULE="sigs.k8s.io/kube-network-policies"
readonly VERSION="v0.8.0"
readonly CACHE_HOME="${PULSE_ENVTEST_HOME:-${HOME}/.cache/pulse-envtest}"
readonly OUT_DIR="${CACHE_HOME}/kube-network-policies-${VERSION}"
readonly BINARY="${OUT_DIR}/kube-network-policies"

log() { printf 'kube-network-policies: %s\n' "$*" >&2; }

# What a build was made from: this script (its pins and flags).
fingerprint() {
  sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
}

current() {
  [[ -x "${BINARY}" && "$(cat "${OUT_DIR}/.fingerprint" 2>/dev/null)" == "$(fingerprint)" ]]
}

build() {
  command -v go >/dev/null || { log "error: go is not on PATH"; exit 1; }
  mkdir -p "${CACHE_HOME}"
  exec 9>"${CACHE_HOME}/.kube-network-policies.lock"
  flock 9
  current && return 0
  log "building ${MODULE}@${VERSION} (a few minutes on first use)"
  local stage="${OUT_DIR}.stage"
  rm -rf "${stage}"
  mkdir -p "${stage}"
  (
    export GOCACHE="${CACHE_HOME}/go-build" GOMODCACHE="${CACHE_HOME}/go-mod"
    # GOTOOLCHAIN=local: the installed Go, never a download.
    export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -modcacherw -buildvcs=false"
    # The release's main package is ./cmd, so `go install` names the binary "cmd".
    GOBIN="${stage}" go install -ldflags "-s -w" "${MODULE}/cmd@${VERSION}"
  )
  mv "${stage}/cmd" "${stage}/kube-network-policies"
  fingerprint >"${stage}/.fingerprint"
  rm -rf "${OUT_DIR}"
  mv "${stage}" "${OUT_DIR}"
  log "cached in ${OUT_DIR}"
}

case "${1:-use}" in
  use) current || build; printf '%s\n' "${BINARY}" ;;
  find) current || { log "not built: run hack/kube-network-policies.sh"; exit 1; }; printf '%s\n' "${BINARY}" ;;
  version) printf '%s\n' "${VERSION}" ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
