#!/usr/bin/env bash
# Provide Kueue for the tests of the Kueue route (docs/kueue.md): the controller manager
# (cmd/kueue of sigs.k8s.io/kueue) and its CRDs (config/components/crd/bases of the same
# module).
#
# Built from the Go module proxy like hack/envtest.sh's binaries (`go install pkg@version`:
# the module's own go.mod and go.sum pin every dependency, it has no replace directives),
# and cached next to them (Go build and module caches shared) under
# ${PULSE_ENVTEST_HOME:-$HOME/.cache/pulse-envtest}/kueue-<version>/{kueue,crds/}.
# Cold build on 2 cores: about 6 minutes; cached: under a second.
#
# Usage: hack/kueue.sh [use|find|version]
#   use      (default) find or build, print the cache directory on stdout
#   find     print the directory if it is complete and current; exit 1 otherwise (never
#            builds; the pytest fixtures use this)
#   version  print the pinned Kueue version
set -euo pipefail

readonly KUEUE_MODULE="sigs.k8s.io/kueue"
readonly KUEUE_VERSION="v0.17.0"
readonly CACHE_HOME="${PULSE_ENVTEST_HOME:-${HOME}/.cache/pulse-envtest}"
readonly OUT_DIR="${CACHE_HOME}/kueue-${KUEUE_VERSION}"

log() { printf 'kueue: %s\n' "$*" >&2; }

go_env() {
  export GOCACHE="${CACHE_HOME}/go-build" GOMODCACHE="${CACHE_HOME}/go-mod"
  # GOTOOLCHAIN=local: the installed Go (Kueue v0.17.0 needs go >= 1.25), never a download.
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -modcacherw -buildvcs=false"
}

# What a build was made from: this script (its pins and flags).
fingerprint() {
  sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
}

current() {
  [[ -x "${OUT_DIR}/kueue" && -s "${OUT_DIR}/crds/kueue.x-k8s.io_workloads.yaml" \
    && "$(cat "${OUT_DIR}/.fingerprint" 2>/dev/null)" == "$(fingerprint)" ]]
}

build() {
  command -v go >/dev/null || { log "error: go is not on PATH"; exit 1; }
  mkdir -p "${CACHE_HOME}"
  exec 9>"${CACHE_HOME}/.kueue.lock"
  flock 9
  current && return 0
  log "building ${KUEUE_MODULE}/cmd/kueue@${KUEUE_VERSION} (a few minutes on first use)"
  local stage="${OUT_DIR}.stage" module_dir
  rm -rf "${stage}"
  mkdir -p "${stage}/crds"
  (
    go_env
    cd "${stage}"
    module_dir="$(go mod download -json "${KUEUE_MODULE}@${KUEUE_VERSION}" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [[ -d "${module_dir}/config/components/crd/bases" ]] || {
      log "error: no CRDs in ${module_dir}"; exit 1; }
    cp "${module_dir}"/config/components/crd/bases/*.yaml "${stage}/crds/"
    GOBIN="${stage}" go install -ldflags "-s -w" "${KUEUE_MODULE}/cmd/kueue@${KUEUE_VERSION}"
  )
  fingerprint >"${stage}/.fingerprint"
  rm -rf "${OUT_DIR}"
  mv "${stage}" "${OUT_DIR}"
  log "cached in ${OUT_DIR}"
}

case "${1:-use}" in
  use) current || build; printf '%s\n' "${OUT_DIR}" ;;
  find) current || { log "not built: run hack/kueue.sh"; exit 1; }; printf '%s\n' "${OUT_DIR}" ;;
  version) printf '%s\n' "${KUEUE_VERSION}" ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
