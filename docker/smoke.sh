#!/usr/bin/env bash
# The image and compose.yaml, run for real (tests/test_docker.py calls this):
#   1. one container: `sweeps/temperature.py --smoke`, its MLflow runs (SQLite) and sweep results
#      in a folder of this machine mounted at /out, then read back from that folder by a fresh
#      container;
#   2. compose: PostgreSQL + MLflow + Ray head + one CPU worker, token auth on (a fresh token),
#      a smoke sweep through `--address ray-head:6379`, its runs read from PostgreSQL, a client
#      with a wrong token refused, then `down -v` and a check that nothing of it is left.
# Needs the images built (docker/build.sh). Prints the evidence; exits non-zero on any failure.
#
#   bash docker/smoke.sh                                     # images with the public names
#   KDSWEEP_IMAGE=kdsweep:0.1.0 POSTGRES_IMAGE=localhost/kdsweep-postgres:15 bash docker/smoke.sh
#
# Knobs: ENGINE, COMPOSE (e.g. "docker compose", podman-compose), KDSWEEP_IMAGE, POSTGRES_IMAGE,
# SMOKE_PART=all|container|compose, SMOKE_TIMEOUT (seconds per sweep, default 900).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=docker/engine.sh
. "$here/engine.sh"
export KDSWEEP_IMAGE=${KDSWEEP_IMAGE:-kdsweep:0.1.0}
export POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:15-bookworm}
PART=${SMOKE_PART:-all}
T=${SMOKE_TIMEOUT:-900}
project=kdsweep-smoke
say() { printf '\n== smoke: %s\n' "$*"; }

if [ -z "${COMPOSE:-}" ]; then
  if [ "$ENGINE" = podman ] && command -v podman-compose >/dev/null; then COMPOSE=podman-compose
  elif docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
  elif command -v docker-compose >/dev/null; then COMPOSE=docker-compose
  else COMPOSE=""; fi
fi
for img in "$KDSWEEP_IMAGE" "$POSTGRES_IMAGE"; do
  [ "$PART" = container ] && [ "$img" = "$POSTGRES_IMAGE" ] && continue
  "$ENGINE" image inspect "$img" >/dev/null 2>&1 || "$ENGINE" pull "$img" >/dev/null 2>&1 || {
    echo "smoke: image $img not found and not pullable (build it: bash docker/build.sh)" >&2
    exit 2
  }
done
size=$("$ENGINE" image inspect "$KDSWEEP_IMAGE" --format '{{.Size}}')
say "$ENGINE, image $KDSWEEP_IMAGE ($((size / 1000000)) MB), compose: ${COMPOSE:-none}"

# ---------------------------------------------------------------- 1. one container
if [ "$PART" != compose ]; then
  out=$(mktemp -d)
  chmod 0777 "$out" # the image runs as uid 1000
  say "1. --smoke sweep in one container, results in $out (mounted at /out)"
  start=$(date +%s)
  timeout "$T" "$ENGINE" run --rm --network none --shm-size 8g -v "$out:/out" \
    -e RAY_USAGE_STATS_ENABLED=0 "$KDSWEEP_IMAGE" \
    python sweeps/temperature.py --smoke --storage /out/runs --mlflow-uri sqlite:////out/mlflow.db \
    | tee "$out/sweep.log" | tail -n 25
  grep -q "best: soft T=" "$out/sweep.log"
  say "1. sweep took $(( $(date +%s) - start ))s; on this machine: $(cd "$out" && echo *)"
  say "1. its MLflow runs, read from the folder by a fresh container"
  "$ENGINE" run --rm --network none -v "$out:/out:ro" "$KDSWEEP_IMAGE" python -c '
import mlflow
mlflow.set_tracking_uri("sqlite:////out/mlflow.db")
runs = mlflow.search_runs(search_all_experiments=True)
cols = [c for c in ("tags.mlflow.runName", "status", "metrics.val_acc", "params.temperature")
        if c in runs]
print(runs[cols].to_string(max_rows=40))
assert len(runs) and (runs.status == "FINISHED").all(), runs.status.value_counts()
print(len(runs), "runs, all FINISHED")
'
  rm -rf "$out" 2>/dev/null || true
fi

# ---------------------------------------------------------------- 2. compose
[ "$PART" = container ] && exit 0
[ -n "$COMPOSE" ] || { echo "smoke: no compose tool (podman-compose or docker compose)" >&2; exit 2; }
cd "$here"
# A fresh password and token for this run only, in the environment (not in docker/.env, which
# stays the user's); compose takes the environment before .env.
POSTGRES_PASSWORD=$(openssl rand -hex 16)
RAY_AUTH_TOKEN=$(openssl rand -hex 32)
export POSTGRES_PASSWORD RAY_AUTH_TOKEN
# podman-compose 1.0.3 echoes every podman command it runs, environment (token) included.
redact() { sed -e "s/$RAY_AUTH_TOKEN/<token>/g" -e "s/$POSTGRES_PASSWORD/<password>/g"; }
quiet() { # ... and podman-compose's own echo lines
  redact | grep -vE "^\['|^podman |^using podman|^exit code:|^Error: inspecting object: no such vol"
}
compose() { $COMPOSE -p "$project" -f compose.yaml "$@"; }
ids() { "$ENGINE" ps -aq --filter "label=com.docker.compose.project=$project" "$@"; }
in_svc() { # service, command...: engine exec into the service's container (no compose echo)
  local svc=$1; shift
  "$ENGINE" exec "$(ids --filter "label=com.docker.compose.service=$svc")" "$@"
}
cleanup() {
  say "2. compose down -v"
  compose down -v 2>&1 | redact | tail -n 3 || true
  # podman-compose 1.0.3 leaves the project's network behind (docker compose removes it)
  "$ENGINE" network rm "${project}_kdsweep" >/dev/null 2>&1 || true
}
trap cleanup EXIT
say "2. compose up: postgres, mlflow, ray-head, ray-worker"
compose up -d 2>&1 | quiet | tail -n 12
# podman-compose starts in order without waiting for health: wait here for each service.
wait_for() { # service, command...
  local svc=$1; shift
  for _ in $(seq 90); do
    in_svc "$svc" "$@" >/dev/null 2>&1 && return 0
    sleep 2
  done
  echo "smoke: $svc not ready: $*" >&2
  compose logs "$svc" 2>&1 | redact | tail -n 30 >&2
  return 1
}
wait_for postgres pg_isready -U mlflow -d mlflow
wait_for mlflow python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:5000/health', timeout=3)"
wait_for ray-head python -c "
import ray; ray.init(address='ray-head:6379', logging_level='ERROR')
assert any(n['Alive'] and n['Resources'].get('CPU') for n in ray.nodes())"
say "2. ray status on the head (auth on, the shared token)"
compose exec -T ray-head ray status 2>&1 | quiet | sed -n '/Node status/,/From request_resources/p' 
say "2. a client with a wrong token is refused"
# (engine exec, not compose exec: podman-compose's exec re-adds the service's own token)
if in_svc ray-head env "RAY_AUTH_TOKEN=$(openssl rand -hex 32)" timeout 60 python -c "
import ray; ray.init(address='ray-head:6379', logging_level='ERROR'); print(ray.nodes())
" >/dev/null 2>&1; then
  echo "smoke: a wrong token was accepted" >&2; exit 1
fi
echo "refused (as it should be)"

say "2. --smoke sweep from the head through --address, MLflow at http://mlflow:5000"
start=$(date +%s)
log=$(mktemp)
# shellcheck disable=SC2086 # COMPOSE may be two words ("docker compose")
timeout "$T" $COMPOSE -p "$project" -f compose.yaml exec -T ray-head \
  python sweeps/temperature.py --smoke --address ray-head:6379 --storage /shared/runs \
  2>&1 | quiet | tee "$log" | tail -n 25
grep -q "best: soft T=" "$log"
rm -f "$log"
say "2. sweep took $(( $(date +%s) - start ))s; its runs, read from PostgreSQL"
in_svc postgres psql -U mlflow -d mlflow -c \
  "SELECT e.name AS experiment, r.name AS run, r.status, count(m.key) AS metrics
     FROM runs r JOIN experiments e USING (experiment_id)
     LEFT JOIN latest_metrics m ON m.run_uuid = r.run_uuid
    GROUP BY e.name, r.name, r.status, r.start_time ORDER BY r.start_time"
n=$(in_svc postgres psql -U mlflow -d mlflow -tAc \
  "SELECT count(*) FROM runs WHERE status = 'FINISHED'")
[ "$n" -gt 0 ] || { echo "smoke: no FINISHED run in PostgreSQL" >&2; exit 1; }

trap - EXIT
cleanup
left=$(ids)
vols=$("$ENGINE" volume ls -q | grep "^${project}[_-]" || true)
nets=$("$ENGINE" network ls --format '{{.Name}}' | grep "^${project}[_-]" || true)
say "2. after down: containers left: ${left:-none}; volumes left: ${vols:-none}; networks left: ${nets:-none}"
[ -z "$left" ] && [ -z "$vols" ] && [ -z "$nets" ]
say "ok"
