//! criterion: what one request pays for each built-in plugin (warm instances, in-memory
//! state), through the session the proxy uses — the request state built, the chain's calls, the
//! response head's queued headers applied — without the proxy itself. Also the chain
//! auth → rate-limit → router, fused into one call (the default) and each on its own.
//! `cargo bench --bench builtin_phases` (docs/performance.md). The request carries 8 ordinary
//! headers and an API key; "the request alone" is what building it costs, to subtract.
//! `BENCH_PROFILE=<case label> BENCH_ITERS=<n>` runs one case without criterion, under a
//! profiler (`BENCH_PERF_MAP=1` names the plugins' functions in `/tmp/perf-<pid>.map`).
use std::sync::Arc;

use criterion::{criterion_group, Criterion};
use wasmgate_config::{Config, RouterStrategy, Secret};
use wasmgate_plugin_host::{
    builtins, EngineOptions, HostServices, PluginRuntime, RequestState, TargetView, UpstreamView,
};

#[path = "../src/allocator.rs"]
mod allocator;

/// Two targets, one busier: what the proxy's upstream reports to a router.
#[derive(Debug)]
struct TwoTargets(Vec<TargetView>);

impl TwoTargets {
    fn new() -> Self {
        TwoTargets(
            (0..2)
                .map(|i| TargetView {
                    address: format!("10.0.0.{i}:8000"),
                    healthy: true,
                    in_flight: i,
                    region: Some(if i == 0 { "us-east" } else { "eu-west" }.into()),
                    workers: vec![format!("gpu-{i}")],
                })
                .collect(),
        )
    }
}

impl UpstreamView for TwoTargets {
    fn targets(&self) -> Vec<TargetView> {
        self.0.clone()
    }
    fn each_target(&self, f: &mut dyn FnMut(wasmgate_plugin_host::TargetRef<'_>)) {
        for t in &self.0 {
            f(wasmgate_plugin_host::TargetRef {
                address: &t.address,
                healthy: t.healthy,
                in_flight: t.in_flight,
                region: t.region.as_deref(),
                workers: &t.workers,
            });
        }
    }
}

/// Every built-in on; `auth` accepts `keys` API keys, the request's (`bench-key-1`) last.
fn config(keys: usize) -> Config {
    let mut c = Config::default();
    c.auth.enabled = true;
    c.auth.api_keys = (1..=keys)
        .rev()
        .map(|i| Secret::new(format!("bench-key-{i}")))
        .collect();
    c.rate_limit.enabled = true;
    c.rate_limit.max_requests = u64::MAX >> 2;
    c.cache.enabled = true;
    c.cors.enabled = true;
    c.security_headers.enabled = true;
    c.router.strategy = RouterStrategy::LeastConnections;
    c.request_signing.secret = Some(Secret::new("bench-signing-secret"));
    c
}

fn request(upstream: &Arc<dyn UpstreamView>) -> RequestState {
    let mut s = RequestState {
        method: http::Method::GET,
        uri: "/v1/models?limit=10".parse().unwrap(),
        route: "llm".into(),
        client_addr: Some("10.1.2.3".parse().unwrap()),
        request_id: Some("0b9f6f0e-5c1e-4c7b-9a57-2d1f1e2f3a4b".parse().unwrap()),
        upstream: Some(upstream.clone()),
        ..Default::default()
    };
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("origin", "https://app.example.com"),
        ("content-type", "application/json"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-api-key", "bench-key-1"),
    ] {
        s.headers.insert(k, v.parse().unwrap());
    }
    s
}

/// A runtime with the built-ins `names` installed (fused when `fuse`), with room for
/// `instances` instances.
fn runtime(
    rt: &tokio::runtime::Runtime,
    names: &[&str],
    keys: usize,
    fuse: bool,
    instances: u32,
) -> PluginRuntime {
    let (services, _) = HostServices::in_memory("gateway:");
    let opts = EngineOptions {
        total_instances: instances,
        perf_map: std::env::var_os("BENCH_PERF_MAP").is_some(),
        ..Default::default()
    };
    let runtime = PluginRuntime::new(opts, services).unwrap();
    let chosen = builtins::enabled(&config(keys))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| names.contains(n))
        .collect();
    rt.block_on(builtins::install(&runtime, chosen, fuse))
        .unwrap();
    runtime
}

/// A case: its label, the built-ins in the chain, how many API keys auth has, fused or not.
type Case = (&'static str, &'static [&'static str], usize, bool);

const CASES: [Case; 11] = [
    ("auth: API key", &["auth"], 1, true),
    ("auth: API key among 100", &["auth"], 100, true),
    ("rate-limit: sliding-window hit", &["rate-limit"], 1, true),
    ("cache: lookup (miss)", &["cache"], 1, true),
    ("router: least-connections of 2", &["router"], 1, true),
    ("cors: simple request", &["cors"], 1, true),
    (
        "security-headers: 9 headers queued",
        &["security-headers"],
        1,
        true,
    ),
    ("request-signing: 1 KiB body", &["request-signing"], 1, true),
    (
        "chain auth -> rate-limit -> router, fused",
        &["auth", "rate-limit", "router"],
        1,
        true,
    ),
    (
        "chain auth -> rate-limit -> router, each alone",
        &["auth", "rate-limit", "router"],
        1,
        false,
    ),
    (
        "chain security-headers -> cors -> auth -> rate-limit, fused",
        &["security-headers", "cors", "auth", "rate-limit"],
        1,
        true,
    ),
];

/// What one request of a case does: the session, its request phase (and body, when the chain
/// signs), the response head.
fn one_request(
    rt: &tokio::runtime::Runtime,
    runtime: &PluginRuntime,
    upstream: &Arc<dyn UpstreamView>,
    body: Option<&[u8]>,
) {
    let mut s = runtime
        .session("llm", || request(upstream))
        .expect("the built-ins apply");
    rt.block_on(async {
        let d = s.request_headers().await.unwrap();
        std::hint::black_box(d);
        if let Some(body) = body {
            s.request_body(body, true).await.unwrap();
        }
        let mut head = http::HeaderMap::new();
        s.response_headers(200, &mut head).await.unwrap();
        std::hint::black_box(head);
    });
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = current_thread();
    let upstream: Arc<dyn UpstreamView> = Arc::new(TwoTargets::new());
    let mut g = c.benchmark_group("builtin");
    g.bench_function("the request alone (no plugin)", |b| {
        b.iter(|| std::hint::black_box(request(&upstream)));
    });
    let body = vec![b'x'; 1024];
    for (label, names, keys, fuse) in CASES {
        let runtime = runtime(&rt, names, keys, fuse, 1000);
        let body = names.contains(&"request-signing").then_some(&body[..]);
        g.bench_function(label, |b| {
            b.iter(|| one_request(&rt, &runtime, &upstream, body));
        });
    }
    g.finish();
}

/// `BENCH_PROFILE=<label> BENCH_ITERS=<n>`: runs one case's request `n` times without
/// criterion, for a profiler (docs/performance.md: callgrind). The engine has room for the
/// chain's instances and no more: valgrind cannot reserve the address space of the default
/// pool.
fn profile(label: &str) {
    let (_, names, keys, fuse) = CASES
        .into_iter()
        .find(|c| c.0 == label)
        .unwrap_or_else(|| panic!("BENCH_PROFILE: no case {label:?}"));
    let iters: u64 = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = current_thread();
    let upstream: Arc<dyn UpstreamView> = Arc::new(TwoTargets::new());
    let instances = if fuse { 1 } else { names.len() as u32 };
    let runtime = runtime(&rt, names, keys, fuse, instances);
    let body = vec![b'x'; 1024];
    let body = names.contains(&"request-signing").then_some(&body[..]);
    for _ in 0..iters {
        one_request(&rt, &runtime, &upstream, body);
    }
}

criterion_group!(benches, bench);

fn main() {
    match std::env::var("BENCH_PROFILE") {
        Ok(label) => profile(&label),
        Err(_) => {
            benches();
            Criterion::default().configure_from_args().final_summary();
        }
    }
}
