#!/usr/bin/env bash
# The benchmarks, on a fresh emulator of their own, with the release binary:
#   scripts/bench.sh        the suite, the seed scenario, protect, then memory (about twenty minutes)
#   scripts/bench.sh suite  benches/suite.rs: cost, sizes, burst, idle, hostile (about three
#                           minutes); writes bench/RESULTS.md, bench/results.json, bench/burst.svg
#   scripts/bench.sh seed   benches/seed.rs: config/seed-provisioned.toml at 50,000 messages a
#                           minute, its descent to min, idle fleets of 2,000 and 10,000 pollers
#                           (about ten minutes); writes bench/seed.json and the seed section of
#                           bench/RESULTS.md (the suite keeps that section when it rewrites the file)
#   scripts/bench.sh protect benches/protect.rs: static vs adaptive concurrency against a worker
#                           whose capacity changes mid-run (about three minutes); writes the
#                           concurrency section of bench/RESULTS.md (kept by the suite too)
#   scripts/bench.sh memory benches/memory.rs: peak resident memory of scripts/profile/'s busy,
#                           in-flight and idle runs against issue 32's targets (about three
#                           minutes; SQS_POLLER_BENCH_BIN_BEFORE=PATH runs an earlier build beside
#                           this one); writes the memory section of bench/RESULTS.md
#   scripts/bench.sh fleet  benches/fleet.rs: Redis round trips and CPU per batch of the fleet's
#                           shared budget, side by side with none (about a minute); writes the
#                           fleet section of bench/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."
export SQS_POLLER_SKIP_LOCALSTACK=1   # only the tests need it
scripts/install-services.sh --bench
export SQS_POLLER_RUN_DIR="$PWD/.local/run-bench"
scripts/services.sh stop
trap 'scripts/services.sh stop' EXIT
SQS_POLLER_BENCH_ENDPOINT="$(scripts/services.sh start)"
export SQS_POLLER_BENCH_ENDPOINT
export SQS_POLLER_TEST_REDIS="$(cat "$SQS_POLLER_RUN_DIR/redis.url")"
# the seed scenario reaches the emulator the way the tests do
export SQS_POLLER_TEST_ENDPOINT="$SQS_POLLER_BENCH_ENDPOINT"
case "${1:-all}" in
    suite) cargo bench --locked --bench suite ;;
    seed) cargo bench --locked --bench seed ;;
    protect) cargo bench --locked --bench protect ;;
    memory) cargo bench --locked --bench memory ;;
    fleet) cargo bench --locked --bench fleet ;;
    all) cargo bench --locked --bench suite && cargo bench --locked --bench seed && cargo bench --locked --bench protect \
        && cargo bench --locked --bench memory && cargo bench --locked --bench fleet ;;
    *) echo "usage: scripts/bench.sh [suite|seed|protect|memory|fleet]" >&2; exit 2 ;;
esac
