#!/usr/bin/env bash
# Benchmark: the time from `./scripts/up.sh` on a fresh data directory to a usable capsule (one
# that answered an exec). Prints the figure and the phases; stops everything it started.
# Builds are not timed separately: run it once to warm the cargo cache, then again to measure.
# Usage: scripts/bench-up.sh [DATA_DIR]   (default: a new directory under /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

dir="${1:-$(mktemp -d /var/tmp/wrenn-bench-up.XXXXXX)}"
rm -rf "$dir"
log_file="$dir.log"
export WRENN_DIR="$dir" WRENN_CP_LISTEN_ADDR=127.0.0.1:18090 WRENN_HOST_LISTEN_ADDR=127.0.0.1:15091 WRENN_PG_PORT=15434
start=$(date +%s.%N)
setsid ./scripts/up.sh >"$log_file" 2>&1 &
up_pid=$!
finish() {
  kill -INT -- "-$up_pid" 2>/dev/null || true
  wait "$up_pid" 2>/dev/null || true
  "${CARGO_TARGET_DIR:-target}/release/wrenn-agent" cleanup --data-dir "$dir" --images-dir "$dir/images" \
    --slots 1-32767 >/dev/null 2>&1 || true
}
trap finish EXIT
for _ in $(seq 1 3000); do
  grep -q '^WRENN_API_KEY=' "$log_file" 2>/dev/null && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$log_file" >&2; exit 1; }
  sleep 0.2
done
ready=$(date +%s.%N)
WRENN_BASE_URL="$(sed -n 's/^WRENN_BASE_URL=//p' "$log_file")"
WRENN_API_KEY="$(sed -n 's/^WRENN_API_KEY=//p' "$log_file")"
export WRENN_BASE_URL WRENN_API_KEY XDG_CONFIG_HOME="$dir.cli"
cli="${CARGO_TARGET_DIR:-target}/release/wrenn"
id="$("$cli" create --wait)"
"$cli" exec "$id" -- true
done_at=$(date +%s.%N)
"$cli" destroy "$id" >/dev/null
awk -v s="$start" -v r="$ready" -v d="$done_at" 'BEGIN {
  printf "up.sh to a usable capsule: %.1f s (platform ready after %.1f s, then create + first exec %.1f s)\n", d - s, r - s, d - r }'
