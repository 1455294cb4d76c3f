# Shared by the scripts in this folder: install what is missing, idempotently.
# shellcheck shell=bash

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# apt_install PKG...: installs the Debian packages that are not installed yet.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# ensure_rust: the stable toolchain with rustfmt, clippy and the musl target (for the static envd).
ensure_rust() {
  if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: no Rust toolchain found. Install rustup and a stable toolchain (1.95 or newer), then rerun." >&2
    exit 1
  fi
  if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
    rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-linux-musl$' ||
      rustup target add x86_64-unknown-linux-musl
  fi
}

# The packages every build and test needs.
ensure_build_deps() {
  apt_install ca-certificates gcc libc6-dev make pkg-config python3 python3-venv procps util-linux iproute2 passwd
}

# ensure_e2b_sdk: E2B's official Python SDK in a virtualenv, for the wire-compatibility test.
# Prints the interpreter's path.
ensure_e2b_sdk() {
  local venv="${WRENN_CACHE_DIR:-/var/tmp/wrenn-cache}/e2b-venv"
  local version="2.63.0"
  if ! "$venv/bin/python" -c "import e2b, importlib.metadata as m; assert m.version('e2b') == '$version'" 2>/dev/null; then
    log "installing the e2b Python SDK $version (for the compatibility test)"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check "e2b==$version" >&2
  fi
  echo "$venv/bin/python"
}

# ensure_wrenn_sdk: Wrenn's official Python SDK (`wrenn` 0.3.0) in a virtualenv, for the tests that
# check the control plane against the client it must satisfy. Prints the interpreter's path.
# The package declares Python >= 3.13 but runs on Debian 12's 3.11 (no 3.12+ syntax or stdlib), so
# the version check is skipped; the tests would catch an import failure.
ensure_wrenn_sdk() {
  local venv="${WRENN_CACHE_DIR:-/var/tmp/wrenn-cache}/wrenn-venv"
  local version="0.3.0"
  if ! "$venv/bin/python" -c "import wrenn, importlib.metadata as m; assert m.version('wrenn') == '$version'" 2>/dev/null; then
    log "installing the wrenn Python SDK $version (for the client-contract tests)"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check --ignore-requires-python "wrenn==$version" >&2
  fi
  echo "$venv/bin/python"
}

# ensure_vm_deps: what the host agent needs to boot sandboxes (QEMU, disks, namespaces, NAT) and
# what the guest image builder needs.
ensure_vm_deps() {
  apt_install qemu-system-x86 qemu-utils nftables iproute2 debootstrap lz4 cpio e2fsprogs
}

# ensure_postgres DIR PORT [OPTIONS]: a private PostgreSQL 15 cluster in DIR listening on
# 127.0.0.1:PORT (trust authentication on loopback only), started if it is not running, with
# extra server OPTIONS (the tests pass "-c fsync=off"). Prints its admin URL.
# PostgreSQL refuses to run as root, so the cluster belongs to the `postgres` system user.
ensure_postgres() {
  local dir="$1" port="$2" extra="${3:-}"
  apt_install postgresql-15 postgresql-client-15
  local bin=/usr/lib/postgresql/15/bin
  mkdir -p "$dir"
  chown postgres:postgres "$dir"
  chmod 700 "$dir"
  if [ ! -f "$dir/PG_VERSION" ]; then
    log "initialising a PostgreSQL cluster in $dir"
    runuser -u postgres -- "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if ! runuser -u postgres -- "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    log "starting PostgreSQL on 127.0.0.1:$port"
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=300 $extra" \
      start >/dev/null
  fi
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}
