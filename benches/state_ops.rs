//! `just bench-state`: ops/s and p50/p99 latency of every Store operation on both backends
//! (the embedded memory store and Redis, a real `redis-server` on a free port) in one run, and
//! the rate-limit decision (sliding-window hit) against `PING`, the cost of one round trip.
//! Not a test: it prints figures for docs/performance.md.
//!
//! Knobs: BENCH_MILLIS (per operation, default 1000), BENCH_CONCURRENCY (in-flight calls,
//! default 16).
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmgate_config::{RedisConfig, Secret};
use wasmgate_state::{MemoryStore, RedisStore, Store};
use wasmgate_testkit::load::env_knob;
use wasmgate_testkit::RedisServer;

#[path = "../src/allocator.rs"]
mod allocator;

#[derive(Clone, Copy)]
enum Op {
    Ping,
    Get,
    Set,
    Incr,
    SlidingWindow,
    FixedWindow,
    SetAdd,
    PutIndexed,
}

const OPS: [(&str, Op); 8] = [
    ("ping (one round trip)", Op::Ping),
    ("get", Op::Get),
    ("set (ttl)", Op::Set),
    ("incr (ttl)", Op::Incr),
    ("sliding-window hit", Op::SlidingWindow),
    ("fixed-window hit", Op::FixedWindow),
    ("set add", Op::SetAdd),
    ("put indexed (cache)", Op::PutIndexed),
];

async fn call(s: &dyn Store, op: Op, task: usize, i: u64) {
    let ttl = Some(Duration::from_secs(60));
    let w = Duration::from_secs(60);
    let client = format!("gateway:bench:rl:{}", task % 64);
    let r = match op {
        Op::Ping => s.ping().await.map(drop),
        Op::Get => s.get("gateway:bench:k").await.map(drop),
        Op::Set => s.set("gateway:bench:k", vec![b'x'; 64], ttl).await,
        Op::Incr => s.incr("gateway:bench:n", 1, ttl).await.map(drop),
        // A generous limit: every hit is recorded (the expensive path).
        Op::SlidingWindow => s.sliding_window_hit(&client, 1_000_000, w).await.map(drop),
        Op::FixedWindow => s
            .fixed_window_hit(&format!("{client}:fixed"), u64::MAX >> 1, w)
            .await
            .map(drop),
        Op::SetAdd => s
            .set_add("gateway:bench:set", &format!("m{}", i % 1000))
            .await
            .map(drop),
        Op::PutIndexed => s
            .put_indexed(
                "gateway:bench:cache:keys",
                "gateway:bench:cache:",
                &format!("h{}", i % 2000),
                vec![b'x'; 512],
                w,
                1000,
            )
            .await
            .map(drop),
    };
    r.expect("store operation");
}

struct Figures {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn measure(store: Arc<dyn Store>, op: Op, concurrency: usize, dur: Duration) -> Figures {
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let s = store.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while started.elapsed() < dur {
                    let t0 = Instant::now();
                    call(&*s, op, t, i).await;
                    lat.push(t0.elapsed().as_secs_f64() * 1e6);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        ops_per_s: all.len() as f64 / secs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}

fn main() {
    let millis = env_knob("BENCH_MILLIS", 1000);
    let concurrency = env_knob("BENCH_CONCURRENCY", 16) as usize;
    let dur = Duration::from_millis(millis);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = RedisServer::start().await;
        let redis: Arc<dyn Store> = Arc::new(
            RedisStore::connect(&RedisConfig {
                url: Some(Secret::new(server.url())),
                ..Default::default()
            })
            .await
            .unwrap(),
        );
        // The same server without batching window decisions (redis.batch_window_decisions =
        // false): one EVALSHA per decision, side by side with the batched default.
        let unbatched: Arc<dyn Store> = Arc::new(
            RedisStore::connect(&RedisConfig {
                url: Some(Secret::new(server.url())),
                batch_window_decisions: false,
                ..Default::default()
            })
            .await
            .unwrap(),
        );
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new(100_000));
        println!(
            "bench-state: {concurrency} calls in flight, {millis} ms per operation, 1 worker thread, Redis {} on loopback",
            server.url()
        );
        println!("| operation | memory ops/s | memory p50 µs | memory p99 µs | redis ops/s | redis p50 µs | redis p99 µs |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let mut ping_p50 = 0.0;
        let mut window_p50 = 0.0;
        for (name, op) in OPS {
            // Warm both (scripts loaded, keys present), then measure.
            call(&*memory, op, 0, 0).await;
            call(&*redis, op, 0, 0).await;
            let m = measure(memory.clone(), op, concurrency, dur).await;
            let r = measure(redis.clone(), op, concurrency, dur).await;
            println!(
                "| {name} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} |",
                m.ops_per_s, m.p50_us, m.p99_us, r.ops_per_s, r.p50_us, r.p99_us
            );
            match op {
                Op::Ping => ping_p50 = r.p50_us,
                Op::SlidingWindow => window_p50 = r.p50_us,
                _ => {}
            }
        }
        for (name, op) in [
            ("sliding-window hit", Op::SlidingWindow),
            ("fixed-window hit", Op::FixedWindow),
        ] {
            call(&*unbatched, op, 0, 0).await;
            let u = measure(unbatched.clone(), op, concurrency, dur).await;
            let b = measure(redis.clone(), op, concurrency, dur).await;
            println!(
                "redis, {concurrency} in flight, {name}: one EVALSHA each {:.0} ops/s (p50 {:.0} µs, p99 {:.0}), batched {:.0} ops/s (p50 {:.0} µs, p99 {:.0}): {:.2}x",
                u.ops_per_s, u.p50_us, u.p99_us, b.ops_per_s, b.p50_us, b.p99_us, b.ops_per_s / u.ops_per_s
            );
        }
        println!(
            "redis, {concurrency} in flight: sliding-window hit p50 / ping p50 = {:.2} (server-bound: the script's work queues)",
            window_p50 / ping_p50
        );
        // One call at a time: latency = one round trip + the script's work on the server.
        let ping = measure(redis.clone(), Op::Ping, 1, dur).await;
        let hit = measure(redis.clone(), Op::SlidingWindow, 1, dur).await;
        println!(
            "redis, 1 in flight: ping p50 {:.0} µs p99 {:.0} µs; sliding-window hit p50 {:.0} µs p99 {:.0} µs; ratio p50 {:.2}",
            ping.p50_us,
            ping.p99_us,
            hit.p50_us,
            hit.p99_us,
            hit.p50_us / ping.p50_us
        );
    });
}
