#!/usr/bin/env bash
# Brings the whole Wrenn platform up on this machine: a private PostgreSQL (unless DATABASE_URL
# is set), the control plane, and a host agent that registers itself with it and boots microVM
# sandboxes (QEMU here; Firecracker where its binary exists). Installs what is missing, builds
# the guest image if absent, creates an admin user and an API key, prints how to reach it, and
# keeps serving until interrupted (Ctrl-C stops everything; sandboxes are paused and found again next time).
# Configuration: environment variables or an env file (see .env.example); must run as root
# (network namespaces, TAP devices).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" != 0 ]; then
  echo "error: run as root: the host agent creates network namespaces and TAP devices" >&2
  exit 1
fi

# An env file: $WRENN_ENV_FILE, else ./.env when present. Variables already set win.
env_file="${WRENN_ENV_FILE:-.env}"
if [ -f "$env_file" ]; then
  log "reading $env_file"
  while IFS='=' read -r key value; do
    case "$key" in '' | \#*) continue ;; esac
    [ -n "${!key:-}" ] || export "$key=$value"
  done <"$env_file"
fi

ensure_build_deps
ensure_rust
ensure_vm_deps
apt_install postgresql-client-15 curl

export WRENN_DIR="${WRENN_DIR:-/var/lib/wrenn}"
export WRENN_IMAGES_DIR="${WRENN_IMAGES_DIR:-$WRENN_DIR/images}"
CP_LISTEN="${WRENN_CP_LISTEN_ADDR:-127.0.0.1:8080}"
AGENT_LISTEN="${WRENN_HOST_LISTEN_ADDR:-127.0.0.1:50051}"
cp_port="${CP_LISTEN##*:}"
cp_host="${CP_LISTEN%:*}"
[ "$cp_host" = "0.0.0.0" ] && cp_host=127.0.0.1
base_url="${CP_PUBLIC_URL:-http://$cp_host:$cp_port}"
mkdir -p "$WRENN_DIR"
# Traversable (PostgreSQL runs as its own user); secrets inside are 0600.
chmod 711 "$WRENN_DIR"

log "guest image"
./scripts/build-image.sh

log "building the control plane, host agent and CLI (release)"
cargo build --locked --release -p wrenn-control-plane -p wrenn-agent -p wrenn-cli
target="${CARGO_TARGET_DIR:-target}/release"

private_pg=""
if [ -z "${DATABASE_URL:-}" ]; then
  private_pg="$WRENN_DIR/postgres"
  admin_url="$(ensure_postgres "$private_pg" "${WRENN_PG_PORT:-5433}")"
  psql -q "$admin_url" -tc "SELECT 1 FROM pg_database WHERE datname = 'wrenn'" | grep -q 1 ||
    psql -q "$admin_url" -c "CREATE DATABASE wrenn" >/dev/null
  export DATABASE_URL="${admin_url%/postgres}/wrenn"
fi
if [ -z "${JWT_SECRET:-}" ]; then
  [ -s "$WRENN_DIR/jwt-secret" ] || (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$WRENN_DIR/jwt-secret")
  JWT_SECRET="$(cat "$WRENN_DIR/jwt-secret")"
  export JWT_SECRET
fi
export CP_PUBLIC_URL="$base_url"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$private_pg" ]; then
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$private_pg" -m fast stop >/dev/null 2>&1 || true
  fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

log "starting the control plane on $CP_LISTEN"
"$target/wrenn-cp" serve --listen "$CP_LISTEN" --data-dir "$WRENN_DIR" &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "$base_url/health" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "error: the control plane exited; see $WRENN_DIR/logs/control-plane.log" >&2; exit 1; }
  sleep 0.2
done

bootstrap_args=(--email "${WRENN_ADMIN_EMAIL:-admin@wrenn.local}")
agent_args=()
if [ ! -s "$WRENN_DIR/host-credentials.json" ]; then
  bootstrap_args+=(--register-host)
fi
bootstrap_out="$("$target/wrenn-cp" bootstrap "${bootstrap_args[@]}")"
api_key="$(sed -n 's/^WRENN_API_KEY=//p' <<<"$bootstrap_out")"
host_token="$(sed -n 's/^WRENN_HOST_TOKEN=//p' <<<"$bootstrap_out")"
admin_password="$(sed -n 's/^WRENN_ADMIN_PASSWORD=//p' <<<"$bootstrap_out")"
if [ -n "$admin_password" ]; then
  (umask 077 && echo "$admin_password" >"$WRENN_DIR/admin-password")
fi
[ -n "$host_token" ] && agent_args+=(--register "$host_token")

log "starting the host agent on $AGENT_LISTEN"
"$target/wrenn-agent" serve --data-dir "$WRENN_DIR" --images-dir "$WRENN_IMAGES_DIR" \
  --listen "$AGENT_LISTEN" --cp-url "http://127.0.0.1:$cp_port" --address "$AGENT_LISTEN" \
  "${agent_args[@]}" &
pids+=($!)
# Ready means registered (online in the database) and accepting connections: registration
# happens before the agent's listener is up.
agent_host="${AGENT_LISTEN%:*}" agent_port="${AGENT_LISTEN##*:}"
[ "$agent_host" = 0.0.0.0 ] && agent_host=127.0.0.1
for _ in $(seq 1 300); do
  if [ "$(psql -qAt "$DATABASE_URL" -c "SELECT count(*) FROM hosts WHERE status = 'online'")" != 0 ] &&
    (exec 3<>"/dev/tcp/$agent_host/$agent_port") 2>/dev/null; then
    break
  fi
  kill -0 "${pids[1]}" 2>/dev/null || { echo "error: the host agent exited; see $WRENN_DIR/logs/host-agent.log" >&2; exit 1; }
  sleep 0.2
done

cat <<MSG

Wrenn is up: control plane at $base_url, one host agent, data in $WRENN_DIR.
  admin login:  ${WRENN_ADMIN_EMAIL:-admin@wrenn.local} (password in $WRENN_DIR/admin-password when generated)
  API docs:     $base_url/docs
  CLI:          $target/wrenn create --wait   (reads the two variables below)
  example:      curl -s -H "X-API-Key: $api_key" -H 'Content-Type: application/json' -d '{}' $base_url/v1/capsules
WRENN_BASE_URL=$base_url
WRENN_API_KEY=$api_key
Press Ctrl-C to stop.

MSG
wait -n "${pids[@]}"
