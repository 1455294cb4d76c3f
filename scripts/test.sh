#!/usr/bin/env bash
# Runs every check and test: formatting, clippy (warnings are errors), the static envd build, the
# guest image, and the whole test suite (including end-to-end tests that boot QEMU guests). Installs what it needs on a fresh Debian 12 machine (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_build_deps
ensure_rust

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "static envd (x86_64-unknown-linux-musl, release)"
cargo build --locked --release -p envd --target x86_64-unknown-linux-musl
envd_bin="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release/envd"
if ldd "$envd_bin" 2>&1 | grep -q '=>'; then
  echo "error: $envd_bin is dynamically linked" >&2
  exit 1
fi

log "guest image (cached; the first build takes a few minutes)"
ensure_vm_deps
WRENN_IMAGES_DIR="${WRENN_IMAGES_DIR:-/var/tmp/wrenn-cache/images}" ./scripts/build-image.sh
export WRENN_TEST_IMAGES_DIR="${WRENN_IMAGES_DIR:-/var/tmp/wrenn-cache/images}"
# VM tests fail (instead of skipping) when something they need is missing.
export WRENN_REQUIRE_VM_TESTS=1

log "PostgreSQL for the control plane's tests (a private cluster; one database per test)"
DATABASE_URL="$(ensure_postgres "${WRENN_TEST_PG_DIR:-/var/tmp/wrenn-test-pg}" "${WRENN_TEST_PG_PORT:-55432}" "-c fsync=off")"
export DATABASE_URL
# A real SMTP server for the email tests.
apt_install python3-aiosmtpd

log "tests"
WRENN_E2B_PYTHON="$(ensure_e2b_sdk)"
export WRENN_E2B_PYTHON
WRENN_SDK_PYTHON="$(ensure_wrenn_sdk)"
export WRENN_SDK_PYTHON
# End-to-end tests run the programs themselves (agent, control plane, CLI).
cargo build --workspace --bins --locked
# Large-file tests write to this directory (1 GiB at a time).
export WRENN_TEST_BIG_DIR="${WRENN_TEST_BIG_DIR:-/var/tmp}"
cargo test --workspace --locked -- --test-threads="${WRENN_TEST_THREADS:-4}"
