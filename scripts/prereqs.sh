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

# Installs Debian package $1 with apt when running as root (the package lists refreshed only
# when the install fails without it); otherwise prints $2, what to install by hand, and exits.
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> apt-get install $1"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$1" >/dev/null 2>&1 || {
      apt-get update -qq && apt-get install -y -qq --no-install-recommends "$1" >/dev/null
    }
  else
    echo "error: $2" >&2
    exit 1
  fi
}

# ring (TLS) compiles C, and jemalloc (the binary's allocator) runs its configure script and
# make: a C compiler and make.
ensure_c_toolchain() {
  command -v cc >/dev/null 2>&1 || apt_install gcc "building needs a C compiler. Install it: sudo apt-get install gcc (Debian/Ubuntu) or xcode-select --install (macOS)"
  command -v make >/dev/null 2>&1 || apt_install make "building jemalloc needs make. Install it: sudo apt-get install make (Debian/Ubuntu)"
}

# The test kit starts its own redis-server on a free port; it needs the binary.
ensure_redis_server() {
  command -v redis-server >/dev/null 2>&1 && return
  apt_install redis-server "the tests need redis-server. Install it: sudo apt-get install redis-server (Debian/Ubuntu) or brew install redis (macOS)"
}

# tests/deploy.rs validates deploy/docker-compose.yml with Debian's docker-compose (no container
# engine is needed for `config -q`).
ensure_docker_compose() {
  command -v docker-compose >/dev/null 2>&1 && return
  apt_install docker-compose "the tests need docker-compose to validate deploy/docker-compose.yml. Install it: sudo apt-get install docker-compose (Debian/Ubuntu) or pip install docker-compose"
}

# tests/dashboard.rs renders /gateway/ui in Debian's Chromium, headless.
ensure_chromium() {
  for b in chromium chromium-browser google-chrome; do
    command -v "$b" >/dev/null 2>&1 && return
  done
  apt_install chromium "the dashboard test needs Chromium. Install it: sudo apt-get install chromium (Debian) or chromium-browser (Ubuntu)"
}

# The Python example plugin is built by a test with componentize-py (from PyPI).
COMPONENTIZE_PY_VERSION=0.25.1
ensure_componentize_py() {
  if command -v componentize-py >/dev/null 2>&1; then
    return
  fi
  local py
  py=$(command -v python3 || command -v python || true)
  if [ -z "$py" ]; then
    echo "error: the tests need componentize-py (Python). Install Python 3 and run: pip install componentize-py==$COMPONENTIZE_PY_VERSION" >&2
    exit 1
  fi
  echo "==> pip install componentize-py==$COMPONENTIZE_PY_VERSION"
  "$py" -m pip install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION" || {
    echo "error: pip could not install componentize-py; run: pip install componentize-py==$COMPONENTIZE_PY_VERSION" >&2
    exit 1
  }
  hash -r
  command -v componentize-py >/dev/null 2>&1 || {
    echo "error: componentize-py installed but not on PATH (add pip's script directory to PATH)" >&2
    exit 1
  }
}
