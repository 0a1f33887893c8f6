//! The cost of observability: the gateway (no plugins) with Prometheus metrics and the access
//! log on against both off, same upstream and load generator as bench-proxy, one worker thread
//! per gateway, interleaved rounds (alternating which goes first), medians of per-round ratios. Target: >= 0.9.
//! Log lines go, as in production, through the non-blocking writer — here to a file in the
//! temp directory (a log shipper's pipe would be similar). `cargo bench --bench
//! observability_load` (BENCH_SECONDS, BENCH_ROUNDS, BENCH_CONNECTIONS; BENCH_ONLY=metrics or
//! BENCH_ONLY=log turns on one of the two).
use std::time::Duration;

use wasmgate_testkit::load::{
    fast_upstream, knobs, run_load_with, serve_gateway, single_route_config,
};

#[path = "../src/allocator.rs"]
mod allocator;

fn main() {
    let (secs, rounds, conns) = knobs();
    let log_path = std::env::temp_dir().join(format!("wasmgate-bench-{}.log", std::process::id()));
    let file = std::fs::File::create(&log_path).unwrap();
    let (writer, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(64 * 1024, file));
    wasmgate_proxy::access::set_sink(true, wasmgate_proxy::access::writer_sink(writer.clone()));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .init();

    let upstream = fast_upstream(1);
    let mut off = single_route_config(upstream);
    off.metrics.enabled = false;
    off.log.access_log = false;
    let mut on = single_route_config(upstream);
    // BENCH_ONLY=metrics or BENCH_ONLY=log measures one of the two.
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("metrics") => on.log.access_log = false,
        Ok("log") => on.metrics.enabled = false,
        _ => {}
    }
    let (off_addr, _) = serve_gateway("bench-quiet", off, None);
    let (on_addr, _) = serve_gateway("bench-observed", on, None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let load = |addr, d| rt.block_on(run_load_with(addr, "/api/v1/jobs/1", &[], conns, d));
    for addr in [off_addr, on_addr] {
        assert_eq!(load(addr, Duration::from_millis(500)).errors, 0);
    }
    println!("observability_load: {conns} connections, {rounds} rounds x {secs}s, 1 worker thread per gateway");
    let mut ratios = Vec::new();
    for round in 0..rounds {
        // Alternate which goes first, so that a drift within a round favours neither.
        let (a, b) = if round % 2 == 0 {
            let a = load(off_addr, Duration::from_secs(secs));
            (a, load(on_addr, Duration::from_secs(secs)))
        } else {
            let b = load(on_addr, Duration::from_secs(secs));
            (load(off_addr, Duration::from_secs(secs)), b)
        };
        println!(
            "  round {round}: off {:>7.0} req/s p99 {:.3} ms | metrics + access log {:>7.0} req/s p99 {:.3} ms",
            a.rps,
            a.p99.as_secs_f64() * 1e3,
            b.rps,
            b.p99.as_secs_f64() * 1e3
        );
        ratios.push(b.rps / a.rps);
    }
    ratios.sort_by(f64::total_cmp);
    let r = ratios[ratios.len() / 2];
    let lines = std::fs::read_to_string(&log_path)
        .map(|t| t.lines().filter(|l| l.contains("wasmgate::access")).count())
        .unwrap_or(0);
    println!("\naccess log lines written: {lines}");
    println!(
        "observability on / off: {r:.3} (target >= 0.90) {}",
        if r >= 0.9 { "MET" } else { "MISSED" }
    );
    std::fs::remove_file(&log_path).ok();
}
