# shellcheck shell=bash
# Sourced by the hack scripts that start long-lived daemons (dockerd, the cluster's
# components), never run on its own.

# close_inherited_fds: close every descriptor above 2 of the calling (sub)shell. Call it in
# the subshell that then execs a daemon: under `flock LOCK hack/<script>.sh` the daemon
# would otherwise inherit the caller's lock and hold it for as long as it runs.
close_inherited_fds() {
  local fd
  for fd in "/proc/${BASHPID}/fd"/*; do
    fd="${fd##*/}"
    if ((fd > 2)); then eval "exec ${fd}>&-" 2>/dev/null || true; fi
  done
}
