#!/usr/bin/env bash
# Build the fedhub single-user image without any container registry:
#   1. debootstrap a minimal bookworm (with python3) and `docker import` it as the base,
#   2. `pip download` a wheelhouse on the host (same Python 3.11 as bookworm's python3),
#      plus fedhub itself as a wheel (for the assertion identity provider),
#   3. `docker build --network none` from that base and wheelhouse.
# Prints the image tag on its last line. Reuses the base and the image when their inputs
# did not change (tags carry a hash of the inputs). Needs root, dockerd and debootstrap.
#
# Environment: FEDHUB_DOCKER_CACHE (default /var/cache/fedhub/docker), DEBIAN_MIRROR,
# FEDHUB_IMAGE_REPO (default fedhub-singleuser), PYTHON (default python3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${FEDHUB_DOCKER_CACHE:-/var/cache/fedhub/docker}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
image_repo=${FEDHUB_IMAGE_REPO:-fedhub-singleuser}
python=${PYTHON:-python3}
include=python3,python3-venv,passwd,ca-certificates
# bookworm's python3; wheels must fit it (requires-python), not the host's 3.11.x.
image_python=${IMAGE_PYTHON_VERSION:-3.11.2}

log() { echo "build-image: $*" >&2; }
hash_of() { sha256sum | cut -c1-12; }
mkdir -p "$cache"

# -- 1. base image --------------------------------------------------------------------------
base_tag="fedhub-base:bookworm-$(echo "minbase $include" | hash_of)"
if ! docker image inspect "$base_tag" >/dev/null 2>&1; then
  rootfs="$cache/rootfs-$(echo "$base_tag" | hash_of)"
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    rm -rf "$rootfs"
    log "debootstrap bookworm into $rootfs"
    debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$mirror" >&2
    # apt lists and caches are not needed in the image (and there is no network anyway).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  fi
  log "docker import $base_tag"
  tar -C "$rootfs" -c . | docker import - "$base_tag" >/dev/null
fi

# -- 2. wheelhouse --------------------------------------------------------------------------
# Pin what the host has (it is what the local backend and the tests run).
reqs=$("$python" - <<'PY'
from importlib.metadata import PackageNotFoundError, version
for name in ("jupyterlab", "jupyter_server", "cryptography", "pynacl"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:  # not on the host: the newest that fits the image
        print(name)
PY
)
# A build context of its own per run: two builds at once (two test runs) must not share one.
ctx=$(mktemp -d "$cache/context.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/wheels"
printf '%s\n' "$reqs" > "$ctx/requirements.txt"
cp "$here/Dockerfile" "$ctx/Dockerfile"
wheels="$cache/wheels-$(printf '%s\n' "$reqs" "$image_python" | hash_of)"
if [ ! -f "$wheels/.complete" ]; then
  partial=$(mktemp -d "$wheels.partial.XXXXXX")
  log "pip download into $wheels"
  "$python" -m pip download -q --only-binary=:all: --python-version "$image_python" \
    -d "$partial" -r "$ctx/requirements.txt" >&2
  touch "$partial/.complete"
  # publish atomically; a concurrent run that finished first wins and ours is dropped
  mv -T "$partial" "$wheels" 2>/dev/null || rm -rf "$partial"
fi
cp "$wheels"/*.whl "$ctx/wheels/"
log "building the fedhub wheel"
"$python" -m pip wheel -q --no-deps -w "$ctx/wheels" "$repo" >&2

# -- 3. image -------------------------------------------------------------------------------
# The container only runs the identity provider and the signing code it imports, so only
# those files (not every change to the agent) make a new image.
inputs=$( { cat "$here/Dockerfile" "$0"; printf '%s\n' "$base_tag" "$reqs";
            cat "$repo/site-agent/fedhub/site_agent/singleuser.py" \
                "$repo/events/fedhub/events/signing.py" "$repo/events/fedhub/events/errors.py";
          } | hash_of)
tag="$image_repo:$inputs"
if docker image inspect "$tag" >/dev/null 2>&1; then
  log "$tag is up to date"
else
  log "docker build $tag (no network)"
  DOCKER_BUILDKIT=0 docker build -q --network none --build-arg "BASE=$base_tag" \
    -t "$tag" "$ctx" >&2
  docker tag "$tag" "$image_repo:latest"
  # The wheels stage is untagged; only ours carry this label.
  docker image prune -f --filter label=org.fedhub.stage=wheels >/dev/null
fi
rm -rf "$ctx"
echo "$tag"
