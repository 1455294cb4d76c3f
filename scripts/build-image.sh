#!/usr/bin/env bash
# Builds the guest image (Debian cloud kernel, initramfs, bookworm root filesystem with envd)
# into ${WRENN_IMAGES_DIR:-/var/tmp/wrenn-cache/images}/<version>/ and points images/current at
# it. An unchanged input set is not rebuilt (a second run takes seconds).
#
# Environment: WRENN_IMAGES_DIR (where images go), WRENN_IMAGE_CACHE_DIR (downloads and the
# debootstrap tree; the agent's default is /var/tmp/wrenn-cache/image-build).
# Extra arguments go to `wrenn-agent image build` (e.g. --force, --mirror URL).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (debootstrap and the image's file ownership need it)" >&2
  exit 1
fi

ensure_build_deps
ensure_rust
# debootstrap builds the root filesystem, e2fsprogs packs it (mkfs.ext4 -d); busybox and the
# kernel come from .deb files the builder downloads and unpacks itself, so they are not
# installed. lz4 and cpio are the reference tools the builder's unit tests compare against;
# qemu-utils (qemu-img) makes the sandbox disks over the image.
apt_install debootstrap e2fsprogs dpkg xz-utils lz4 cpio qemu-utils

target="${CARGO_TARGET_DIR:-target}"
log "building envd (static, musl)"
cargo build --release --locked --target x86_64-unknown-linux-musl -p envd
log "building wrenn-agent"
cargo build --release --locked -p wrenn-agent

args=(--images-dir "${WRENN_IMAGES_DIR:-/var/tmp/wrenn-cache/images}"
  --envd "$target/x86_64-unknown-linux-musl/release/envd")
if [ -n "${WRENN_IMAGE_CACHE_DIR:-}" ]; then
  args+=(--cache-dir "$WRENN_IMAGE_CACHE_DIR")
fi
log "building the guest image"
exec "$target/release/wrenn-agent" image build "${args[@]}" "$@"
