# shellcheck shell=bash
# Sourced by build.sh and smoke.sh: picks the engine (ENGINE=podman|docker, else whichever is
# installed, podman first) and, for podman on a host whose containers cannot take podman's
# defaults, a containers.conf that they can take.
#
# Seen in a sandboxed machine (cgroup v1 + an empty cgroup v2 mount, capped rlimits, no
# CAP_SYS_RESOURCE): crun refuses with "cgroups in hybrid mode not supported" and podman's
# default rlimits (nofile 1048576) fail with "setrlimit RLIMIT_NOFILE: Operation not permitted".
# runc + rlimits no higher than this shell's hard limits work there.
ENGINE=${ENGINE:-$(basename "$(command -v podman || command -v docker || echo none)")}
if [ "$ENGINE" = none ]; then
  echo "engine: neither podman nor docker is installed" >&2
  # shellcheck disable=SC2317 # (sourced: return; run: exit)
  return 1 2>/dev/null || exit 1
fi
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ] && command -v runc >/dev/null \
   && ! podman info --format '{{.Host.CgroupsVersion}}' 2>/dev/null | grep -q v2; then
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
  CONTAINERS_CONF=$(mktemp --suffix=.containers.conf)
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\n' \
    "$nofile" "$nofile" "$nproc" "$nproc" >"$CONTAINERS_CONF"
  export CONTAINERS_CONF
  echo "engine: podman on cgroup v1: runc, nofile=$nofile, nproc=$nproc ($CONTAINERS_CONF)"
fi
export ENGINE
