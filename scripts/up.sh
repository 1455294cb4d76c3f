#!/usr/bin/env bash
# Brings Wrenn up on this machine. Today that is the host agent booting microVM sandboxes with the
# guest image (QEMU here; Firecracker where its binary exists); the control plane follows. Installs
# what is missing, builds the guest image if absent, prints how to reach the agent and keeps
# serving until interrupted. Must run as root (network namespaces, TAP devices).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" != 0 ]; then
  echo "error: run as root: the host agent creates network namespaces and TAP devices" >&2
  exit 1
fi

ensure_build_deps
ensure_rust
ensure_vm_deps

export WRENN_DIR="${WRENN_DIR:-/var/lib/wrenn}"
export WRENN_IMAGES_DIR="${WRENN_IMAGES_DIR:-$WRENN_DIR/images}"
LISTEN="${WRENN_HOST_LISTEN_ADDR:-127.0.0.1:50051}"

log "guest image"
./scripts/build-image.sh

log "building the host agent (release)"
cargo build --locked --release -p wrenn-agent
bin="${CARGO_TARGET_DIR:-target}/release/wrenn-agent"
url="http://$LISTEN"
rpc="$url/hostagent.v1.HostAgentService"

cat <<MSG

The host agent is starting on $LISTEN (data in $WRENN_DIR).
  create:   curl -s -H 'content-type: application/json' -d '{"sandboxId":"cl-demo","memoryMb":512}' $rpc/CreateSandbox
  exec:     curl -s -H 'content-type: application/json' -d '{"sandboxId":"cl-demo","cmd":"uname","args":["-a"]}' $rpc/Exec
  list:     curl -s -H 'content-type: application/json' -d '{}' $rpc/ListSandboxes
  proxy:    curl $url/proxy/cl-demo/8080/   (a server on port 8080 in the sandbox)
  destroy:  curl -s -H 'content-type: application/json' -d '{"sandboxId":"cl-demo"}' $rpc/DestroySandbox
WRENN_AGENT_URL=$url
Press Ctrl-C to stop (running sandboxes are kept for the next start).

MSG
exec "$bin" serve --listen "$LISTEN"
