#!/usr/bin/env bash
# Build the project image pulse-recursive-training:<version> with BuildKit.
#
#   hack/build-image.sh            # build (layers cached), print the tag and the size
#   hack/build-image.sh --lint     # lint the Dockerfile first (hack/lint-dockerfile.sh)
#
# The version comes from pyproject.toml and the revision from git, both stamped into the
# OCI labels. The base image is local (no registry here): run hack/docker-setup.sh first.
#
# Environment:
#   PULSE_BASE_IMAGE  base image (default: local/bookworm:min)
#   PULSE_IMAGE       full tag to build (default: pulse-recursive-training:<version>)
#   PULSE_BUILD_ARGS  extra `docker build` arguments, word-split (e.g. "--no-cache")
# The last line on stdout is the tag built; progress and timings go to stderr.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'build-image: %s\n' "$*" >&2; }

if [[ "${1:-}" == "--lint" ]]; then
  hack/lint-dockerfile.sh
  shift
fi

# Read the version with the stdlib TOML parser rather than grep: robust to formatting.
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
vcs_ref=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# An uncommitted tree is not that commit: say so in the label.
if [[ -n "$(git status --porcelain 2>/dev/null || true)" ]]; then
  vcs_ref="${vcs_ref}-dirty"
fi
source_url=$(git config --get remote.origin.url 2>/dev/null || echo unknown)
readonly base_image="${PULSE_BASE_IMAGE:-local/bookworm:min}"
readonly image="${PULSE_IMAGE:-pulse-recursive-training:${version}}"

# BuildKit. The Docker 2x CLI only builds with BuildKit through the buildx plugin; Debian
# bookworm packages no buildx, but its docker.io CLI (20.10, /usr/bin/docker) drives the
# daemon's built-in BuildKit directly with DOCKER_BUILDKIT=1. Use whichever can.
export DOCKER_BUILDKIT=1
docker_cli=docker
if ! docker buildx version >/dev/null 2>&1; then
  major=$(docker version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
  if [[ "${major:-0}" -ge 23 ]]; then
    if [[ -x /usr/bin/docker ]]; then
      docker_cli=/usr/bin/docker
    else
      log "docker ${major}.x has no buildx plugin and no BuildKit-capable CLI was found"
      exit 1
    fi
  fi
fi

extra_args=()
# The host's CA bundle as a build secret: where egress goes through a TLS-inspecting proxy
# (as on this project's machines) pip in the build trusts what the host trusts. A secret
# is not stored in the image, unlike a COPY or build argument.
ca_bundle="${PULSE_BUILD_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
if [[ -s "${ca_bundle}" ]]; then
  extra_args+=(--secret "id=ca-bundle,src=${ca_bundle}")
fi
if [[ -n "${PULSE_BUILD_ARGS:-}" ]]; then
  read -r -a user_args <<<"${PULSE_BUILD_ARGS}"
  extra_args+=("${user_args[@]}")
fi

log "building ${image} (base ${base_image}, revision ${vcs_ref}) with ${docker_cli}"
start=$(date +%s)
"${docker_cli}" build \
  --progress=plain \
  --build-arg "BASE_IMAGE=${base_image}" \
  --build-arg "VERSION=${version}" \
  --build-arg "VCS_REF=${vcs_ref}" \
  --build-arg "SOURCE=${source_url}" \
  --tag "${image}" \
  "${extra_args[@]}" \
  . >&2
end=$(date +%s)

# The image this tag pointed to before is now dangling; each holds its own ~830 MB venv
# layer when the pins changed, so drop this project's dangling images (and only them).
docker image prune --force --filter "label=org.opencontainers.image.title=pulse-recursive-training" >/dev/null

size=$(docker image inspect --format '{{.Size}}' "${image}")
log "built ${image} in $((end - start)) s; size $((size / 1000000)) MB (${size} bytes)"
echo "${image}"
