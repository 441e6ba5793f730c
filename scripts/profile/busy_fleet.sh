#!/usr/bin/env bash
# Memory of the seed's fleet draining a backlog (issue 32): MESSAGES queued before the start on
# the test emulator (scripts/services.sh start), the seed's pipeline (pollers 20..2,000, batch 50,
# window 2 s, max_concurrency 5,000) against a worker that answers each batch in 20 ms; prints
# the peak resident memory, the peak fleet and the time to drain. The queue's MaximumMessageSize
# is 16 KiB (MAX_MESSAGE_SIZE): with 1 MiB the default byte budget lets 25 receives run at once,
# and the fleet never grows. PROFILER="heaptrack -o FILE" as in in_flight.sh.
#   scripts/profile/busy_fleet.sh target/release/sqs-poller busy 20000
# usage: busy_fleet.sh BIN LABEL MESSAGES
set -e
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$(mktemp -d)}"
BIN=$1; LABEL=$2; N=$3
cd "$HERE/../.."
. "$HERE/common.sh"
EP=${EP:-$(scripts/services.sh url)}  # EP=URL: another emulator (LocalStack: receipt handles of real length)
PORT=$((20000 + RANDOM % 10000))
.local/venv/bin/python "$HERE/slow_worker.py" $PORT 0.02 & WPID=$!
URL=$(MAX_MESSAGE_SIZE=${MAX_MESSAGE_SIZE:-16384} .local/venv/bin/python "$HERE/fill_queue.py" $EP busy-$LABEL-$RANDOM $N)
MPORT=$((20000 + RANDOM % 10000))
{ service_toml 30; cat <<TOML; } > $OUT/$LABEL.toml
[[pipelines]]
name = "busy"
queue_url = "$URL"
[pipelines.pollers]
min = 20
max = 2000
visibility_timeout_secs = 60
[pipelines.batch]
size = 50
window_ms = 2000
[pipelines.target]
type = "http"
url = "http://127.0.0.1:$PORT/sqs"
max_concurrency = 5000
TOML
START=$(date +%s.%N)
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test $PROFILER $BIN run --config $OUT/$LABEL.toml > $OUT/$LABEL.log 2>&1 & PID=$!
PEAK=0
for i in $(seq 1 600); do
  sleep 0.5
  kill -0 $PID 2>/dev/null || { tail -3 $OUT/$LABEL.log; exit 1; }
  M=$(curl -s 127.0.0.1:$MPORT/metrics)
  POLLERS=$(echo "$M" | grep '^sqs_poller_pollers{' | awk '{print $2}')
  DONE=$(echo "$M" | grep '^sqs_poller_messages_deleted_total{' | awk '{print $2}')
  [ "${POLLERS%.*}" -gt "$PEAK" ] 2>/dev/null && PEAK=${POLLERS%.*}
  [ "${DONE:-0}" = "$N" ] && break
done
END=$(date +%s.%N)
P=$(pgrep -f "^$BIN run --config $OUT/$LABEL.toml" | tail -1)
echo "$LABEL: $N messages deleted ${DONE:-?} in $(echo "$END - $START" | bc) s, peak pollers $PEAK; $(memory_of $P)"
kill -TERM $P 2>/dev/null; for k in $(seq 1 60); do kill -0 $PID 2>/dev/null || break; sleep 1; done; kill -KILL $PID $P 2>/dev/null || true
kill $WPID 2>/dev/null || true
wait 2>/dev/null || true
