#!/usr/bin/env bash
# The manual: checks that the plots match their data (scripts/plots.py), builds the book (docs/,
# mdBook) into target/book and checks every link of it and of the README (scripts/check-links.py). mdBook is installed into .local/mdbook from crates.io on
# first use (no default features: no server, no watcher; about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.5.4
mdbook=".local/mdbook/bin/mdbook"
if ! "$mdbook" --version 2>/dev/null | grep -q "v$version"; then
  echo "docs: installing mdbook $version into .local/mdbook" >&2
  cargo install --quiet --locked --no-default-features --root .local/mdbook "mdbook@$version"
fi
python3 scripts/plots.py --check
"$mdbook" build docs 2>&1 | grep -v '^\s*$' >&2
python3 scripts/check-links.py
