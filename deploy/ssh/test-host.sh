#!/usr/bin/env bash
# A throwaway SSH host for trying the SSH backend by hand: sshd inside a network namespace
# joined to this machine by a veth pair, key authentication only, fresh keys.
#
#   deploy/ssh/test-host.sh up DIR     # prints a [site_agent.backend_config] for it
#   deploy/ssh/test-host.sh down DIR
#
# Needs root, iproute2 and openssh-server (apt-get install openssh-server iproute2).
# The namespace shares this machine's filesystem, so the remote Python is this one.
set -euo pipefail
cmd=${1:?usage: $0 up|down DIR}
dir=$(realpath -m "${2:?usage: $0 up|down DIR}")
here=$(cd "$(dirname "$0")" && pwd)
ns=fh-sshhost-$(basename "$dir" | tr -cd 'a-zA-Z0-9' | cut -c1-12)
hostif=fhs${ns: -6}h
nsif=fhs${ns: -6}n
host_ip=${HOST_IP:-10.200.250.1}
ns_ip=${NS_IP:-10.200.250.2}

case "$cmd" in
up)
  mkdir -p "$dir" && chmod 700 "$dir"
  ssh-keygen -q -t ed25519 -N '' -C fedhub-test-host -f "$dir/host_key" <<<y >/dev/null
  ssh-keygen -q -t ed25519 -N '' -C fedhub-site -f "$dir/client_key" <<<y >/dev/null
  cp "$dir/client_key.pub" "$dir/authorized_keys"
  echo "$ns_ip $(cut -d' ' -f1,2 "$dir/host_key.pub")" >"$dir/known_hosts"
  sed -e "s|@LISTEN@|$ns_ip|" -e "s|@PORT@|22|" -e "s|@HOST_KEY@|$dir/host_key|" \
      -e "s|@PID_FILE@|$dir/sshd.pid|" -e "s|@AUTHORIZED_KEYS@|$dir/authorized_keys|" \
      "$here/sshd_config.in" >"$dir/sshd_config"
  ip netns add "$ns"
  ip link add "$hostif" type veth peer name "$nsif"
  ip link set "$nsif" netns "$ns"
  ip addr add "$host_ip/30" dev "$hostif" && ip link set "$hostif" up
  ip netns exec "$ns" ip addr add "$ns_ip/30" dev "$nsif"
  ip netns exec "$ns" ip link set "$nsif" up
  ip netns exec "$ns" ip link set lo up
  mkdir -p /run/sshd
  ip netns exec "$ns" /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
  cat <<TOML
[site_agent]
backend = "ssh"

[site_agent.backend_config]
hosts = [{ address = "$ns_ip", username = "root" }]
client_key = "$dir/client_key"
known_hosts = "$dir/known_hosts"
python = "$(command -v python3)"
remote_data_dir = "$dir/remote"
TOML
  ;;
down)
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip link del "$hostif" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ;;
*) echo "usage: $0 up|down DIR" >&2; exit 2 ;;
esac
