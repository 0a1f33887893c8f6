//! End to end: the gateway with the example plugin (add-header, from a plugin folder) against
//! the gateway with no plugins, same upstream and load generator as bench-proxy, one worker
//! thread each, interleaved rounds, median of per-round ratios. Target: >= 0.9.
//! `cargo bench --bench plugin_load` (BENCH_SECONDS, BENCH_ROUNDS, BENCH_CONNECTIONS).
//! BENCH_PLUGINS=N loads N copies of a plugin whose `on-request-headers` does nothing
//! (`test-plugins/bench`, `read = "none"`) instead: the fixed cost of a plugin in the chain,
//! without host calls or work of its own.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use wasmgate_testkit::load::{
    fast_upstream, knobs, median, run_load, serve_gateway, single_route_config,
    with_cpu_per_request, LoadResult,
};

#[path = "../src/allocator.rs"]
mod allocator;

fn gateway(name: &str, upstream: SocketAddr, plugins: Option<(PathBuf, usize)>) -> SocketAddr {
    let expected = plugins.as_ref().map_or(0, |p| p.1);
    let (addr, loaded) = serve_gateway(name, single_route_config(upstream), plugins.map(|p| p.0));
    assert_eq!(loaded, expected, "the plugins loaded");
    addr
}

/// Fills `dir`: the example plugin, or `n` no-op plugins (each with a manifest naming it).
fn plugin_folder(dir: &std::path::Path, noops: Option<usize>) -> (usize, String) {
    std::fs::create_dir_all(dir).unwrap();
    let Some(n) = noops else {
        std::fs::copy(
            wasmgate_plugin_host::guests::ADD_HEADER,
            dir.join("add-header.wasm"),
        )
        .unwrap();
        return (1, "add-header".into());
    };
    for i in 0..n {
        std::fs::copy(
            wasmgate_plugin_host::guests::TP_BENCH,
            dir.join(format!("noop-{i}.wasm")),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("noop-{i}.toml")),
            format!("[config]\nread = \"none\"\nname = \"noop-{i}\"\n"),
        )
        .unwrap();
    }
    (n, format!("{n} no-op plugins"))
}

fn main() {
    let (secs, rounds, conns) = knobs();
    let dir = std::env::temp_dir().join(format!("wasmgate-bench-plugins-{}", std::process::id()));
    let noops = std::env::var("BENCH_PLUGINS")
        .ok()
        .map(|v| v.parse().expect("BENCH_PLUGINS is a number"));
    let (count, label) = plugin_folder(&dir, noops);

    let upstream = fast_upstream(1);
    let plain = gateway("bench-plain", upstream, None);
    let with_plugin = gateway("bench-plugin", upstream, Some((dir.clone(), count)));
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
    // A run's result and the gateway's CPU time per request, in µs (see builtins_load).
    let load = |name: &str, addr| -> (LoadResult, f64) {
        with_cpu_per_request(name, || {
            rt.block_on(run_load(
                addr,
                "/api/v1/jobs/1",
                conns,
                Duration::from_secs(secs),
            ))
        })
    };
    let mut ratios = Vec::new();
    let (mut cpu_a, mut cpu_b) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, ca) = load("bench-plain", plain);
        let (b, cb) = load("bench-plugin", with_plugin);
        println!(
            "  round {round}: no plugins {:>8.0} req/s {ca:>5.1} us cpu/req p99 {:.3} ms | {label} {:>8.0} req/s {cb:>5.1} us p99 {:.3} ms | errors {}",
            a.rps, a.p99.as_secs_f64() * 1e3, b.rps, b.p99.as_secs_f64() * 1e3, a.errors + b.errors
        );
        ratios.push(b.rps / a.rps);
        cpu_a.push(ca);
        cpu_b.push(cb);
    }
    let ratio = median(&mut ratios);
    let (ca, cb) = (median(&mut cpu_a), median(&mut cpu_b));
    println!(
        "gateway CPU per request (median): no plugins {ca:.1} us, with {label} {cb:.1} us (+{:.1}); CPU ratio {:.3}",
        cb - ca,
        ca / cb
    );
    println!("\nwith {label} / without, req/s (median of per-round ratios): {ratio:.3}  (target >= 0.90, one plugin) {}",
        if ratio >= 0.9 { "MET" } else { "MISSED" });
    println!(
        "per-round ratios: {:?}",
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(dir).ok();
}
