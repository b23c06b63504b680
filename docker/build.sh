#!/usr/bin/env bash
# Build the kdsweep image (docker/Dockerfile) with this machine's pip set-up, and optionally a
# base made locally (no image registry needed). Run from anywhere; prints the image's size and
# the build's wall time at the end.
#
#   bash docker/build.sh                     # BASE: the public python:3.11-slim-bookworm
#   LOCAL_BASE=1 bash docker/build.sh        # BASE: docker/make-base.sh's debootstrapped image,
#                                            # plus the local PostgreSQL image for compose
#
# pip: the effective configuration of this machine's pip (`pip config list`, environment
# included) goes into the build as the secret `pipconf` (never into a layer). With podman,
# the local paths it names (file:// indexes, find-links folders, constraint and CA files) are
# mounted read-only under /run/host for the build only; docker's BuildKit cannot mount host
# folders, so there only URL indexes work.
#
# Knobs: ENGINE=podman|docker, IMAGE (kdsweep:0.1.0), BASE, POSTGRES_IMAGE, PIP (host pip).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=docker/engine.sh
. "$here/engine.sh"
IMAGE=${IMAGE:-kdsweep:0.1.0}
PIP=${PIP:-$(command -v pip3 || command -v pip || true)}
# shellcheck disable=SC1091
suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-bookworm}" || echo bookworm)

if [ "${LOCAL_BASE:-0}" = 1 ]; then
  BASE=${BASE:-localhost/kdsweep-base:$suite}
  ENGINE=$ENGINE TAG=$BASE bash "$here/make-base.sh"
fi
BASE=${BASE:-python:3.11-slim-bookworm}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
args=(--build-arg "BASE=$BASE" -f "$repo/docker/Dockerfile" -t "$IMAGE")
if [ -n "$PIP" ]; then
  # `pip config list` -> one pip.conf; the local paths it names -> read-only mounts.
  "$PIP" config list 2>/dev/null | python3 -c '
import os, re, sys
conf, paths = {}, set()
for line in sys.stdin:
    m = re.match(r"^(?::env:|global|install|download|wheel)?\.?([\w-]+)=(.*)$", line.strip())
    if not m:
        continue
    key, words = m.group(1), m.group(2).strip("\x27\"").split()
    for i, v in enumerate(words):
        url = v.startswith("file://")
        p = v[len("file://"):] if url else v
        if p.startswith("/") and os.path.exists(p):
            top = os.path.dirname(p) if p.endswith("/simple") else p  # its files lie beside
            paths.add(top)
            words[i] = ("file://" if url else "") + "/run/host" + p
    conf[key] = " ".join(words)
with open(sys.argv[1], "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(conf.items())))
with open(sys.argv[2], "w") as f:
    f.write("".join(p + "\n" for p in sorted(paths)))
' "$work/pip.conf" "$work/paths"
  args+=(--secret "id=pipconf,src=$work/pip.conf")
  if [ "$ENGINE" = podman ]; then
    while read -r p; do args+=(-v "$p:/run/host$p:ro"); done <"$work/paths"
  fi
  echo "build: pip config for the build (secret 'pipconf'):"; sed 's/^/  /' "$work/pip.conf"
fi
if [ "$ENGINE" = podman ]; then
  args+=(--ignorefile "$repo/docker/Dockerfile.dockerignore")
else
  export DOCKER_BUILDKIT=1
fi

start=$(date +%s)
nice -n "${NICE:-10}" "$ENGINE" build "${args[@]}" "$repo"
took=$(( $(date +%s) - start ))

if [ "${LOCAL_BASE:-0}" = 1 ]; then
  # The public postgres image cannot be pulled either: a stand-in from the same local base.
  POSTGRES_IMAGE=${POSTGRES_IMAGE:-localhost/kdsweep-postgres:15}
  nice -n "${NICE:-10}" "$ENGINE" build --build-arg "BASE=$BASE" -t "$POSTGRES_IMAGE" \
    -f "$repo/docker/postgres-local.Dockerfile" "$repo/docker"
fi
size=$("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}')
echo "build: $IMAGE built in ${took}s; size $((size / 1000000)) MB ($ENGINE, BASE=$BASE)"
