#!/usr/bin/env bash
# The run command (README): builds and starts the gateway. Arguments go to `wasmgate`
# (e.g. `scripts/run.sh --config deploy/wasmgate.toml`). With no config file the ACIP .env
# names configure it and state is in memory: no Redis needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
ensure_wasm_target
ensure_c_toolchain
exec cargo run --release --locked --bin wasmgate -- "$@"
