#!/usr/bin/env bash
# The demo: build the whole platform with the Flyte workflow on embedded defaults, start
# Ray Serve on loopback and print a few searches. Idempotent: it rebuilds its workspace.
#   usage: scripts/demo.sh [workspace] [size] [port]
set -euo pipefail
cd "$(dirname "$0")/.."
WS=${1:-var/demo}
SIZE=${2:-20000}
PORT=${3:-8000}
VENV=.venv
export RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=$PWD

make -s stop >/dev/null 2>&1 || true
rm -rf "$WS"
mkdir -p "$WS" var

echo "== 1/3 Flyte workflow build_platform (size=$SIZE) -> $WS"
/usr/bin/time -v -o var/demo-build.time "$VENV/bin/pyflyte" run --overwrite-cache workflows/platform.py build_platform \
  --config "{\"workspace\": \"$WS\", \"data\": {\"n_jobs\": $SIZE}}"
grep -E "Elapsed \(wall|Maximum resident" var/demo-build.time | sed 's/^\s*/   /'

echo "== 2/3 Ray Serve on http://127.0.0.1:$PORT (log: var/serve.log)"
nohup "$VENV/bin/python" -m serving.app --workspace "$WS" --port "$PORT" >var/serve.log 2>&1 &
echo $! >var/serve.pid
for _ in $(seq 1 180); do
  if curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat var/serve.pid)" 2>/dev/null; then echo "serving died:"; tail -30 var/serve.log; exit 1; fi
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/healthz" && echo

echo "== 3/3 sample searches"
"$VENV/bin/python" scripts/sample_queries.py --workspace "$WS" --url "http://127.0.0.1:$PORT"

cat <<MSG

Ray Serve is running at http://127.0.0.1:$PORT (stop it with: make stop)
  curl -s -X POST http://127.0.0.1:$PORT/v1/search -H 'content-type: application/json' \\
       -d '{"query": "software developer", "member_id": 1, "k": 5}'
  curl -s http://127.0.0.1:$PORT/v1/members/1/recommendations?k=5
MSG
