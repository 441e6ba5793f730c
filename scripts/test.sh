#!/usr/bin/env bash
# Runs every test: installs and starts the local services (scripts/services.sh: fauxqs, moto,
# LocalStack, into .local/), builds the container image with podman (scripts/image.sh, from the
# tests' own build of the binary), then `cargo test`. Extra arguments go to cargo test (e.g. `scripts/test.sh --test e2e delivery::`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! scripts/services.sh url >/dev/null 2>&1; then
  trap 'scripts/services.sh stop' EXIT
fi
scripts/services.sh start >/dev/null   # idempotent: installs, and starts what is not running
SQS_POLLER_TEST_ENDPOINT="$(scripts/services.sh url)"
export SQS_POLLER_TEST_ENDPOINT
echo "SQS emulator: $SQS_POLLER_TEST_ENDPOINT" >&2
# tests/e2e/image.rs runs the image: built from the dev profile, the build the tests share
scripts/image.sh build --profile dev >&2
# every failing test binary is reported, not only the first
cargo test --locked --no-fail-fast "$@"
