#!/usr/bin/env bash
# A CPU flame graph of sqs-poller draining 50,000 messages at batch 10 (the drain of
# benches/suite.rs with SQS_POLLER_BENCH_ONLY=drain): builds sqs-poller with frame pointers into
# target/fp, records it with perf at 999 Hz, folds the stacks with inferno (installed into
# .local/tools on first use). Writes bench/flamegraph-drain-batch10.svg. Takes about 5 minutes
# the first time, 1 minute after.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v perf >/dev/null; then
  echo "perf is not installed: apt-get install linux-perf (Debian) or linux-tools-generic (Ubuntu)" >&2
  exit 1
fi
tools="$PWD/.local/tools"
if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
  cargo install --locked --quiet --root "$tools" inferno@0.12.8
fi
RUSTFLAGS="-C force-frame-pointers=yes" CARGO_TARGET_DIR="$PWD/target/fp" cargo build --release --locked --bin sqs-poller

export SQS_POLLER_SKIP_LOCALSTACK=1
scripts/install-services.sh --bench
export SQS_POLLER_RUN_DIR="$PWD/.local/run-bench"
scripts/services.sh stop
out="$(mktemp -d)"
trap 'scripts/services.sh stop; rm -rf "$out"' EXIT
SQS_POLLER_BENCH_ENDPOINT="$(scripts/services.sh start)"
export SQS_POLLER_BENCH_ENDPOINT
SQS_POLLER_BENCH_ONLY=drain \
  SQS_POLLER_BENCH_BIN="$PWD/target/fp/release/sqs-poller" \
  SQS_POLLER_BENCH_WRAP="perf record -F 999 -g -o $out/perf.data" \
  cargo bench --locked --bench suite
perf script -i "$out/perf.data" 2>/dev/null | "$tools/bin/inferno-collapse-perf" > "$out/folded"
"$tools/bin/inferno-flamegraph" --title "sqs-poller: drain of 50,000 messages, batch 10, no-op HTTP worker ($(git rev-parse --short HEAD))" \
  --width 1600 < "$out/folded" > bench/flamegraph-drain-batch10.svg
echo "wrote bench/flamegraph-drain-batch10.svg"
