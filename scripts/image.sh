#!/usr/bin/env bash
# The container image without a registry: a Debian bookworm base made by mmdebstrap from Debian's
# mirror, the binary built on this host copied in (deploy/image/Containerfile, the same contents as
# the Dockerfile's final stage), built and run by podman with runc. Everything podman keeps lives in
# .local/podman/ (git-ignored); podman, runc and mmdebstrap come from Debian's packages.
#   scripts/image.sh build [--profile release|dev]   build localhost/sqs-poller:latest (default:
#                                                    release; dev reuses the tests' build) and
#                                                    print its size
#   scripts/image.sh podman ARGS…                    podman with the project's settings, e.g.
#                                                    scripts/image.sh podman run --rm localhost/sqs-poller --version
#   scripts/image.sh save FILE                       the image as a docker-archive (docker load < FILE)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
state="$root/.local/podman"
image="${SQS_POLLER_IMAGE:-localhost/sqs-poller:latest}"
base_image="localhost/sqs-poller-base:bookworm"
# the base's packages: what the binary needs (libc, libgcc), CA certificates for TLS, a shell and
# coreutils for whoever debugs the container; no apt, no docs, no locales
base_packages="dpkg,perl-base,diffutils,libc-bin,base-files,base-passwd,dash,coreutils,sed,grep,findutils,libgcc-s1,ca-certificates"

need_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v objcopy >/dev/null || missing+=(binutils)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "image: installing ${missing[*]} from Debian's packages" >&2
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  mkdir -p "$state"
  # written only when it changes, and by a rename: the tests run podman side by side, and one
  # reading the file while another truncates it fails ("runroot must be set")
  local conf
  conf="$(printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"' "$state/storage" "$state/run")"
  if [ "$(cat "$state/storage.conf" 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" >"$state/storage.conf.$$"
    mv -f "$state/storage.conf.$$" "$state/storage.conf"
  fi
  export CONTAINERS_CONF="$root/deploy/image/containers.conf"
  export CONTAINERS_STORAGE_CONF="$state/storage.conf"
}

base() {
  podman image exists "$base_image" && return 0
  local tar="$state/base-bookworm.tar"
  if [ ! -s "$tar" ]; then
    echo "image: making the Debian bookworm base with mmdebstrap" >&2
    rm -rf "$tar.part"
    mmdebstrap --quiet --format=tar --variant=custom --include="$base_packages" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      bookworm "$tar.part" http://deb.debian.org/debian
    mv "$tar.part" "$tar"
  fi
  podman import --quiet "$tar" "$base_image" >/dev/null
}

build() {
  local profile=release
  while [ $# -gt 0 ]; do
    case "$1" in
      --profile) profile="$2"; shift 2 ;;
      *) echo "image build: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  local dir; [ "$profile" = dev ] && dir=debug || dir="$profile"
  (cd "$root" && cargo build --locked --profile "$profile" --bin sqs-poller --quiet)
  base
  local context; context="$(mktemp -d)"
  trap 'rm -rf "$context"' RETURN
  # the Dockerfile's build stage strips the same way: symbols stay (panics name their functions),
  # the line tables go
  objcopy --strip-debug "$root/target/$dir/sqs-poller" "$context/sqs-poller"
  cp "$root/deploy/container.toml" "$context/container.toml"
  podman build --quiet --format docker --file "$root/deploy/image/Containerfile" --tag "$image" "$context" >/dev/null
  local bytes; bytes="$(podman image inspect --format '{{.Size}}' "$image")"
  local binary; binary="$(stat -c %s "$context/sqs-poller")"
  echo "image: $image ($profile profile): $((bytes / 1000000)) MB, of which the binary $((binary / 1000000)) MB" \
    "and the Debian base $(( $(podman image inspect --format '{{.Size}}' "$base_image") / 1000000 )) MB"
}

command="${1:-}"; shift || true
case "$command" in
  build) need_tools; build "$@" ;;
  podman) need_tools; exec podman "$@" ;;
  save) need_tools; podman save --format docker-archive --output "$1" "$image" ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
