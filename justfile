# wasmgate recipes. Each is a thin wrapper: the scripts work without `just`.

# Start the gateway (ACIP .env mode unless --config is given): just run --config deploy/wasmgate.toml
run *ARGS:
    scripts/run.sh {{ARGS}}

# Install what is missing, then fmt --check, clippy -D warnings and every test (what CI runs).
test:
    scripts/test.sh

# Validate a config file.
check FILE="deploy/wasmgate.toml":
    cargo run --quiet --bin wasmgate -- check --config {{FILE}}

# Two inference simulators with GPU workers and the gateway on :3000 with every built-in; prints curl lines.
demo *ARGS:
    cargo run --release --bin wasmgate -- demo {{ARGS}}

# Start the inference simulator on :8000 (workers heartbeat into $REDIS_URL when set).
sim *ARGS:
    cargo run --release --bin wasmgate-sim -- {{ARGS}}

# Gateway (no plugins) vs the upstream directly vs a minimal hyper proxy; see docs/performance.md.
bench-proxy:
    cargo bench --bench proxy_load

# The built-in chain (auth, rate-limit) on memory and on Redis vs no plugins
bench-builtins:
    cargo bench --bench builtins_load

# Store operations on memory and Redis: ops/s, p50/p99 (docs/performance.md)
bench-state:
    cargo bench --bench state_ops

fmt:
    cargo fmt --all

clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# Start a Rust plugin from the example: just plugin-new my-plugin
plugin-new NAME:
    cp -r guest-plugins/examples/add-header guest-plugins/examples/{{NAME}}
    sed -i 's/^name = "add-header"/name = "{{NAME}}"/' guest-plugins/examples/{{NAME}}/Cargo.toml
    @echo "Now add \"examples/{{NAME}}\" to [workspace] members in guest-plugins/Cargo.toml and edit guest-plugins/examples/{{NAME}}/src/lib.rs"

# Build every guest plugin (wasm32-wasip2) into guest-plugins/target/wasm32-wasip2/release/.
plugin-build:
    cd guest-plugins && cargo build --release

# Build the Python example plugin (needs `pip install componentize-py`).
plugin-python:
    cd guest-plugins/examples/python-header && componentize-py -d ../../../wit -w gateway-plugin componentize app -o python-header.wasm

# Inspect a plugin file: exports, imports, phases, and whether it fits the world.
plugin-inspect FILE:
    cargo run --quiet --bin wasmgate -- plugin inspect {{FILE}}
