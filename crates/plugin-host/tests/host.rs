//! Host tests: every guest plugin, loaded through the real runtime, under its budgets.
use std::sync::Arc;

use wasmgate_plugin_host::guests;
use wasmgate_plugin_host::{
    CallFailure, Decision, EngineOptions, FailPolicy, HostServices, MemoryStore, PluginError,
    PluginRuntime, PluginSettings, PluginSource, PluginState, RequestState,
};

fn runtime() -> (PluginRuntime, Arc<MemoryStore>) {
    let (services, kv) = HostServices::in_memory("gateway:");
    (
        PluginRuntime::new(EngineOptions::default(), services).unwrap(),
        kv,
    )
}

fn request(headers: &[(&str, &str)]) -> RequestState {
    let mut s = RequestState {
        method: http::Method::GET,
        uri: "/x".parse().unwrap(),
        route: "default".into(),
        request_id: Some("rid-1".parse().unwrap()),
        client_addr: Some([127, 0, 0, 1].into()),
        ..Default::default()
    };
    for (k, v) in headers {
        s.headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    s
}

async fn install(
    rt: &PluginRuntime,
    path: &str,
    settings: PluginSettings,
) -> Arc<wasmgate_plugin_host::LoadedPlugin> {
    let wasm = std::fs::read(path).unwrap();
    let p = rt
        .load(PluginSource::File(path.into()), &wasm, settings)
        .await
        .unwrap();
    rt.install(vec![p.clone()], vec![]);
    p
}

async fn run(
    rt: &PluginRuntime,
    headers: &[(&str, &str)],
) -> (
    Result<Decision, wasmgate_plugin_host::PluginFailure>,
    RequestState,
) {
    let mut s = rt
        .session("default", || request(headers))
        .expect("a plugin applies");
    let d = s.request_headers().await;
    let state = std::mem::take(&mut *s.state);
    (d, state)
}

/// Waits until every instance of `p` is back in its pool (`on-log` runs in a task after the
/// request, so an instance returns shortly after the response).
async fn settled(p: &wasmgate_plugin_host::LoadedPlugin) {
    for _ in 0..200 {
        if p.idle_instances() == p.live_instances() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("instances of {} never came back", p.name);
}

fn body_json(d: &Decision) -> serde_json::Value {
    match d {
        Decision::Respond(r) => serde_json::from_slice(&r.body).unwrap(),
        other => panic!("expected a local response, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_header_sets_a_request_header_from_its_config() {
    let (rt, _) = runtime();
    let settings = PluginSettings {
        config_json: r#"{"name":"x-team","value":"gpu"}"#.into(),
        ..Default::default()
    };
    let p = install(&rt, guests::ADD_HEADER, settings).await;
    assert_eq!(
        (p.name.as_str(), p.version.as_str()),
        ("add-header", "0.1.0")
    );
    assert_eq!(p.phases.names(), vec!["request-headers"]);
    let (d, state) = run(&rt, &[]).await;
    assert!(matches!(
        d,
        Ok(Decision::Continue {
            upstream_hint: None
        })
    ));
    assert_eq!(state.headers["x-team"], "gpu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_by_the_cpu_budget_and_the_next_request_is_served() {
    let (rt, _) = runtime();
    let p = install(
        &rt,
        guests::TP_LOOP,
        PluginSettings {
            cpu_budget_ms: 20,
            ..Default::default()
        },
    )
    .await;
    let (d, _) = run(&rt, &[("x-trigger", "1")]).await;
    let failure = d.unwrap_err();
    assert_eq!(failure.plugin, "tp-loop");
    assert_eq!(failure.failure, CallFailure::CpuBudget);
    assert_eq!(
        p.stats.cpu_kills.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let (d, _) = run(&rt, &[]).await;
    assert!(d.is_ok(), "a fresh instance serves the next request");
    assert_eq!(p.state(), PluginState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_the_cap_and_costs_only_its_instance() {
    let (rt, _) = runtime();
    // A CPU budget it cannot reach first (the epoch deadline is wall time): only memory stops it.
    let p = install(
        &rt,
        guests::TP_MEMORY_BOMB,
        PluginSettings {
            memory_bytes: 16 << 20,
            cpu_budget_ms: 10_000,
            ..Default::default()
        },
    )
    .await;
    let (d, _) = run(&rt, &[("x-trigger", "1")]).await;
    assert_eq!(d.unwrap_err().failure, CallFailure::Memory);
    assert_eq!(
        p.stats
            .memory_kills
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(run(&rt, &[]).await.0.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_follow_the_fail_policy_and_repeated_traps_disable_the_plugin() {
    let (rt, _) = runtime();
    let open = install(
        &rt,
        guests::TP_PANIC,
        PluginSettings {
            fail_policy: FailPolicy::FailOpen,
            ..Default::default()
        },
    )
    .await;
    let (d, state) = run(&rt, &[("x-trigger", "1")]).await;
    assert!(
        matches!(d, Ok(Decision::Continue { .. })),
        "fail-open: the request goes on without the plugin"
    );
    assert!(state.headers.get("x-passed-tp-panic").is_none());
    assert_eq!(
        open.stats.traps.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let (rt, _) = runtime();
    let closed = install(
        &rt,
        guests::TP_PANIC,
        PluginSettings {
            disable_after_traps: 3,
            ..Default::default()
        },
    )
    .await;
    for _ in 0..3 {
        let (d, _) = run(&rt, &[("x-trigger", "1")]).await;
        assert!(
            matches!(d.unwrap_err().failure, CallFailure::Trap(ref m) if m.contains("unreachable") || m.contains("panic"))
        );
    }
    assert_eq!(closed.state(), PluginState::Failed);
    assert!(closed.failure().unwrap().contains("3 traps"));
    assert!(
        rt.session("default", || request(&[])).is_none(),
        "a failed plugin leaves the chain"
    );
    closed.set_enabled(true);
    assert_eq!(
        run(&rt, &[]).await.1.headers["x-passed-tp-panic"],
        "1",
        "re-enabled by an operator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_keys_stay_in_the_plugins_namespace() {
    let (rt, kv) = runtime();
    install(
        &rt,
        guests::TP_KV_ESCAPE,
        PluginSettings {
            grants: vec!["kv".into()],
            ..Default::default()
        },
    )
    .await;
    let (d, _) = run(&rt, &[]).await;
    let report = body_json(&d.unwrap());
    assert_eq!(report["write_worker"], "ok:()");
    assert_eq!(report["read_back"], "ok:Some(\"pwned\")");
    assert!(report["write_empty"]
        .as_str()
        .unwrap()
        .starts_with("denied"));
    assert!(report["write_huge"].as_str().unwrap().starts_with("denied"));
    assert_eq!(report["incr"], "ok:1");
    for key in kv.keys() {
        assert!(
            key.starts_with("gateway:tp-kv-escape:"),
            "{key} escaped the namespace"
        );
    }
    assert!(
        kv.keys()
            .contains(&"gateway:tp-kv-escape:../../worker:1:heartbeat".to_string()),
        "a climbing key is just a name inside the namespace: {:?}",
        kv.keys()
    );
    assert!(report["shared_worker"]
        .as_str()
        .unwrap()
        .starts_with("denied"));

    // Without the grant, every call is denied.
    let (rt, kv) = runtime();
    let p = install(&rt, guests::TP_KV_ESCAPE, PluginSettings::default()).await;
    assert_eq!(p.refused, vec!["kv".to_string()]);
    let report = body_json(&run(&rt, &[]).await.0.unwrap());
    assert!(report["write_worker"]
        .as_str()
        .unwrap()
        .starts_with("denied:capability"));
    assert!(kv.keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_gives_no_files_and_no_environment() {
    let (rt, _) = runtime();
    install(&rt, guests::TP_READ_FILE, PluginSettings::default()).await;
    let report = body_json(&run(&rt, &[]).await.0.unwrap());
    assert!(
        report["file"].as_str().unwrap().starts_with("error"),
        "{report}"
    );
    assert!(
        report["dir"].as_str().unwrap().starts_with("error"),
        "{report}"
    );
    assert_eq!(report["env"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_reused_and_never_shared_between_tenants() {
    let (rt, _) = runtime();
    let wasm = std::fs::read(guests::TP_CHAIN_PROBE).unwrap();
    let load = |tag: &str, tenant: Option<&str>, order| {
        let config = match tenant {
            Some(t) => format!(r#"{{"tag":"{tag}","set_tenant":"{t}"}}"#),
            None => format!(r#"{{"tag":"{tag}"}}"#),
        };
        rt.load(
            PluginSource::Builtin,
            &wasm,
            PluginSettings {
                config_json: config,
                order,
                grants: vec!["kv".into()],
                ..Default::default()
            },
        )
    };
    let a = load("a", None, 1).await.unwrap();
    let b = load("b", None, 2).await.unwrap();
    rt.install(vec![b.clone(), a.clone()], vec![]);
    for i in 1..=3 {
        settled(&a).await;
        settled(&b).await;
        let (d, s) = run(&rt, &[]).await;
        assert!(d.is_ok());
        assert_eq!(
            s.headers["x-probe-a-uses"],
            i.to_string().as_str(),
            "one instance, reused"
        );
        assert_eq!(
            s.properties["probe-trail"], "a;b;",
            "order 1 runs before order 2, properties flow"
        );
    }
    // Tenants: `a` sets the tenant, so `b` runs in a per-tenant pool with fresh instances.
    let (rt2, _) = (runtime().0, ());
    let a = rt2
        .load(
            PluginSource::Builtin,
            &wasm,
            PluginSettings {
                config_json: r#"{"tag":"a","set_tenant":"acme"}"#.into(),
                order: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let b = rt2
        .load(
            PluginSource::Builtin,
            &wasm,
            PluginSettings {
                config_json: r#"{"tag":"b"}"#.into(),
                order: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    rt2.install(vec![a, b.clone()], vec![]);
    let (_, s) = run(&rt2, &[]).await;
    assert_eq!(s.headers["x-probe-b-tenant"], "acme");
    assert_eq!(
        s.headers["x-probe-b-uses"], "1",
        "b's tenant pool starts with a new instance, not the probe"
    );
    settled(&b).await;
    assert_eq!(
        b.live_instances(),
        2,
        "the untenanted probe instance and one for tenant acme"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_refused_with_the_reason() {
    let (rt, _) = runtime();
    let load = |bytes: Vec<u8>, settings| {
        let rt = &rt;
        async move { rt.load(PluginSource::Builtin, &bytes, settings).await }
    };
    assert!(matches!(
        load(b"not wasm".to_vec(), PluginSettings::default()).await,
        Err(PluginError::Compile(_))
    ));
    // A valid but empty component: it does not export the world.
    let empty_component = b"\0asm\x0d\x00\x01\x00".to_vec();
    let err = load(empty_component, PluginSettings::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PluginError::World(_)), "{err}");
    let wasm = std::fs::read(guests::ADD_HEADER).unwrap();
    let err = load(
        wasm,
        PluginSettings {
            config_json: r#"{"name": 5}"#.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, PluginError::Init(m) if m.contains("invalid plugin config")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_is_cached_on_disk() {
    let dir = std::env::temp_dir().join(format!("wasmgate-cache-{}", std::process::id()));
    let (services, _) = HostServices::in_memory("gateway:");
    let opts = EngineOptions {
        cache_dir: Some(dir.clone()),
        ..Default::default()
    };
    let wasm = std::fs::read(guests::ADD_HEADER).unwrap();
    let rt = PluginRuntime::new(opts.clone(), services.clone()).unwrap();
    let first = rt
        .load(PluginSource::Builtin, &wasm, PluginSettings::default())
        .await
        .unwrap();
    assert!(!first.from_cache);
    // A new runtime (a restart) finds it.
    let rt = PluginRuntime::new(opts, services).unwrap();
    let second = rt
        .load(PluginSource::Builtin, &wasm, PluginSettings::default())
        .await
        .unwrap();
    assert!(second.from_cache, "a restart does not recompile");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_retired_after_max_uses() {
    let (rt, _) = runtime();
    let settings = PluginSettings {
        config_json: r#"{"tag":"r"}"#.into(),
        max_uses: 2,
        ..Default::default()
    };
    let p = install(&rt, guests::TP_CHAIN_PROBE, settings).await;
    let mut uses = Vec::new();
    for _ in 0..5 {
        settled(&p).await;
        let (_, s) = run(&rt, &[]).await;
        uses.push(s.headers["x-probe-r-uses"].to_str().unwrap().to_string());
    }
    assert_eq!(
        uses,
        ["1", "2", "1", "2", "1"],
        "a new instance after every 2 requests"
    );
    assert!(
        p.stats
            .instantiations
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_plugin_reads_what_its_config_says() {
    let (rt, _) = runtime();
    for read in ["one", "all", "none"] {
        let settings = PluginSettings {
            config_json: format!(r#"{{"read":"{read}"}}"#),
            ..Default::default()
        };
        let p = install(&rt, guests::TP_BENCH, settings).await;
        let (d, s) = run(&rt, &[("x-one", "1")]).await;
        assert!(matches!(d, Ok(Decision::Continue { .. })));
        assert_eq!(s.headers["x-one"], "1", "headers come back after the call");
        assert_eq!(p.stats.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
    let wasm = std::fs::read(guests::TP_BENCH).unwrap();
    let err = rt
        .load(PluginSource::Builtin, &wasm, PluginSettings::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PluginError::Init(_)),
        "config is required: {err}"
    );
}
