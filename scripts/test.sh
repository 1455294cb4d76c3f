#!/usr/bin/env bash
# Runs every check and test: formatting, clippy (warnings are errors), the static envd build, and
# the whole test suite. Installs what it needs on a fresh Debian 12 machine (run as root).
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

log "tests"
WRENN_E2B_PYTHON="$(ensure_e2b_sdk)"
export WRENN_E2B_PYTHON
# Large-file tests write to this directory (1 GiB at a time).
export WRENN_TEST_BIG_DIR="${WRENN_TEST_BIG_DIR:-/var/tmp}"
cargo test --workspace --locked -- --test-threads="${WRENN_TEST_THREADS:-4}"
