#!/usr/bin/env bash
# Runs every test: installs and starts the local SQS emulator (fauxqs, into .local/), then
# `cargo test`. Extra arguments go to cargo test (e.g. `scripts/test.sh --test e2e delivery::`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! scripts/services.sh url >/dev/null 2>&1; then
  trap 'scripts/services.sh stop' EXIT
fi
scripts/services.sh start >/dev/null   # idempotent: installs, and starts what is not running
SQS_POLLER_TEST_ENDPOINT="$(scripts/services.sh url)"
export SQS_POLLER_TEST_ENDPOINT
echo "SQS emulator: $SQS_POLLER_TEST_ENDPOINT" >&2
# every failing test binary is reported, not only the first
cargo test --locked --no-fail-fast "$@"
