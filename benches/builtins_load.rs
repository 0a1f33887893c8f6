//! End to end: the gateway with the built-in chain auth (API key) → rate-limit (sliding
//! window, a limit never reached) → router (least-connections over two targets) on memory
//! state, and on Redis, against the gateway with no plugins (round-robin over the same two
//! targets); same upstreams and load generator as bench-proxy, one worker thread per gateway,
//! interleaved rounds, medians of per-round ratios. Targets: memory >= 0.8, Redis >= 0.5. The
//! chain runs fused (the built-in bundle: one instance and one call per request, the default);
//! a fourth gateway runs it on memory with each built-in on its own
//! (`plugins.fuse_builtins = false`), to show what fusing does.
//! `cargo bench --bench builtins_load` (BENCH_SECONDS, BENCH_ROUNDS, BENCH_CONNECTIONS;
//! BENCH_CHAIN=auth, rate-limit or router runs one built-in alone; BENCH_CHAIN=acip runs the
//! chain the `.env` mode turns on: security-headers, cors, auth, rate-limit, cache with the job
//! API excluded, round-robin). BENCH_UPSTREAM_MS gives the upstreams a latency;
//! BENCH_REDIS_POOL sets `redis.pool_size`, BENCH_REDIS_BATCH=0 turns off
//! `redis.batch_window_decisions`.
//!
//! Each round also reports every gateway's CPU time per request (its thread's run time over
//! the requests it served): a figure that, unlike req/s, does not move with what the machine's
//! other core is doing. The ratio of CPU per request is the throughput ratio a gateway bound
//! by its own thread would reach.
use std::net::SocketAddr;
use std::time::Duration;

use wasmgate_config::{Config, RouterStrategy, Secret};
use wasmgate_testkit::load::{
    knobs, median, run_load_with, serve_gateway, single_route_config, slow_upstream,
    with_cpu_per_request, HaltPoll, LoadResult,
};
use wasmgate_testkit::RedisServer;

#[path = "../src/allocator.rs"]
mod allocator;

const KEY: (&str, &str) = ("x-api-key", "bench-key-1");

/// One route over two targets.
fn two_targets(upstreams: [SocketAddr; 2]) -> Config {
    let mut c = single_route_config(upstreams[0]);
    let u = c.upstreams.get_mut("bench").unwrap();
    u.targets.push(format!("http://{}", upstreams[1]));
    c
}

fn chain_config(upstreams: [SocketAddr; 2], redis: Option<String>, fuse: bool) -> Config {
    let mut c = two_targets(upstreams);
    c.plugins.fuse_builtins = fuse;
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
    if let Some(n) = std::env::var("BENCH_REDIS_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.redis.pool_size = Some(n);
    }
    // BENCH_REDIS_BATCH=0: one EVALSHA per rate-limit decision (redis.batch_window_decisions).
    if std::env::var("BENCH_REDIS_BATCH").is_ok_and(|v| v == "0") {
        c.redis.batch_window_decisions = false;
    }
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
    let memory = gateway("bench-memory", chain_config(upstreams, None, true));
    let on_redis = gateway(
        "bench-redis",
        chain_config(upstreams, Some(redis.url()), true),
    );
    let separate = gateway("bench-separate", chain_config(upstreams, None, false));
    let targets = [
        ("bench-plain", plain),
        ("bench-memory", memory),
        ("bench-redis", on_redis),
        ("bench-separate", separate),
    ];
    println!("builtins_load: {conns} connections, {rounds} rounds x {secs}s, 1 worker thread per gateway; Redis on loopback; upstream latency {delay:?}");
    // A run's result and the gateway's CPU time per request, in µs.
    let load = |name: &str, addr, d| -> (LoadResult, f64) {
        with_cpu_per_request(name, || {
            rt.block_on(run_load_with(addr, "/api/v1/jobs/1", &[KEY], conns, d))
        })
    };
    for (name, addr) in targets {
        let (warm, _) = load(name, addr, Duration::from_millis(500));
        assert_eq!(warm.errors, 0, "every request passes the chain");
    }
    // BENCH_HALT_POLL_NS=200000 (a haltpoll guest, run as root): every round runs twice,
    // with the guest's halt-poll window as booted and with this one, alternating which goes
    // first, and each setting gets its own figures (docs/performance.md: whether it matters on
    // a VM). `settings` are the windows (`None`: leave the machine as it is); `halt` puts the
    // booted one back when the bench ends.
    let (halt, settings) = match std::env::var("BENCH_HALT_POLL_NS") {
        Ok(v) => {
            let ns: u64 = v.parse().expect("BENCH_HALT_POLL_NS: a number of ns");
            let h = HaltPoll::open()
                .expect("BENCH_HALT_POLL_NS needs a haltpoll guest and write access to its window");
            let booted = h.booted();
            (Some(h), vec![Some(booted), Some(ns)])
        }
        Err(_) => (None, vec![None]),
    };
    let label = |s: Option<u64>| {
        s.map(|ns| format!(" [halt poll {ns} ns]"))
            .unwrap_or_default()
    };
    let mut series: Vec<Series> = settings.iter().map(|_| Series::default()).collect();
    for round in 0..rounds {
        for i in 0..settings.len() {
            let k = (round + i) % settings.len();
            if let (Some(h), Some(ns)) = (&halt, settings[k]) {
                h.set(ns).expect("set the halt-poll window");
            }
            let r: Vec<_> = targets
                .iter()
                .map(|(name, addr)| load(name, *addr, Duration::from_secs(secs)))
                .collect();
            println!(
                "  round {round}{}: none {:>7.0} req/s {:>5.1} us cpu/req | memory {:>7.0} req/s {:>5.1} us | redis {:>7.0} req/s {:>5.1} us | memory, each alone {:>7.0} req/s {:>5.1} us | p99 {:.2}/{:.2}/{:.2}/{:.2} ms | errors {}",
                label(settings[k]),
                r[0].0.rps, r[0].1, r[1].0.rps, r[1].1, r[2].0.rps, r[2].1, r[3].0.rps, r[3].1,
                r[0].0.p99.as_secs_f64() * 1e3, r[1].0.p99.as_secs_f64() * 1e3, r[2].0.p99.as_secs_f64() * 1e3,
                r[3].0.p99.as_secs_f64() * 1e3,
                r.iter().map(|x| x.0.errors).sum::<u64>()
            );
            series[k].push(&r);
        }
    }
    for (setting, s) in settings.iter().zip(&mut series) {
        s.report(&label(*setting));
    }
}

/// One setting's rounds: each chained gateway's throughput over the plain one's, and every
/// gateway's CPU time per request.
#[derive(Default)]
struct Series {
    mem: Vec<f64>,
    red: Vec<f64>,
    sep: Vec<f64>,
    cpu: [Vec<f64>; 4],
}

impl Series {
    fn push(&mut self, r: &[(LoadResult, f64)]) {
        self.mem.push(r[1].0.rps / r[0].0.rps);
        self.red.push(r[2].0.rps / r[0].0.rps);
        self.sep.push(r[3].0.rps / r[0].0.rps);
        for (c, (_, us)) in self.cpu.iter_mut().zip(r) {
            c.push(*us);
        }
    }

    fn report(&mut self, label: &str) {
        let (m, r, s) = (
            median(&mut self.mem),
            median(&mut self.red),
            median(&mut self.sep),
        );
        let [c0, c1, c2, c3] = self.cpu.each_mut().map(|v| median(v));
        println!(
            "\n{label} gateway CPU per request (median): no plugins {c0:.1} us, chain on memory {c1:.1} us (+{:.1}), on Redis {c2:.1} us (+{:.1}), on memory with each built-in alone {c3:.1} us (+{:.1}); CPU ratios {:.3} / {:.3} / {:.3}",
            c1 - c0,
            c2 - c0,
            c3 - c0,
            c0 / c1,
            c0 / c2,
            c0 / c3
        );
        println!("{label} chain on memory, each built-in alone / no plugins: {s:.3}");
        println!(
            "{label} chain on memory / no plugins: {m:.3} (target >= 0.80) {}",
            if m >= 0.8 { "MET" } else { "MISSED" }
        );
        println!(
            "{label} chain on Redis / no plugins:  {r:.3} (target >= 0.50) {}",
            if r >= 0.5 { "MET" } else { "MISSED" }
        );
    }
}
