#!/usr/bin/env bash
# Makes the Debian bookworm base images the Dockerfile starts from,
# debian:bookworm and debian:bookworm-slim, in the local podman storage when
# they are not there yet: where no registry is reachable they cannot be
# pulled. Both are one minimal Debian (debootstrap --variant=minbase) from
# Debian's package mirror. Needs root, podman and debootstrap
# (scripts/install-deps.sh).
set -euo pipefail
mirror=${OUTBOXD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists debian:bookworm && podman image exists debian:bookworm-slim; then
  exit 0
fi
work=$(mktemp -d /tmp/outboxd-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
tar -C "$work/rootfs" -c . | podman import --change 'CMD ["bash"]' - debian:bookworm >/dev/null
podman tag debian:bookworm debian:bookworm-slim
echo "made debian:bookworm and debian:bookworm-slim ($(podman image inspect --format '{{.Size}}' debian:bookworm) bytes)" >&2
