#!/usr/bin/env bash
# Make this (Debian 12, root) machine a Docker site for the tests; safe to run again:
# installs docker.io and debootstrap if missing, starts dockerd if it is not answering,
# and builds the single-user image once (build-image.sh reuses it when inputs are unchanged).
# Prints the image tag on its last line. DOCKERD_FLAGS adds daemon flags (e.g.
# "--storage-driver=vfs --iptables=false" where overlayfs or iptables are unavailable).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "setup-test-env: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "setup-test-env: must run as root (installs packages, starts dockerd)" >&2
  exit 1
fi

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

if ! docker info >/dev/null 2>&1; then
  # No systemd here: run the daemon detached; its log stays next to its pid file.
  log "starting dockerd ${DOCKERD_FLAGS:-}"
  mkdir -p /var/log/fedhub
  # shellcheck disable=SC2086
  setsid dockerd ${DOCKERD_FLAGS:-} >/var/log/fedhub/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    log "dockerd did not come up; last lines of /var/log/fedhub/dockerd.log:"
    tail -20 /var/log/fedhub/dockerd.log >&2
    exit 1
  fi
fi

exec "$here/build-image.sh"
