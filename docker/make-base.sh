#!/usr/bin/env bash
# A Debian + Python 3 base image made locally, for machines that cannot pull from an image
# registry: debootstrap this machine's Debian release (or SUITE) into a folder and import the
# folder as an image. The result stands in for the public python:3.11-slim-bookworm that
# docker/Dockerfile uses by default:
#
#   bash docker/make-base.sh                      # -> localhost/kdsweep-base:bookworm
#   podman build --build-arg BASE=localhost/kdsweep-base:bookworm ...   (docker/README.md)
#
# Needs root (debootstrap), debootstrap, and podman or docker (ENGINE=... to choose).
# Only Debian packages are fetched (from MIRROR), no image registry is contacted.
set -euo pipefail

ENGINE=${ENGINE:-$(command -v podman || command -v docker || true)}
[ -n "$ENGINE" ] || { echo "make-base: no podman or docker found" >&2; exit 1; }
# shellcheck disable=SC1091
SUITE=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
TAG=${TAG:-localhost/kdsweep-base:$SUITE}

if "$ENGINE" image inspect "$TAG" >/dev/null 2>&1 && [ "${FORCE:-0}" != 1 ]; then
  echo "make-base: $TAG exists (FORCE=1 to remake it)"
  exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# minbase + what the public python:*-slim images have that the build needs: Python 3 with venv
# (the project's venv is made from it) and CA certificates (pip over HTTPS).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$root" "$MIRROR"

# The same suites the public Debian images list (point updates and security fixes).
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
# As in the public images: no apt caches left in layers, no recommends pulled in.
printf 'APT::Install-Recommends "false";\n' >"$root/etc/apt/apt.conf.d/90norecommends"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb

tar -C "$root" -c . | "$ENGINE" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$TAG"
# The build's RUN steps call `python3`; the public image also has `python`.
"$ENGINE" image inspect "$TAG" --format '{{.Id}} {{.Size}}' 2>/dev/null || true
echo "make-base: $TAG ($SUITE, $("$ENGINE" run --rm "$TAG" python3 --version))"
