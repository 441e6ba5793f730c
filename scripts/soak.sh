#!/usr/bin/env bash
# The soak run (benches/soak.rs; not in CI): the release build for SOAK_MINUTES (default 30) at
# SOAK_RATE messages/s (default 100) while a fault-injecting proxy cycles faults on the SQS and
# worker links every two minutes; records RSS, open descriptors and CPU every 10 s and writes
# bench/soak.csv, bench/soak.svg and bench/SOAK.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export SQS_POLLER_SKIP_LOCALSTACK=1   # only the tests need it
scripts/install-services.sh --bench
export SQS_POLLER_RUN_DIR="$PWD/.local/run-soak"
scripts/services.sh stop
trap 'scripts/services.sh stop' EXIT
SQS_POLLER_TEST_ENDPOINT="$(scripts/services.sh start)"
export SQS_POLLER_TEST_ENDPOINT
cargo bench --locked --bench soak "$@"
