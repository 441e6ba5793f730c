#!/usr/bin/env bash
# The demo: installs and starts the local SQS emulator, builds sqs-poller, runs config/demo.toml
# against a burst of messages and the example worker (examples/worker.py), and prints what happened.
set -euo pipefail
cd "$(dirname "$0")/.."
export SQS_POLLER_SKIP_LOCALSTACK=1   # only the tests need it
if ! scripts/services.sh url >/dev/null 2>&1; then
  scripts/services.sh start >/dev/null
  trap 'scripts/services.sh stop' EXIT
fi
DEMO_ENDPOINT="$(scripts/services.sh url)"
export DEMO_ENDPOINT
echo "demo: SQS emulator (fauxqs) at $DEMO_ENDPOINT; building sqs-poller…"
cargo build --release --locked --quiet
python3 scripts/demo.py
