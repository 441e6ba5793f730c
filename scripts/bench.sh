#!/usr/bin/env bash
# The benchmark suite (benches/suite.rs): starts a fresh emulator of its own, builds the release
# binary and runs every measurement in one go; prints a table and writes bench/RESULTS.md,
# bench/results.json and bench/burst.svg. Takes about three minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export SQS_POLLER_SKIP_LOCALSTACK=1   # only the tests need it
scripts/install-services.sh --bench
export SQS_POLLER_RUN_DIR="$PWD/.local/run-bench"
scripts/services.sh stop
trap 'scripts/services.sh stop' EXIT
SQS_POLLER_BENCH_ENDPOINT="$(scripts/services.sh start)"
export SQS_POLLER_BENCH_ENDPOINT
cargo bench --locked --bench suite "$@"
