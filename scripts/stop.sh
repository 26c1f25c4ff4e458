#!/usr/bin/env bash
# Stop exactly the server `make demo` started: the PID in var/serve.pid, nothing found by name
# (other people's servers on a shared machine are not ours to stop). SIGTERM lets serving.app
# shut Serve and its own local Ray down; SIGKILL only if it has not exited after 60 s.
set -uo pipefail
cd "$(dirname "$0")/.."
PIDFILE=${1:-var/serve.pid}
[ -f "$PIDFILE" ] || { echo "no $PIDFILE: nothing to stop"; exit 0; }
PID=$(cat "$PIDFILE")
if ! [[ "$PID" =~ ^[0-9]+$ ]] || ! kill -0 "$PID" 2>/dev/null; then
  echo "server $PID is not running"; rm -f "$PIDFILE"; exit 0
fi
# A recycled PID could belong to anything: only signal our own serving process.
# (the demo starts it as `ebr serve`, which runs serving.app in the same process)
if ! tr '\0' ' ' <"/proc/$PID/cmdline" 2>/dev/null | grep -qE "serving\.app|bin/ebr serve "; then
  echo "PID $PID is not our server (stale $PIDFILE); not stopping it"; rm -f "$PIDFILE"; exit 0
fi
kill -TERM "$PID"
for _ in $(seq 1 60); do
  kill -0 "$PID" 2>/dev/null || { rm -f "$PIDFILE"; echo "stopped server $PID"; exit 0; }
  sleep 1
done
echo "server $PID ignored SIGTERM for 60 s; killing it"
kill -KILL "$PID" 2>/dev/null
rm -f "$PIDFILE"
