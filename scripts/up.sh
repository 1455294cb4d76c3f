#!/usr/bin/env bash
# Brings Wrenn up on this machine. Today that is envd, the guest agent, served on the host
# (the host agent, control plane and guest image follow); it prints how to reach it and keeps
# serving until interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_build_deps
ensure_rust

PORT="${WRENN_ENVD_PORT:-49983}"
log "building envd (release)"
cargo build --locked --release -p envd
bin="${CARGO_TARGET_DIR:-target}/release/envd"

cat <<MSG

envd is starting on port $PORT.
  health:   curl http://127.0.0.1:$PORT/health
  list:     curl -s -H 'content-type: application/json' -d '{}' http://127.0.0.1:$PORT/process.Process/List
  files:    curl -F file=@README.md "http://127.0.0.1:$PORT/files?path=/tmp/README.md"
WRENN_ENVD_URL=http://127.0.0.1:$PORT
Press Ctrl-C to stop.

MSG
exec "$bin" --isnotfc --port "$PORT"
