#!/usr/bin/env bash
# The demo: build the whole platform with the Flyte workflow on embedded defaults, start
# Ray Serve on loopback and print a few searches. Idempotent: it rebuilds its workspace.
#   usage: scripts/demo.sh [workspace] [size] [port] [profile]
# Profile "prod" puts Feast's online store on a 3-node Redis Cluster started on loopback
# (feature_repo.redis_cluster; stopped by make stop): every step then publishes to and reads
# from it (EBR_FEAST_CONFIG), and the workspace remembers it for later `ebr serve` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
WS=${1:-var/demo}
SIZE=${2:-20000}
PORT=${3:-8000}
PROFILE=${4:-local}
VENV=.venv
export RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=$PWD

make -s stop >/dev/null 2>&1 || true
rm -rf "$WS"
mkdir -p "$WS" var
case "$PROFILE" in
  local) ;;
  prod)
    echo "== 0/4 online store: a 3-node Redis Cluster on loopback (var/redis-cluster)"
    REDIS_CLUSTER_NODES=$("$VENV/bin/python" -m feature_repo.redis_cluster start --folder var/redis-cluster)
    export REDIS_CLUSTER_NODES EBR_FEAST_CONFIG=feature_store.redis_cluster.yaml
    echo "   REDIS_CLUSTER_NODES=$REDIS_CLUSTER_NODES (export it for later ebr serve runs)"
    ;;
  *) echo "PROFILE must be local or prod, not $PROFILE"; exit 2 ;;
esac

echo "== 1/4 Flyte workflow build_platform (size=$SIZE) -> $WS"
/usr/bin/time -v -o var/demo-build.time "$VENV/bin/pyflyte" run --overwrite-cache workflows/platform.py build_platform \
  --config "{\"workspace\": \"$WS\", \"data\": {\"n_jobs\": $SIZE}}"
grep -E "Elapsed \(wall|Maximum resident" var/demo-build.time | sed 's/^\s*/   /'

echo "== 2/4 Ray Serve on http://127.0.0.1:$PORT (log: var/serve.log)"
nohup "$VENV/bin/ebr" serve --workspace "$WS" --port "$PORT" >var/serve.log 2>&1 &
echo $! >var/serve.pid
for _ in $(seq 1 180); do
  if curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat var/serve.pid)" 2>/dev/null; then echo "serving died:"; tail -30 var/serve.log; exit 1; fi
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" && echo

echo "== 3/4 sample searches (the relevance page: http://127.0.0.1:$PORT/)"
"$VENV/bin/ebr" release list --workspace "$WS"
"$VENV/bin/ebr" search "registerd nurse" --k 5 --url "http://127.0.0.1:$PORT"
"$VENV/bin/python" scripts/sample_queries.py --workspace "$WS" --url "http://127.0.0.1:$PORT"

echo "== 4/4 streaming: a loopback Redis + the Beam streaming job (log: $WS/stream/jobs/embedder.log)"
"$VENV/bin/pyflyte" run workflows/streaming.py start_streaming --workspace "$WS"
"$VENV/bin/python" scripts/stream_demo.py --workspace "$WS" --url "http://127.0.0.1:$PORT"

cat <<MSG

Ray Serve is running at http://127.0.0.1:$PORT (the relevance page: open it in a browser),
and the streaming job over $WS (stop both with: make stop). More live traffic, a search:
  $VENV/bin/ebr stream produce --workspace $WS --live --seconds 30
  $VENV/bin/ebr search "software developer" --member 1 --k 5 --url http://127.0.0.1:$PORT
  curl -s -X POST http://127.0.0.1:$PORT/v1/search -H 'content-type: application/json' \\
       -d '{"query": "software developer", "member_id": 1, "k": 5}'
  curl -s http://127.0.0.1:$PORT/v1/members/1/recommendations?k=5
MSG
