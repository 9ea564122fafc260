#!/usr/bin/env bash
# Provide a working Docker engine and the local base image for the image tier.
#
#   hack/docker-setup.sh          # idempotent: installs, starts and imports only what is missing
#
# Steps, each skipped when already done:
#   1. docker.io and debootstrap from Debian (apt) when dockerd / debootstrap are missing;
#   2. dockerd started by hand when no engine answers `docker info` (these machines have
#      no systemd), with its data root and log under the cache dir, then a bounded wait;
#   3. the base image local/bookworm:min, made with debootstrap + `docker import`, because
#      there is no image registry here (`docker pull` fails) and the Dockerfile takes its
#      base from ARG BASE_IMAGE.
# Timings go to stderr (and the cache dir's setup-times.log). See docs/image.md.
#
# Environment:
#   PULSE_DOCKER_HOME    cache root (default: $HOME/.cache/pulse-docker): dockerd's data
#                        root, its log and PID file
#   PULSE_BASE_IMAGE     tag of the base image (default: local/bookworm:min)
#   PULSE_DEBIAN_MIRROR  mirror for debootstrap (default: the one apt uses on this machine)
set -euo pipefail
# shellcheck source=hack/daemon.sh
source "$(dirname "${BASH_SOURCE[0]}")/daemon.sh"

readonly CACHE_HOME="${PULSE_DOCKER_HOME:-${HOME}/.cache/pulse-docker}"
readonly DATA_ROOT="${CACHE_HOME}/data-root"
readonly DOCKERD_LOG="${CACHE_HOME}/dockerd.log"
readonly DOCKERD_PID="${CACHE_HOME}/dockerd.pid"
readonly TIMES_LOG="${CACHE_HOME}/setup-times.log"
readonly BASE_IMAGE="${PULSE_BASE_IMAGE:-local/bookworm:min}"
readonly SUITE="bookworm"
# dockerd usually answers within 2-5 s; 120 s leaves room for a first start on a busy
# machine (overlay2 probing, iptables setup) without hanging CI forever.
readonly DOCKERD_WAIT_SECONDS=120

log() { printf 'docker-setup: %s\n' "$*" >&2; }

# Record how long a step took, so cold and warm runs can be compared (docs/image.md).
timed() {
  local name="$1" start end
  shift
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  log "${name}: $((end - start)) s"
  printf '%s\t%s\t%s s\n' "$(date -u +%FT%TZ)" "${name}" "$((end - start))" >>"${TIMES_LOG}"
}

engine_answers() { docker info >/dev/null 2>&1; }

install_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  # The docker CLI may come from elsewhere (a newer static client); docker.io brings one.
  command -v docker >/dev/null 2>&1 || missing+=(docker.io)
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  if [[ $(id -u) -ne 0 ]]; then
    log "need root to apt-get install ${missing[*]}"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_dockerd() {
  if engine_answers; then
    log "engine already answers"
    return 0
  fi
  mkdir -p "${DATA_ROOT}"
  log "starting dockerd (data root ${DATA_ROOT}, log ${DOCKERD_LOG})"
  # The subshell execs it (no `cd X &&` in the list, see shared/machine-notes.md), so $! is
  # dockerd's own PID; setsid keeps it alive after this script's session ends. It keeps
  # none of the caller's descriptors: under `flock /tmp/pulse-cluster.lock` a dockerd
  # holding the lock's descriptor blocked every later user of the lock for its lifetime.
  (
    close_inherited_fds
    exec setsid nohup dockerd --data-root "${DATA_ROOT}" --pidfile "${DOCKERD_PID}" \
      >>"${DOCKERD_LOG}" 2>&1 </dev/null
  ) &
  local pid=$! waited=0
  until engine_answers; do
    if ! kill -0 "${pid}" 2>/dev/null; then
      log "dockerd exited; last lines of ${DOCKERD_LOG}:"
      tail -n 20 "${DOCKERD_LOG}" >&2
      exit 1
    fi
    if ((waited >= DOCKERD_WAIT_SECONDS)); then
      log "dockerd (pid ${pid}) did not answer within ${DOCKERD_WAIT_SECONDS} s; see ${DOCKERD_LOG}"
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "dockerd pid ${pid} answers after ~${waited} s"
}

# The Debian mirror apt uses here (deb822 .sources or one-line sources.list), so
# debootstrap fetches from a host this machine can reach.
debian_mirror() {
  if [[ -n "${PULSE_DEBIAN_MIRROR:-}" ]]; then
    printf '%s\n' "${PULSE_DEBIAN_MIRROR}"
    return 0
  fi
  local url
  url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ' || true)
  printf '%s\n' "${url:-http://deb.debian.org/debian}"
}

make_base_image() {
  if docker image inspect "${BASE_IMAGE}" >/dev/null 2>&1; then
    log "base image ${BASE_IMAGE} present"
    return 0
  fi
  local mirror rootfs
  mirror=$(debian_mirror)
  rootfs=$(mktemp -d "${CACHE_HOME}/rootfs.XXXXXX")
  # Remove the rootfs whatever happens: it is 150 MB and only the imported image matters.
  trap 'rm -rf "${rootfs}"' EXIT
  log "debootstrap --variant=minbase ${SUITE} from ${mirror}"
  timed "debootstrap" run_debootstrap "${rootfs}" "${mirror}"
  # debootstrap's sources.list names only the release; add its updates and security suites
  # so image builds get fixed packages (the Dockerfile pins only the packages it names).
  cat >"${rootfs}/etc/apt/sources.list" <<SOURCES
deb ${mirror} ${SUITE} main
deb ${mirror} ${SUITE}-updates main
deb ${mirror%/debian*}/debian-security ${SUITE}-security main
SOURCES
  # Slim like debian:bookworm-slim: dpkg skips docs, man pages and translations of every
  # package installed later too (copyright files stay), and the ones already there go.
  cat >"${rootfs}/etc/dpkg/dpkg.cfg.d/01-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
  find "${rootfs}/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "${rootfs}/usr/share/man/"* "${rootfs}/usr/share/info/"*
  find "${rootfs}/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
    -exec rm -rf {} +
  # Drop the .debs (31 MB), package lists and caches debootstrap leaves; builds run
  # apt-get update themselves.
  rm -rf "${rootfs}/var/cache/apt/archives/"*.deb "${rootfs}/var/lib/apt/lists/"* \
    "${rootfs}/var/cache/apt/"*.bin "${rootfs}/var/log/"*.log
  timed "docker import" import_rootfs "${rootfs}"
  rm -rf "${rootfs}"
  trap - EXIT
}

# Its chatter goes to a log: CI output stays readable, the log explains a failure.
run_debootstrap() {
  if ! debootstrap --variant=minbase "${SUITE}" "$1" "$2" >>"${CACHE_HOME}/debootstrap.log" 2>&1; then
    log "debootstrap failed; last lines of ${CACHE_HOME}/debootstrap.log:"
    tail -n 20 "${CACHE_HOME}/debootstrap.log" >&2
    return 1
  fi
}

import_rootfs() {
  tar --numeric-owner -C "$1" -c . |
    docker import --change 'CMD ["/bin/bash"]' - "${BASE_IMAGE}" >/dev/null
}

main() {
  mkdir -p "${CACHE_HOME}"
  local start end
  start=$(date +%s)
  timed "install packages" install_packages
  timed "start engine" start_dockerd
  timed "base image" make_base_image
  end=$(date +%s)
  log "ready in $((end - start)) s: $(docker version --format 'engine {{.Server.Version}}')," \
    "base ${BASE_IMAGE}"
  printf '%s\t%s\t%s s\n' "$(date -u +%FT%TZ)" "total" "$((end - start))" >>"${TIMES_LOG}"
}

main "$@"
