#!/usr/bin/env bash
# Build the four run-time images (make images): semcache-embedder, semcache-cache-server,
# semcache-gateway and semcache-redis, tagged $IMAGE_TAG (default latest), from one Dockerfile.
#
#   BASE_IMAGE   the image every stage starts from (Debian with python3 and venv). Unset: a
#                Debian bookworm base made here with debootstrap (no registry needed), kept as
#                localhost/semcache-base:bookworm. python:3.11-slim-bookworm where Docker Hub is
#                reachable.
#   MODEL_DIR    the exported model baked into the embedder image (default models/default).
#   ENGINE       podman (buildah) or docker; default: podman when installed, else docker, else
#                podman and buildah are installed from Debian's packages (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE_TAG=${IMAGE_TAG:-latest}
MODEL_DIR=${MODEL_DIR:-models/default}
BASE_DEFAULT=localhost/semcache-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$BASE_DEFAULT}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/containers/containers.conf}

log() { printf '[images] %s\n' "$*"; }
sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ -z "${ENGINE:-}" ]; then
  if command -v buildah >/dev/null && command -v podman >/dev/null; then ENGINE=podman
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
  else ENGINE=podman; fi
fi
if [ "$ENGINE" = podman ] && ! { command -v buildah >/dev/null && command -v podman >/dev/null; }; then
  log "installing podman and buildah (Debian packages)"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc >/dev/null
fi

image_exists() {
  if [ "$ENGINE" = podman ]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}

# The base image, made from Debian's archive when no registry is at hand.
if [ "$BASE_IMAGE" = "$BASE_DEFAULT" ] && ! image_exists "$BASE_IMAGE"; then
  command -v debootstrap >/dev/null || {
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  root=$(mktemp -d /var/tmp/semcache-base.XXXXXX)
  trap 'sudo_if_needed rm -rf "$root"' EXIT
  log "making $BASE_IMAGE with debootstrap (Debian bookworm, python3)"
  sudo_if_needed debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
  sudo_if_needed rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/locale
  sudo_if_needed tar -C "$root" -c . | $ENGINE import -q --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
fi

# What the images copy from the host: generated stubs (make proto) and the model (make model).
[ -f protos/semcache/cache/v1/cache_pb2.py ] || { echo "no generated stubs: run make proto" >&2; exit 1; }
[ -f "$MODEL_DIR/semcache-model.json" ] || { echo "no exported model in $MODEL_DIR: run make model" >&2; exit 1; }

build() {  # build TARGET IMAGE
  local started=$SECONDS
  if [ "$ENGINE" = podman ]; then
    local ca=()
    # A TLS-intercepting proxy's CA, trusted on this host, lent to pip for the build only.
    for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
      if [ -f "$bundle" ]; then ca=(-v "$bundle:/host-ca.crt:ro"); break; fi
    done
    buildah bud --isolation chroot --layers --format docker -q "${ca[@]}" \
      --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg MODEL_DIR="$MODEL_DIR" \
      --target "$1" -t "localhost/$2:$IMAGE_TAG" . >/dev/null
  else
    docker build -q --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg MODEL_DIR="$MODEL_DIR" \
      --target "$1" -t "localhost/$2:$IMAGE_TAG" . >/dev/null
  fi
  log "localhost/$2:$IMAGE_TAG built in $((SECONDS - started)) s"
}

build embedder semcache-embedder
build cache_server semcache-cache-server
build gateway semcache-gateway
build redis semcache-redis
$ENGINE images --filter reference='*semcache-*' --format '{{.Repository}}:{{.Tag}} {{.Size}}'
