#!/usr/bin/env bash
# Memory of a pipeline holding MESSAGES in flight (issue 32): fills a queue on the test
# emulator (scripts/services.sh start), runs BIN against a worker that holds every batch 60 s,
# waits until MESSAGES are leased, and prints the resident memory (VmHWM/VmRSS). With
# PROFILER="heaptrack -o FILE" it runs under heaptrack (Debian's heaptrack), for
# `heaptrack_print -f FILE.zst --print-peaks 1`.
#   scripts/profile/in_flight.sh target/release/sqs-poller inflight 10000 25 1000 10
# usage: in_flight.sh BIN LABEL MESSAGES POLLERS CONCURRENCY BATCH [more [pipelines.lease] keys]
set -e
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$(mktemp -d)}"
BIN=$1; LABEL=$2; N=$3; POLLERS=$4; CONC=$5; BATCH=$6; EXTRA=${7:-}
cd "$HERE/../.."
. "$HERE/common.sh"
EP=${EP:-$(scripts/services.sh url)}  # EP=URL: another emulator (LocalStack: receipt handles of real length)
PORT=$((20000 + RANDOM % 20000))
.local/venv/bin/python "$HERE/slow_worker.py" $PORT 60 & WPID=$!
# a queue of 16 KiB messages (MAX_MESSAGE_SIZE), as busy_fleet.sh: the byte budget reserves ten of
# them per receive (920d5d2, where the memory work started, leased only 570 of 10,000 with 1 MiB)
URL=$(MAX_MESSAGE_SIZE=${MAX_MESSAGE_SIZE:-16384} .local/venv/bin/python "$HERE/fill_queue.py" $EP prof-$LABEL-$RANDOM $N)
MPORT=$((20000 + RANDOM % 10000))
{ service_toml 5; cat <<TOML; } > $OUT/$LABEL.toml
[[pipelines]]
name = "prof"
queue_url = "$URL"
[pipelines.pollers]
min = $POLLERS
max = $POLLERS
wait_time_secs = 1
[pipelines.batch]
size = $BATCH
window_ms = 0
[pipelines.target]
type = "http"
url = "http://127.0.0.1:$PORT/sqs"
max_concurrency = $CONC
timeout_secs = 300
[pipelines.lease]
max_outstanding = $N
$EXTRA
TOML
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test $PROFILER $BIN run --config $OUT/$LABEL.toml > $OUT/$LABEL.log 2>&1 & PID=$!
for i in $(seq 1 90); do
  sleep 1
  V=$(curl -s 127.0.0.1:$MPORT/metrics | grep '^sqs_poller_in_flight_messages' | awk '{print $2}')
  [ "${V:-0}" = "$N" ] && break
done
sleep 5
P=$(pgrep -f "run --config $OUT/$LABEL.toml" | tail -1)
echo "$LABEL: in flight ${V:-?} after ${i}s; $(memory_of $P)"
kill -TERM $P 2>/dev/null; for k in $(seq 1 60); do kill -0 $PID 2>/dev/null || break; sleep 1; done; kill -KILL $PID $P 2>/dev/null || true
kill $WPID 2>/dev/null || true
wait 2>/dev/null || true
