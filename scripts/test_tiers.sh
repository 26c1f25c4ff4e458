#!/bin/bash
# The whole suite, one tier at a time, with each tier's wall time and pytest summary:
#   bash scripts/test_tiers.sh [repo-dir]        (make test-tiers)
# Each tier is its own pytest run (the platform fixture is built per tier), so the sum is a
# few minutes longer than `make test`. Logs: var/test-tiers/<tier>.log.
set -u
cd "${1:-.}"
export PYTHONPATH="$PWD" RAY_USAGE_STATS_ENABLED=0
mkdir -p var/test-tiers
start=$(date +%s)
status=0
run() {  # name, pytest args...
  local name=$1; shift
  local t0; t0=$(date +%s)
  .venv/bin/pytest -q -p no:cacheprovider "$@" > "var/test-tiers/$name.log" 2>&1
  local rc=$?
  [ "$rc" = 0 ] || status=1
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s $(tail -1 "var/test-tiers/$name.log")"
}
run unit tests/unit -m "not slow"
run quality tests/quality
run pipelines tests/pipelines
run serving tests/serving
run e2e tests/e2e
echo "total $(( $(date +%s) - start ))s"
exit $status
