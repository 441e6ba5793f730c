#!/usr/bin/env bash
# The demo: installs and starts the local SQS emulator (fauxqs alone, into .local/), builds
# sqs-poller, runs config/demo.toml against a burst of messages and the example worker
# (examples/worker.py), and prints what happened: the fleet of pollers growing to drain the burst
# and coming back to min, the failures retried and dead-lettered, a clean stop.
# The build is the dev profile (what the tests build too): the demo shows behaviour, not speed;
# `cargo build --release` is the one to deploy and measure.
set -euo pipefail
cd "$(dirname "$0")/.."
export SQS_POLLER_SERVICES=fauxqs   # the tests' other services are not needed here
if ! scripts/services.sh url >/dev/null 2>&1; then
  scripts/services.sh start >/dev/null
  trap 'scripts/services.sh stop' EXIT
fi
DEMO_ENDPOINT="$(scripts/services.sh url)"
export DEMO_ENDPOINT
echo "demo: SQS emulator (fauxqs) at $DEMO_ENDPOINT; building sqs-poller…"
cargo build --locked --quiet --bin sqs-poller
DEMO_BINARY="$PWD/target/debug/sqs-poller" python3 scripts/demo.py
