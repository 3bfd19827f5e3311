#!/usr/bin/env bash
# A one-node Slurm cluster on this machine for fedhub's tests (slurmctld + slurmd + munged).
#
# Idempotent and quick when the cluster is already up. Installs Debian's slurm-wlm and
# munge when missing, writes /etc/slurm/slurm.conf from slurm.conf.in beside this script
# (partitions "debug" (default) and "long"), starts the daemons without systemd and waits
# until the node is idle. Needs root. Refuses to touch a slurm.conf it did not write.
# State lives in /var/lib/fedhub-slurm, logs in /var/log/fedhub-slurm.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CONF=/etc/slurm/slurm.conf
MARK="# fedhub one-node test cluster"
STATE=/var/lib/fedhub-slurm
RUN=/run/fedhub-slurm
LOG=/var/log/fedhub-slurm
HOST=$(hostname -s)
CPUS=$(nproc)

say() { echo "setup-test-cluster: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  say "must run as root"; exit 1
fi

node_state() { timeout 10 sinfo --noheader --nodes="$HOST" --format=%T 2>/dev/null | head -n1; }
node_ready() { case "$(node_state)" in idle|mixed|allocated|completing) return 0;; esac; return 1; }
conf_current() {
  [ -f "$CONF" ] && head -n1 "$CONF" | grep -qF "$MARK" \
    && grep -q "^NodeName=$HOST .*CPUs=$CPUS " "$CONF"
}

# Fast path: already configured for this machine and the node takes jobs.
if command -v sinfo >/dev/null && conf_current && node_ready; then
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt_get() { apt-get -o DPkg::Lock::Timeout=600 -y -qq "$@"; }
  if ! apt_get install slurm-wlm munge >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt_get install slurm-wlm munge >/dev/null
  fi
fi

if [ -f "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARK"; then
  say "$CONF exists and was not written by this script; leaving it alone"; exit 1
fi

# --- munge ------------------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating a munge key"
  if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1
  done
fi

# --- slurm.conf -------------------------------------------------------------------------
mkdir -p "$STATE/ctld" "$STATE/d" "$RUN" "$LOG" /etc/slurm
changed=0
if ! conf_current; then
  avail=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo)
  memory=$(( avail * 8 / 10 ))
  [ "$memory" -ge 1024 ] || memory=1024
  say "writing $CONF ($HOST, $CPUS CPUs, ${memory} MiB)"
  sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEMORY@|$memory|g" \
      -e "s|@STATE@|$STATE|g" -e "s|@RUN@|$RUN|g" -e "s|@LOG@|$LOG|g" \
      "$HERE/slurm.conf.in" > "$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
  changed=1
fi

# --- daemons ----------------------------------------------------------------------------
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_daemon() {
  if running "$1"; then
    kill "$(cat "$1")" 2>/dev/null || true
    for _ in $(seq 100); do running "$1" || break; sleep 0.1; done
  fi
}
if [ "$changed" = 1 ]; then
  stop_daemon "$RUN/slurmd.pid"; stop_daemon "$RUN/slurmctld.pid"
fi
if ! running "$RUN/slurmctld.pid"; then
  say "starting slurmctld"
  slurmctld
fi
for _ in $(seq 100); do timeout 5 scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
if ! running "$RUN/slurmd.pid"; then
  say "starting slurmd"
  slurmd
fi

# --- wait for the node ------------------------------------------------------------------
for i in $(seq 120); do
  state=$(node_state || true)
  case "$state" in
    idle|mixed|allocated|completing) say "node $HOST is $state"; exit 0 ;;
    down*|drain*|drained*|fail*)
      [ $((i % 5)) = 1 ] && scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
say "node $HOST did not become idle (state: ${state:-none}); see $LOG"
tail -n 20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2 || true
exit 1
