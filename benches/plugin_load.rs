//! End to end: the gateway with the example plugin (add-header, from a plugin folder) against
//! the gateway with no plugins, same upstream and load generator as bench-proxy, one worker
//! thread each, interleaved rounds, median of per-round ratios. Target: >= 0.9.
//! `cargo bench --bench plugin_load` (BENCH_SECONDS, BENCH_ROUNDS, BENCH_CONNECTIONS).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use wasmgate_testkit::load::{
    fast_upstream, knobs, run_load, serve_gateway, single_route_config, LoadResult,
};

fn gateway(name: &str, upstream: SocketAddr, plugins: Option<PathBuf>) -> SocketAddr {
    let expected = usize::from(plugins.is_some());
    let (addr, loaded) = serve_gateway(name, single_route_config(upstream), plugins);
    assert_eq!(loaded, expected, "the example plugin loaded");
    addr
}

fn main() {
    let (secs, rounds, conns) = knobs();
    let dir = std::env::temp_dir().join(format!("wasmgate-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        wasmgate_plugin_host::guests::ADD_HEADER,
        dir.join("add-header.wasm"),
    )
    .unwrap();

    let upstream = fast_upstream(1);
    let plain = gateway("bench-plain", upstream, None);
    let with_plugin = gateway("bench-plugin", upstream, Some(dir.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "plugin_load: {conns} connections, {rounds} rounds x {secs}s, 1 worker thread per gateway"
    );
    for addr in [plain, with_plugin] {
        rt.block_on(run_load(
            addr,
            "/api/v1/jobs/1",
            conns,
            Duration::from_millis(500),
        ));
    }
    let mut ratios = Vec::new();
    let mut rows: Vec<(LoadResult, LoadResult)> = Vec::new();
    for round in 0..rounds {
        let a = rt.block_on(run_load(
            plain,
            "/api/v1/jobs/1",
            conns,
            Duration::from_secs(secs),
        ));
        let b = rt.block_on(run_load(
            with_plugin,
            "/api/v1/jobs/1",
            conns,
            Duration::from_secs(secs),
        ));
        println!(
            "  round {round}: no plugins {:>8.0} req/s p99 {:.3} ms | add-header {:>8.0} req/s p99 {:.3} ms | errors {}",
            a.rps, a.p99.as_secs_f64() * 1e3, b.rps, b.p99.as_secs_f64() * 1e3, a.errors + b.errors
        );
        ratios.push(b.rps / a.rps);
        rows.push((a, b));
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!("\nwith one plugin / without, req/s (median of per-round ratios): {median:.3}  (target >= 0.90) {}",
        if median >= 0.9 { "MET" } else { "MISSED" });
    println!(
        "per-round ratios: {:?}",
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(dir).ok();
}
