//! criterion: the plugin hot path. `cargo bench --bench plugin_call`
//! - a warm `on-request-headers` call that reads one header (the request has 1 header);
//! - the same with 20 headers of 40 B in the request (the plugin still reads one);
//! - the same copying all 20 headers (`get-headers`), to show what by-value costs;
//! - checkout + return of a pooled instance;
//! - a fresh instance (instantiate + `init`).
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use wasmgate_plugin_host::{
    guests, HostServices, LoadedPlugin, PluginRuntime, PluginSettings, PluginSource, RequestState,
};

#[path = "../src/allocator.rs"]
mod allocator;

fn state(headers: usize) -> Box<RequestState> {
    let mut s = RequestState {
        method: http::Method::POST,
        uri: "/v1/chat/completions".parse().unwrap(),
        route: "llm".into(),
        ..Default::default()
    };
    s.headers.insert("x-one", "value".parse().unwrap());
    for i in 1..headers {
        let name = http::HeaderName::from_bytes(format!("x-header-{i:02}").as_bytes()).unwrap();
        s.headers.insert(name, "v".repeat(28).parse().unwrap());
    }
    Box::new(s)
}

fn load(rt: &tokio::runtime::Runtime, read: &str) -> (PluginRuntime, Arc<LoadedPlugin>) {
    rt.block_on(async {
        let (services, _) = HostServices::in_memory("gateway:");
        let runtime = PluginRuntime::new(Default::default(), services).unwrap();
        let wasm = std::fs::read(guests::TP_BENCH).unwrap();
        let settings = PluginSettings {
            config_json: format!(r#"{{"read":"{read}"}}"#),
            ..Default::default()
        };
        let p = runtime
            .load(PluginSource::Builtin, &wasm, settings)
            .await
            .unwrap();
        (runtime, p)
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("plugin");

    for (name, read, headers) in [
        ("warm call, 1 header, reads 1", "one", 1),
        ("warm call, 20 headers, reads 1", "one", 20),
        ("warm call, 20 headers, copies all", "all", 20),
    ] {
        let (_runtime, p) = load(&rt, read);
        let mut checkout = rt.block_on(p.checkout(None)).unwrap();
        let inst = checkout.inst.as_mut().unwrap();
        let mut s = state(headers);
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(p.call_request_headers(inst, &mut s)).unwrap());
        });
    }

    let (_runtime, p) = load(&rt, "none");
    g.bench_function("checkout + return", |b| {
        b.iter(|| {
            let c = rt.block_on(p.checkout(None)).unwrap();
            c.give_back(false);
        });
    });
    g.bench_function("fresh instance (instantiate + init)", |b| {
        b.iter(|| {
            p.recycle();
            let c = rt.block_on(p.checkout(None)).unwrap();
            c.give_back(false);
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
