//! `just bench-proxy`: the gateway with no plugins against (a) the upstream directly and (b) a
//! minimal hyper reverse proxy, same upstream, same load generator, one worker thread each,
//! in one run. Rounds are interleaved and the median round is reported, as ratios, because the
//! machine is shared and noisy. Not a test: it prints figures for docs/performance.md.
//!
//! Knobs: BENCH_SECONDS (per round, default 3), BENCH_ROUNDS (default 9),
//! BENCH_CONNECTIONS (default 32).
use std::net::SocketAddr;
use std::time::Duration;

use wasmgate_testkit::load::{
    fast_upstream, knobs, minimal_proxy, run_load, serve_gateway, single_route_config, LoadResult,
};

#[path = "../src/allocator.rs"]
mod allocator;

fn gateway(upstream: SocketAddr) -> SocketAddr {
    serve_gateway("bench-wasmgate", single_route_config(upstream), None).0
}

fn median(mut v: Vec<LoadResult>) -> LoadResult {
    v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; accept and ignore harness flags.
    let (secs, rounds, conns) = knobs();
    let duration = Duration::from_secs(secs);

    let upstream = fast_upstream(1);
    let baseline = minimal_proxy(1, upstream);
    let gw = gateway(upstream);
    let targets = [
        ("upstream direct", upstream),
        ("minimal hyper proxy", baseline),
        ("wasmgate (no plugins)", gw),
    ];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!("bench-proxy: {conns} connections, {rounds} rounds x {secs}s per target, 1 worker thread per server");
    for (_, addr) in targets {
        rt.block_on(run_load(
            addr,
            "/api/v1/jobs/1",
            conns,
            Duration::from_millis(500),
        ));
    }
    let mut results: Vec<Vec<LoadResult>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, addr)) in targets.iter().enumerate() {
            let r = rt.block_on(run_load(*addr, "/api/v1/jobs/1", conns, duration));
            println!("  round {round} {name:<24} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
                r.rps, r.p50.as_secs_f64() * 1e3, r.p99.as_secs_f64() * 1e3, r.errors);
            results[i].push(r);
        }
    }
    // Each round measures the three targets back to back, so per-round ratios cancel most of
    // the machine's drift; the median of those ratios is the figure to compare with targets.
    let ratio_of = |f: &dyn Fn(&LoadResult, &LoadResult) -> f64| {
        let mut r: Vec<f64> = (0..rounds)
            .map(|i| f(&results[2][i], &results[1][i]))
            .collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let rps_ratio = ratio_of(&|ours, base| ours.rps / base.rps);
    let p99_ratio = ratio_of(&|ours, base| ours.p99.as_secs_f64() / base.p99.as_secs_f64());
    let med: Vec<LoadResult> = results.into_iter().map(median).collect();
    println!("\nmedian round per target:");
    println!("| target | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|");
    for ((name, _), r) in targets.iter().zip(&med) {
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {} |",
            r.rps,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.errors
        );
    }
    let (direct, base, ours) = (med[0], med[1], med[2]);
    println!("\nratios (median of per-round ratios):");
    println!(
        "  wasmgate / minimal proxy req/s: {rps_ratio:.3}  (target >= 0.90) {}",
        verdict(rps_ratio >= 0.90)
    );
    println!(
        "  wasmgate / minimal proxy p99:   {p99_ratio:.3}  (target <= 1.20) {}",
        verdict(p99_ratio <= 1.20)
    );
    println!(
        "  wasmgate / upstream direct req/s: {:.3}",
        ours.rps / direct.rps
    );
    println!(
        "  minimal proxy / upstream direct req/s: {:.3}",
        base.rps / direct.rps
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}
