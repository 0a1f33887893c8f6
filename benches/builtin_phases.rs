//! criterion: each built-in plugin's phase cost, warm instance, in-memory state — what one
//! request pays per built-in on top of the proxy. `cargo bench --bench builtin_phases`
//! (docs/performance.md). The request carries 8 ordinary headers.
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use wasmgate_config::{Config, RouterStrategy, Secret};
use wasmgate_plugin_host::{
    builtins, guests, HostServices, LoadedPlugin, PluginRuntime, PluginSource, RequestState,
    TargetView, UpstreamView,
};

/// Two targets, one busier: what the proxy's upstream reports to a router.
#[derive(Debug)]
struct TwoTargets;

impl UpstreamView for TwoTargets {
    fn targets(&self) -> Vec<TargetView> {
        (0..2)
            .map(|i| TargetView {
                address: format!("10.0.0.{i}:8000"),
                healthy: true,
                in_flight: i,
                region: Some(if i == 0 { "us-east" } else { "eu-west" }.into()),
                workers: vec![format!("gpu-{i}")],
            })
            .collect()
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

fn request() -> Box<RequestState> {
    let mut s = RequestState {
        method: http::Method::GET,
        uri: "/v1/models?limit=10".parse().unwrap(),
        route: "llm".into(),
        client_addr: Some("10.1.2.3".parse().unwrap()),
        request_id: Some("0b9f6f0e-5c1e-4c7b-9a57-2d1f1e2f3a4b".parse().unwrap()),
        upstream: Some(Arc::new(TwoTargets)),
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
    ] {
        s.headers.insert(k, v.parse().unwrap());
    }
    Box::new(s)
}

fn load(
    rt: &tokio::runtime::Runtime,
    runtime: &PluginRuntime,
    name: &str,
    keys: usize,
) -> Arc<LoadedPlugin> {
    let settings = builtins::enabled(&config(keys))
        .unwrap()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1;
    let wasm = guests::BUILTINS.iter().find(|(n, _)| *n == name).unwrap().1;
    rt.block_on(runtime.load(PluginSource::Builtin, wasm, settings))
        .unwrap()
}

#[derive(Clone, Copy)]
enum Phase {
    RequestHeaders,
    RequestBody,
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (services, _) = HostServices::in_memory("gateway:");
    let runtime = PluginRuntime::new(Default::default(), services).unwrap();
    let mut g = c.benchmark_group("builtin");
    let body = vec![b'x'; 1024];
    let cases: [(&str, &str, Phase); 9] = [
        (
            "auth: API key, on-request-headers",
            "auth",
            Phase::RequestHeaders,
        ),
        (
            "auth: API key among 100, on-request-headers",
            "auth",
            Phase::RequestHeaders,
        ),
        (
            "rate-limit: sliding window hit, on-request-headers",
            "rate-limit",
            Phase::RequestHeaders,
        ),
        (
            "cache: lookup (miss), on-request-headers",
            "cache",
            Phase::RequestHeaders,
        ),
        (
            "router: least-connections of 2, on-request-headers",
            "router",
            Phase::RequestHeaders,
        ),
        (
            "cors: simple request, on-request-headers",
            "cors",
            Phase::RequestHeaders,
        ),
        (
            "security-headers: 9 headers queued, on-request-headers",
            "security-headers",
            Phase::RequestHeaders,
        ),
        (
            "request-signing: on-request-headers",
            "request-signing",
            Phase::RequestHeaders,
        ),
        (
            "request-signing: 1 KiB body, on-request-body",
            "request-signing",
            Phase::RequestBody,
        ),
    ];
    for (label, name, phase) in cases {
        let keys = if label.contains("among 100") { 100 } else { 1 };
        let p = load(&rt, &runtime, name, keys);
        let mut checkout = rt.block_on(p.checkout(None)).unwrap();
        let inst = checkout.inst.as_mut().unwrap();
        let mut s = request();
        g.bench_function(label, |b| {
            b.iter(|| {
                // What a call consumed or queued is put back, so every iteration is the same.
                s.headers
                    .insert("x-api-key", "bench-key-1".parse().unwrap());
                s.queued_response_headers.clear();
                s.response_headers.clear();
                s.response_status = Some(200);
                let r = match phase {
                    Phase::RequestHeaders => rt
                        .block_on(p.call_request_headers(inst, &mut s))
                        .map(|_| ()),
                    Phase::RequestBody => rt
                        .block_on(p.call_with_state(inst, &mut s, async |b, st| {
                            b.call_on_request_body(st, &body, true).await
                        }))
                        .map(|_| ()),
                };
                r.unwrap();
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
