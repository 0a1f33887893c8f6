#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the suite needs when it is missing, then
# checks formatting, lints with clippy -D warnings (the gateway and the guest plugins), and runs
# every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
ensure_wasm_target
ensure_c_toolchain
ensure_redis_server
ensure_docker_compose
ensure_chromium
ensure_componentize_py

echo "==> cargo fmt --check"
cargo fmt --all -- --check
(cd guest-plugins && cargo fmt --all -- --check)
echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo clippy -D warnings (guest plugins, wasm32-wasip2)"
(cd guest-plugins && cargo clippy --release --target wasm32-wasip2 --workspace --locked \
    --target-dir ../target/wasm-guests-clippy -- -D warnings)
echo "==> cargo test"
cargo test --workspace --locked
