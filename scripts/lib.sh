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

# ensure_vm_deps: what the host agent needs to boot sandboxes (QEMU, disks, namespaces, NAT) and
# what the guest image builder needs.
ensure_vm_deps() {
  apt_install qemu-system-x86 qemu-utils nftables iproute2 debootstrap lz4 cpio e2fsprogs
}
