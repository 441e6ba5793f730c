#!/usr/bin/env bash
# cargo deny: licenses, bans and sources of the dependency tree, offline (deny.toml). Installs
# cargo-deny into .local/cargo-deny (git-ignored) the first time: about two minutes to build.
# The advisory database lives on GitHub, which this machine cannot reach: not checked here.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.20.2
BIN=.local/cargo-deny/bin/cargo-deny
if ! [ -x "$BIN" ] || ! "$BIN" --version | grep -q "$VERSION"; then
  echo "installing cargo-deny $VERSION into .local/cargo-deny" >&2
  cargo install --quiet --locked cargo-deny --version "$VERSION" --root .local/cargo-deny
fi
exec "$BIN" --offline --locked check licenses bans sources "$@"
