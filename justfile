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

# Start the inference simulator on :8000 (workers heartbeat into $REDIS_URL when set).
sim *ARGS:
    cargo run --release --bin wasmgate-sim -- {{ARGS}}

# Gateway (no plugins) vs the upstream directly vs a minimal hyper proxy; see docs/performance.md.
bench-proxy:
    cargo bench --bench proxy_load

fmt:
    cargo fmt --all

clippy:
    cargo clippy --workspace --all-targets -- -D warnings
