# Sourced by scripts/test.sh and scripts/run.sh: installs what the build and tests need.

# The built-in plugins compile to wasm32-wasip2. rust-toolchain.toml lists the target, but these
# machines set RUSTUP_AUTO_INSTALL=0, so it is added explicitly.
ensure_wasm_target() {
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "==> rustup target add wasm32-wasip2"
    rustup target add wasm32-wasip2 || {
      echo "error: cannot add the wasm32-wasip2 target; run: rustup target add wasm32-wasip2" >&2
      exit 1
    }
  fi
}

# The test kit starts its own redis-server on a free port; it needs the binary.
ensure_redis_server() {
  if command -v redis-server >/dev/null 2>&1; then
    return
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> apt-get install redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  else
    echo "error: the tests need redis-server. Install it: sudo apt-get install redis-server (Debian/Ubuntu) or brew install redis (macOS)" >&2
    exit 1
  fi
}
