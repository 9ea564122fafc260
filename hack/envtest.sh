#!/usr/bin/env bash
# Provide the pinned Kubernetes control-plane binaries for the k8s test tier:
# etcd, kube-apiserver, kube-controller-manager, kubectl and helm; and, on request
# (`node`), what a single node needs on top of them for hack/local-cluster.sh:
# kubelet, kube-proxy, kube-scheduler, crictl, CoreDNS and the pause binary.
#
# Nothing is downloaded from release pages: every binary is compiled from Go
# modules fetched through the Go module proxy (hack/envtest/go.mod pins them and
# hack/envtest/go.sum makes the fetch reproducible). The result is cached under
# ${PULSE_ENVTEST_HOME:-$HOME/.cache/pulse-envtest}/<kubernetes-version>/, next
# to the Go build and module caches, so only the first run pays for the build.
# See docs/envtest.md for the figures and the design.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: hack/envtest.sh [COMMAND]

Provide etcd, kube-apiserver, kube-controller-manager, kubectl and helm for the
k8s test tier, building them from Go modules on first use.

Commands:
  use        (default) find the binaries or build them, then print
             `export KUBEBUILDER_ASSETS=<dir>` on stdout, so that
             `eval "$(hack/envtest.sh)"` sets up the current shell
  find       print the directory of already provided binaries; exit 1 if
             there is none (never builds; the pytest fixtures use this)
  build      rebuild the binaries even if they are cached
  node       find or build the node binaries (kubelet, kube-proxy,
             kube-scheduler, crictl, coredns, pause) and print their
             directory on stdout; hack/local-cluster.sh uses this
  versions   print the pinned versions
  clean      delete the cached binaries of the pinned version (the Go build
             and module caches are kept, so a rebuild takes a few minutes)
  -h, --help show this help

Environment:
  KUBEBUILDER_ASSETS  a directory that already holds etcd, kube-apiserver and
                      kubectl (controller-runtime's envtest convention); when
                      set and complete, `use` and `find` return it and build
                      nothing. kube-controller-manager and helm are optional
                      there; tests that need them fail or skip without them.
  PULSE_ENVTEST_HOME  cache root (default: $HOME/.cache/pulse-envtest)

Progress goes to stderr; stdout carries only the result.
EOF
}

# Pins. The Kubernetes and etcd versions live in hack/envtest/go.mod; these
# constants must agree with it (checked below) and give the version ldflags.
readonly K8S_VERSION="v1.35.8"
# Commit and date of the v1.35.8 tag, as reported by the Go module proxy's
# .info; upstream release builds stamp the same values.
readonly K8S_GIT_COMMIT="1c2e10a409eb1b03f2f28f401ce935312e20d9fb"
readonly K8S_BUILD_DATE="2026-08-20T15:16:14Z"
readonly HELM_MODULE="helm.sh/helm/v4"
readonly HELM_VERSION="v4.3.1"
# Node-only tools, each built by `go install pkg@version` against its own go.mod.
# CoreDNS: the release kubeadm 1.35 deploys is 1.12.x; 1.15.0 is the current one and
# speaks the same Corefile. crictl: cri-tools tags only some releases as Go modules.
readonly COREDNS_MODULE="github.com/coredns/coredns"
readonly COREDNS_VERSION="v1.15.0"
readonly CRICTL_MODULE="sigs.k8s.io/cri-tools"
readonly CRICTL_VERSION="v1.34.0"
# The pause image version kubeadm pins for this Kubernetes release; the binary is
# compiled from build/pause/linux/pause.c of the k8s.io/kubernetes module.
readonly PAUSE_VERSION="3.10.1"

readonly REQUIRED_BINARIES=(etcd kube-apiserver kubectl)
readonly ALL_BINARIES=(etcd kube-apiserver kube-controller-manager kubectl helm)
readonly NODE_BINARIES=(kubelet kube-proxy kube-scheduler crictl coredns pause)

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly MODULE_DIR="${script_dir}/envtest"
readonly CACHE_HOME="${PULSE_ENVTEST_HOME:-${HOME}/.cache/pulse-envtest}"
readonly ASSETS_DIR="${CACHE_HOME}/${K8S_VERSION}"
readonly NODE_DIR="${CACHE_HOME}/${K8S_VERSION}-node"

log() { printf 'envtest: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Identifies what a cached build was made from: rebuild when a pin changes
# (comments in go.mod are left out, so editing them costs no rebuild).
fingerprint() {
  {
    grep -v '^[[:space:]]*//' "${MODULE_DIR}/go.mod"
    cat "${MODULE_DIR}/go.sum"
    printf 'helm=%s@%s\nk8s-ldflags=%s\n' "${HELM_MODULE}" "${HELM_VERSION}" "$(k8s_ldflags)"
    printf 'coredns=%s crictl=%s pause=%s\n' "${COREDNS_VERSION}" "${CRICTL_VERSION}" "${PAUSE_VERSION}"
  } | sha256sum | cut -d' ' -f1
}

# The version stamps upstream's hack/lib/version.sh sets, so that
# `kubectl version` and the API server's /version report the real release
# instead of v0.0.0-master.
k8s_ldflags() {
  local minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local flags="-s -w" pkg
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
    flags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    flags+=" -X ${pkg}.gitCommit=${K8S_GIT_COMMIT} -X ${pkg}.gitTreeState=clean"
    flags+=" -X ${pkg}.buildDate=${K8S_BUILD_DATE}"
  done
  printf '%s' "${flags}"
}

has_binaries() {
  local dir="$1" name
  shift
  for name in "$@"; do
    [[ -x "${dir}/${name}" ]] || return 1
  done
}

# Prints the directory to use, or returns 1 when nothing usable is there.
find_assets() {
  if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    if has_binaries "${KUBEBUILDER_ASSETS}" "${REQUIRED_BINARIES[@]}"; then
      has_binaries "${KUBEBUILDER_ASSETS}" "${ALL_BINARIES[@]}" \
        || log "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} lacks kube-controller-manager or helm; tests that need them will not run"
      printf '%s\n' "${KUBEBUILDER_ASSETS}"
      return 0
    fi
    log "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} lacks one of: ${REQUIRED_BINARIES[*]}; ignoring it"
  fi
  if has_binaries "${ASSETS_DIR}" "${ALL_BINARIES[@]}" \
    && [[ "$(cat "${ASSETS_DIR}/.fingerprint" 2>/dev/null)" == "$(fingerprint)" ]]; then
    printf '%s\n' "${ASSETS_DIR}"
    return 0
  fi
  return 1
}

check_pins() {
  grep -Eq "^\s*(require )?k8s\.io/kubernetes ${K8S_VERSION}( |\$)" "${MODULE_DIR}/go.mod" \
    || die "hack/envtest/go.mod does not require k8s.io/kubernetes ${K8S_VERSION}"
  # Each staging module must be replaced by its v0.X.Y twin of v1.X.Y.
  local staging="v0.${K8S_VERSION#v1.}"
  if grep -E '^\s+k8s\.io/[a-z-]+ => ' "${MODULE_DIR}/go.mod" | grep -v " ${staging}\$" >&2; then
    die "the replace lines above do not point at ${staging}"
  fi
  command -v go >/dev/null || die "go is not on PATH (hack/envtest/go.mod says which version it needs)"
}

# build [force]: without "force", a build another process finished while we
# waited for the lock is reused.
build() {
  check_pins
  lock_cache
  if [[ "${1:-}" != force ]] && KUBEBUILDER_ASSETS="" find_assets >/dev/null; then
    return 0
  fi

  local stage="${CACHE_HOME}/.stage-${K8S_VERSION}"
  fresh_stage "${stage}"

  log "building Kubernetes ${K8S_VERSION} (kube-apiserver, kube-controller-manager, kubectl) and etcd with $(go env GOVERSION); the first build takes a while"
  # -mod=readonly: the committed go.sum must already cover every module.
  (cd "${MODULE_DIR}" && go build -mod=readonly -ldflags "$(k8s_ldflags)" -o "${stage}/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl)
  # Built on its own because `go build -o dir/` would name it "server".
  (cd "${MODULE_DIR}" && go build -mod=readonly -ldflags "-s -w" -o "${stage}/etcd" go.etcd.io/etcd/server/v3)

  log "building helm ${HELM_VERSION}"
  # `go install pkg@version` uses helm's own go.mod and checks its modules
  # against the checksum database, so this is pinned and verified too.
  GOBIN="${stage}" go install \
    -ldflags "-s -w -X ${HELM_MODULE}/internal/version.version=${HELM_VERSION}" \
    "${HELM_MODULE}/cmd/helm@${HELM_VERSION}"

  {
    printf 'go: %s\n' "$(go env GOVERSION)"
    printf 'kube-apiserver: %s\n' "$("${stage}/kube-apiserver" --version)"
    printf 'kube-controller-manager: %s\n' "$("${stage}/kube-controller-manager" --version)"
    printf 'kubectl: %s\n' "$("${stage}/kubectl" version --client | head -n1)"
    printf 'etcd: %s\n' "$("${stage}/etcd" --version | head -n1)"
    printf 'helm: %s\n' "$("${stage}/helm" version --short)"
  } >"${stage}/VERSIONS"
  install_stage "${stage}" "${ASSETS_DIR}"
}

# One build at a time per cache, whoever starts it (CI step, developer); the lock is
# held on fd 9 until the script exits.
lock_cache() {
  mkdir -p "${CACHE_HOME}"
  exec 9>"${CACHE_HOME}/.lock"
  flock 9
}

# fresh_stage DIR: an empty staging dir for a build, and Go's build environment.
fresh_stage() {
  rm -rf "$1"
  mkdir -p "$1"
  go_env
}

# install_stage STAGE DIR: stamp a finished build and swap it in with one rename, so a
# reader never sees half of it.
install_stage() {
  fingerprint >"$1/.fingerprint"
  rm -rf "$2"
  mv "$1" "$2"
  sed 's/^/envtest:   /' "$2/VERSIONS" >&2
}

# Go's caches live in the cache home so a warm run reuses compiled packages;
# -modcacherw keeps the module cache deletable with plain rm -rf. CGO is off
# as in upstream release builds of these binaries (static, no libc needed).
# GOTOOLCHAIN=local: use the installed Go, never download another one.
go_env() {
  export GOCACHE="${CACHE_HOME}/go-build"
  export GOMODCACHE="${CACHE_HOME}/go-mod"
  export CGO_ENABLED=0 GOTOOLCHAIN=local
  export GOFLAGS="-trimpath -modcacherw -buildvcs=false"
}

find_node() {
  has_binaries "${NODE_DIR}" "${NODE_BINARIES[@]}" \
    && [[ "$(cat "${NODE_DIR}/.fingerprint" 2>/dev/null)" == "$(fingerprint)" ]]
}

# The node binaries, built like the control plane's and swapped in the same way.
build_node() {
  check_pins
  command -v gcc >/dev/null || die "gcc is not on PATH (needed for the static pause binary)"
  lock_cache
  find_node && return 0

  local stage="${CACHE_HOME}/.stage-${K8S_VERSION}-node"
  fresh_stage "${stage}"
  log "building Kubernetes ${K8S_VERSION} node binaries (kubelet, kube-proxy, kube-scheduler)"
  (cd "${MODULE_DIR}" && go build -mod=readonly -ldflags "$(k8s_ldflags)" -o "${stage}/" \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kube-scheduler)
  log "building coredns ${COREDNS_VERSION} and crictl ${CRICTL_VERSION}"
  GOBIN="${stage}" go install -ldflags "-s -w" "${COREDNS_MODULE}@${COREDNS_VERSION}"
  GOBIN="${stage}" go install \
    -ldflags "-s -w -X ${CRICTL_MODULE}/pkg/version.Version=${CRICTL_VERSION}" \
    "${CRICTL_MODULE}/cmd/crictl@${CRICTL_VERSION}"
  # The module cache holds the Kubernetes sources the control plane was built from.
  local pause_c
  pause_c="$(cd "${MODULE_DIR}" && go list -mod=readonly -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  [[ -f "${pause_c}" ]] || die "no ${pause_c}; run hack/envtest.sh build first"
  gcc -Os -static -Wall -Werror -DVERSION="v${PAUSE_VERSION}" -o "${stage}/pause" "${pause_c}"
  strip "${stage}/pause"
  {
    printf 'kubelet: %s\n' "$("${stage}/kubelet" --version)"
    printf 'kube-proxy: %s\n' "$("${stage}/kube-proxy" --version)"
    printf 'kube-scheduler: %s\n' "$("${stage}/kube-scheduler" --version)"
    printf 'coredns: %s\n' "$("${stage}/coredns" -version | head -n1)"
    printf 'crictl: %s\n' "$("${stage}/crictl" --version)"
    printf 'pause: %s\n' "$("${stage}/pause" -v 2>&1 | head -n1)"
  } >"${stage}/VERSIONS"
  install_stage "${stage}" "${NODE_DIR}"
}

main() {
  local command="${1:-use}"
  [[ $# -le 1 ]] || { usage >&2; exit 2; }
  case "${command}" in
    -h | --help) usage ;;
    use)
      local dir
      if ! dir="$(find_assets)"; then
        build
        dir="${ASSETS_DIR}"
      fi
      printf 'export KUBEBUILDER_ASSETS=%q\n' "${dir}"
      ;;
    find)
      find_assets || die "no binaries for ${K8S_VERSION} in ${ASSETS_DIR} and no complete KUBEBUILDER_ASSETS; run hack/envtest.sh"
      ;;
    build)
      build force
      printf 'export KUBEBUILDER_ASSETS=%q\n' "${ASSETS_DIR}"
      ;;
    node)
      find_node || build_node
      printf '%s\n' "${NODE_DIR}"
      ;;
    versions)
      printf 'kubernetes %s\netcd %s\nhelm %s\ncoredns %s\ncrictl %s\npause %s\n' "${K8S_VERSION}" \
        "$(grep -E '^\s+go\.etcd\.io/etcd/server/v3 ' "${MODULE_DIR}/go.mod" | awk '{print $2}')" \
        "${HELM_VERSION}" "${COREDNS_VERSION}" "${CRICTL_VERSION}" "${PAUSE_VERSION}"
      ;;
    clean)
      rm -rf "${ASSETS_DIR}" "${NODE_DIR}"
      log "removed ${ASSETS_DIR} and ${NODE_DIR}"
      ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
