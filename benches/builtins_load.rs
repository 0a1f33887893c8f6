//! End to end: the gateway with the built-in chain auth (API key) → rate-limit (sliding
//! window, a limit never reached) on memory state, and on Redis, against the gateway with no
//! plugins; same upstream and load generator as bench-proxy, one worker thread per gateway,
//! interleaved rounds, medians of per-round ratios. Targets: memory >= 0.8, Redis >= 0.5.
//! `cargo bench --bench builtins_load` (BENCH_SECONDS, BENCH_ROUNDS, BENCH_CONNECTIONS;
//! BENCH_CHAIN=auth or BENCH_CHAIN=rate-limit runs one built-in alone).
//! The router built-in is not in the chain yet (issue #5 remains open for it).
use std::net::SocketAddr;
use std::time::Duration;

use wasmgate_config::{Config, Secret};
use wasmgate_testkit::load::{
    env_knob as env_or, fast_upstream, run_load_with, serve_gateway, single_route_config,
};
use wasmgate_testkit::RedisServer;

const KEY: (&str, &str) = ("x-api-key", "bench-key-1");

fn chain_config(upstream: SocketAddr, redis: Option<String>) -> Config {
    let mut c = single_route_config(upstream);
    // BENCH_CHAIN=auth or rate-limit measures one of the two alone.
    let only = std::env::var("BENCH_CHAIN").unwrap_or_default();
    c.auth.enabled = only != "rate-limit";
    c.auth.api_keys = vec![Secret::new(KEY.1)];
    c.rate_limit.enabled = only != "auth";
    c.rate_limit.max_requests = u64::MAX >> 2;
    c.rate_limit.window_ms = 1_000;
    c.redis.url = redis.map(Secret::new);
    c
}

fn gateway(name: &str, config: Config) -> SocketAddr {
    let want = wasmgate_plugin_host::builtins::enabled(&config)
        .unwrap()
        .len();
    let (addr, plugins) = serve_gateway(name, config, None);
    assert_eq!(plugins, want, "{name}: the chain loaded");
    addr
}

fn main() {
    let secs = env_or("BENCH_SECONDS", 3);
    let rounds = env_or("BENCH_ROUNDS", 9) as usize;
    let conns = env_or("BENCH_CONNECTIONS", 32) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(RedisServer::start());
    let upstream = fast_upstream(1);
    let plain = gateway("bench-plain", single_route_config(upstream));
    let memory = gateway("bench-memory", chain_config(upstream, None));
    let on_redis = gateway("bench-redis", chain_config(upstream, Some(redis.url())));
    let targets = [
        ("no plugins", plain),
        ("auth+rate-limit, memory", memory),
        ("auth+rate-limit, Redis", on_redis),
    ];
    println!("builtins_load: {conns} connections, {rounds} rounds x {secs}s, 1 worker thread per gateway; Redis on loopback");
    let load = |addr, d| rt.block_on(run_load_with(addr, "/api/v1/jobs/1", &[KEY], conns, d));
    for (_, addr) in targets {
        let warm = load(addr, Duration::from_millis(500));
        assert_eq!(warm.errors, 0, "every request passes the chain");
    }
    let (mut mem, mut red) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let r: Vec<_> = targets
            .iter()
            .map(|(_, addr)| load(*addr, Duration::from_secs(secs)))
            .collect();
        println!(
            "  round {round}: none {:>7.0} req/s p99 {:.3} ms | memory {:>7.0} req/s p99 {:.3} ms | redis {:>7.0} req/s p99 {:.3} ms | errors {}",
            r[0].rps, r[0].p99.as_secs_f64() * 1e3, r[1].rps, r[1].p99.as_secs_f64() * 1e3,
            r[2].rps, r[2].p99.as_secs_f64() * 1e3, r[0].errors + r[1].errors + r[2].errors
        );
        mem.push(r[1].rps / r[0].rps);
        red.push(r[2].rps / r[0].rps);
    }
    for v in [&mut mem, &mut red] {
        v.sort_by(f64::total_cmp);
    }
    let (m, r) = (mem[mem.len() / 2], red[red.len() / 2]);
    println!(
        "\nchain on memory / no plugins: {m:.3} (target >= 0.80) {}",
        if m >= 0.8 { "MET" } else { "MISSED" }
    );
    println!(
        "chain on Redis / no plugins:  {r:.3} (target >= 0.50) {}",
        if r >= 0.5 { "MET" } else { "MISSED" }
    );
}
