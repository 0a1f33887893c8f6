//! End to end: the gateway with the built-in chain auth (API key) → rate-limit (sliding
//! window, a limit never reached) → router (least-connections over two targets) on memory
//! state, and on Redis, against the gateway with no plugins (round-robin over the same two
//! targets); same upstreams and load generator as bench-proxy, one worker thread per gateway,
//! interleaved rounds, medians of per-round ratios. Targets: memory >= 0.8, Redis >= 0.5.
//! `cargo bench --bench builtins_load` (BENCH_SECONDS, BENCH_ROUNDS, BENCH_CONNECTIONS;
//! BENCH_CHAIN=auth, rate-limit or router runs one built-in alone; BENCH_CHAIN=acip runs the
//! chain the `.env` mode turns on: security-headers, cors, auth, rate-limit, cache with the job
//! API excluded, round-robin). BENCH_UPSTREAM_MS gives the upstreams a latency.
use std::net::SocketAddr;
use std::time::Duration;

use wasmgate_config::{Config, RouterStrategy, Secret};
use wasmgate_testkit::load::{
    knobs, run_load_with, serve_gateway, single_route_config, slow_upstream,
};
use wasmgate_testkit::RedisServer;

const KEY: (&str, &str) = ("x-api-key", "bench-key-1");

/// One route over two targets.
fn two_targets(upstreams: [SocketAddr; 2]) -> Config {
    let mut c = single_route_config(upstreams[0]);
    let u = c.upstreams.get_mut("bench").unwrap();
    u.targets.push(format!("http://{}", upstreams[1]));
    c
}

fn chain_config(upstreams: [SocketAddr; 2], redis: Option<String>) -> Config {
    let mut c = two_targets(upstreams);
    // BENCH_CHAIN=auth, rate-limit or router measures one alone.
    let only = std::env::var("BENCH_CHAIN").unwrap_or_default();
    if only == "acip" {
        c.auth.enabled = true;
        c.auth.api_keys = vec![Secret::new(KEY.1)];
        c.rate_limit.enabled = true;
        c.rate_limit.max_requests = u64::MAX >> 2;
        c.rate_limit.window_ms = 1_000;
        c.cors.enabled = true;
        c.security_headers.enabled = true;
        c.cache.enabled = true;
        c.cache.exclude_paths = vec!["/api/v1/jobs".into(), "/api/v1/queue".into()];
        c.redis.url = redis.map(Secret::new);
        return c;
    }
    let on = |name: &str| only.is_empty() || only == name;
    c.auth.enabled = on("auth");
    c.auth.api_keys = vec![Secret::new(KEY.1)];
    if on("router") {
        c.router.strategy = RouterStrategy::LeastConnections;
    }
    c.rate_limit.enabled = on("rate-limit");
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
    let (secs, rounds, conns) = knobs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(RedisServer::start());
    // BENCH_UPSTREAM_MS: the backend's latency (0, the default, answers at once: the gateway's
    // own cost is all there is to measure; an inference backend takes 10 ms to seconds).
    let delay = std::time::Duration::from_millis(
        std::env::var("BENCH_UPSTREAM_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let upstreams = [slow_upstream(1, delay), slow_upstream(1, delay)];
    let plain = gateway("bench-plain", two_targets(upstreams));
    let memory = gateway("bench-memory", chain_config(upstreams, None));
    let on_redis = gateway("bench-redis", chain_config(upstreams, Some(redis.url())));
    let targets = [
        ("no plugins", plain),
        ("auth+rate-limit+router, memory", memory),
        ("auth+rate-limit+router, Redis", on_redis),
    ];
    println!("builtins_load: {conns} connections, {rounds} rounds x {secs}s, 1 worker thread per gateway; Redis on loopback; upstream latency {delay:?}");
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
