#!/usr/bin/env bash
# The byte budget end to end (issue 32): MESSAGES bodies of BODY_BYTES queued on the test emulator
# (scripts/services.sh start), a pipeline of up to POLLERS pollers (batch 50, window 2 s,
# max_concurrency CONCURRENCY) against a worker that holds every batch DELAY seconds, the default
# budget (lease.max_outstanding_bytes, 256 MiB) unless EXTRA sets one. Samples the process's
# resident memory and sqs_poller_in_flight_bytes every 0.2 s until every message is deleted;
# prints their peaks and how many messages the worker was given (all, each once).
#   scripts/profile/large_bodies.sh target/release/sqs-poller issue 1000 524288 200 500 20
#   scripts/profile/large_bodies.sh target/release/sqs-poller seed 500 1048000 2000 5000 20
# usage: large_bodies.sh BIN LABEL MESSAGES BODY_BYTES POLLERS CONCURRENCY DELAY [more [pipelines.lease] keys]
set -e
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-$(mktemp -d)}"
BIN=$1; LABEL=$2; N=$3; SIZE=$4; POLLERS=$5; CONC=$6; DELAY=$7; EXTRA=${8:-}
cd "$HERE/../.."
. "$HERE/common.sh"
EP=${EP:-$(scripts/services.sh url)}  # EP=URL: another emulator (LocalStack: receipt handles of real length)
PORT=$((20000 + RANDOM % 10000))
: > $OUT/$LABEL.ids
IDS_FILE=$OUT/$LABEL.ids .local/venv/bin/python "$HERE/slow_worker.py" $PORT $DELAY & WPID=$!
URL=$(.local/venv/bin/python "$HERE/fill_queue.py" $EP large-$LABEL-$RANDOM $N $SIZE)
MPORT=$((20000 + RANDOM % 10000))
{ service_toml 60; cat <<TOML; } > $OUT/$LABEL.toml
[[pipelines]]
name = "large"
queue_url = "$URL"
[pipelines.pollers]
min = 1
max = $POLLERS
visibility_timeout_secs = 120
[pipelines.batch]
size = 50
window_ms = 2000
[pipelines.target]
type = "http"
url = "http://127.0.0.1:$PORT/sqs"
max_concurrency = $CONC
timeout_secs = 300
[pipelines.lease]
$EXTRA
TOML
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test $BIN run --config $OUT/$LABEL.toml > $OUT/$LABEL.log 2>&1 & PID=$!
PEAK_BYTES=0; PEAK_RSS=0; BUDGET=?
for i in $(seq 1 3000); do
  sleep 0.2
  kill -0 $PID 2>/dev/null || { tail -3 $OUT/$LABEL.log; exit 1; }
  RSS=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
  [ "$RSS" -gt "$PEAK_RSS" ] && PEAK_RSS=$RSS
  M=$(curl -s 127.0.0.1:$MPORT/metrics)
  B=$(echo "$M" | awk '/^sqs_poller_in_flight_bytes\{/ {printf "%d", $2}')
  [ "${B:-0}" -gt "$PEAK_BYTES" ] && PEAK_BYTES=$B
  BUDGET=$(echo "$M" | awk '/^sqs_poller_max_outstanding_bytes\{/ {printf "%d", $2}')
  DONE=$(echo "$M" | awk '/^sqs_poller_messages_deleted_total\{/ {printf "%d", $2}')
  [ "${DONE:-0}" = "$N" ] && break
done
HWM=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
GIVEN=$(wc -l < $OUT/$LABEL.ids); ONCE=$(sort -u $OUT/$LABEL.ids | wc -l)
echo "$LABEL: $N × $SIZE B deleted ${DONE:-0} in $(echo "$i * 0.2" | bc) s; in-flight bytes peak $((PEAK_BYTES >> 20)) MiB of a $((BUDGET >> 20)) MiB budget; resident peak $((HWM >> 10)) MiB (sampled $((PEAK_RSS >> 10)) MiB); worker given $GIVEN, distinct $ONCE"
kill -TERM $PID 2>/dev/null; for k in $(seq 1 60); do kill -0 $PID 2>/dev/null || break; sleep 1; done; kill -KILL $PID 2>/dev/null || true
kill $WPID 2>/dev/null || true
wait 2>/dev/null || true
