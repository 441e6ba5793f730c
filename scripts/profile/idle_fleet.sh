#!/usr/bin/env bash
# Memory of an idle fleet (issue 32): PIPELINES pipelines of 200 pollers each long-polling an
# empty queue on the test emulator (the seed's batch, room for every poller's receive: as
# benches/seed.rs measures it) (scripts/services.sh start); prints the resident memory once
# the whole fleet is polling and has sat idle for 15 s. PROFILER="heaptrack -o FILE" as in
# in_flight.sh.
#   scripts/profile/idle_fleet.sh target/release/sqs-poller idle 50
# usage: idle_fleet.sh BIN LABEL PIPELINES
set -e
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$(mktemp -d)}"
BIN=$1; LABEL=$2; NP=$3
cd "$HERE/../.."
. "$HERE/common.sh"
EP=${EP:-$(scripts/services.sh url)}  # EP=URL: another emulator (LocalStack: receipt handles of real length)
MPORT=$((20000 + RANDOM % 10000))
service_toml 30 > $OUT/$LABEL.toml
for i in $(seq 1 $NP); do
  URL=$(MAX_MESSAGE_SIZE=16384 .local/venv/bin/python "$HERE/fill_queue.py" $EP idle-$LABEL-$i-$RANDOM 0)
  cat >> $OUT/$LABEL.toml <<TOML
[[pipelines]]
name = "idle$i"
queue_url = "$URL"
[pipelines.pollers]
min = 200
max = 200
[pipelines.batch]
size = 50
window_ms = 2000
[pipelines.target]
type = "http"
url = "http://127.0.0.1:9/unused"
max_concurrency = 100
TOML
done
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test $PROFILER $BIN run --config $OUT/$LABEL.toml > $OUT/$LABEL.log 2>&1 & PID=$!
for i in $(seq 1 120); do
  sleep 1
  kill -0 $PID 2>/dev/null || { tail -3 $OUT/$LABEL.log; exit 1; }
  V=$(curl -s 127.0.0.1:$MPORT/metrics | grep '^sqs_poller_pollers{' | awk '{s+=$2} END {print s}')
  P=$(pgrep -f "^$BIN run --config $OUT/$LABEL.toml" | tail -1)
  FDS=$(ls /proc/${P:-$PID}/fd 2>/dev/null | wc -l)
  [ "${V:-0}" = "$((NP * 200))" ] && [ "$FDS" -ge "$((NP * 200))" ] && break
done
sleep 15
FDS=$(ls /proc/$P/fd | wc -l)
echo "$LABEL: ${V:-?} pollers after ${i}s, $FDS descriptors; $(memory_of $P)"
kill -TERM $P 2>/dev/null; for k in $(seq 1 60); do kill -0 $PID 2>/dev/null || break; sleep 1; done; kill -KILL $PID 2>/dev/null || true
wait 2>/dev/null || true
