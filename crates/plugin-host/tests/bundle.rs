//! Host tests of the built-in bundle (`wit/builtin-bundle.wit`), with the probe bundle
//! (`guest-plugins/test-plugins/bundle-probe`) whose members are `member-probe`: consecutive
//! members run in one instance and one call, and each is still its own plugin — its outcome,
//! statistics, failure, tenant, key namespace and switch — and sees and changes a request
//! exactly as the same plugin run alone (`member-probe-plugin`).
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use wasmgate_plugin_host::guests;
use wasmgate_plugin_host::{
    Decision, EngineOptions, FailPolicy, HostServices, LoadedPlugin, MemoryStore, Outcome,
    PluginOutcomes, PluginRuntime, PluginSettings, PluginSource, RequestState, TargetView,
    UpstreamView,
};

fn runtime() -> (PluginRuntime, Arc<MemoryStore>) {
    let (services, kv) = HostServices::in_memory("gateway:");
    (
        PluginRuntime::new(EngineOptions::default(), services).unwrap(),
        kv,
    )
}

/// Settings of member `tag` (`extra`: more config fields).
fn member(tag: &str, extra: &str, policy: FailPolicy) -> (String, PluginSettings) {
    let settings = PluginSettings {
        config_json: format!(r#"{{"tag":"{tag}"{extra}}}"#),
        grants: vec!["kv".into(), "metrics".into()],
        fail_policy: policy,
        ..Default::default()
    };
    (format!("tp-member-{tag}"), settings)
}

/// The probe bundle with `members`, installed as the chain.
async fn bundle(
    rt: &PluginRuntime,
    members: Vec<(String, PluginSettings)>,
) -> Vec<Arc<LoadedPlugin>> {
    let wasm = std::fs::read(guests::TP_BUNDLE_PROBE).unwrap();
    let plugins = rt.load_bundle(&wasm, members).await.unwrap();
    rt.install(plugins.clone(), vec![]);
    plugins
}

/// The probe bundle with members a, b (with fail policy `b`) and c, fail-closed.
async fn abc(rt: &PluginRuntime, b: FailPolicy) -> Vec<Arc<LoadedPlugin>> {
    bundle(
        rt,
        vec![
            member("a", "", FailPolicy::FailClosed),
            member("b", "", b),
            member("c", "", FailPolicy::FailClosed),
        ],
    )
    .await
}

/// The route's targets: one tagged with a region and two workers, one bare and ejected.
#[derive(Debug)]
struct Targets;

impl UpstreamView for Targets {
    fn targets(&self) -> Vec<TargetView> {
        vec![
            TargetView {
                address: "10.0.0.1:8000".into(),
                healthy: true,
                in_flight: 3,
                region: Some("eu-west".into()),
                workers: vec!["gpu-a".into(), "gpu-b".into()],
            },
            TargetView {
                address: "10.0.0.2:8000".into(),
                healthy: false,
                in_flight: 0,
                region: None,
                workers: vec![],
            },
        ]
    }
}

fn request(headers: &[(&str, &[u8])]) -> RequestState {
    let mut s = RequestState {
        upstream: Some(Arc::new(Targets)),
        method: http::Method::POST,
        uri: "/v1/chat/completions?stream=true".parse().unwrap(),
        route: "llm".into(),
        request_id: Some("rid-7".parse().unwrap()),
        client_addr: Some([10, 1, 2, 3].into()),
        ..Default::default()
    };
    for (k, v) in headers {
        s.headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(v).unwrap(),
        );
    }
    s
}

/// Runs the request phase; the decision, the request as it left, and what each plugin did.
async fn run(
    rt: &PluginRuntime,
    headers: &[(&str, &[u8])],
) -> (
    Result<Decision, wasmgate_plugin_host::PluginFailure>,
    RequestState,
    Vec<(String, Outcome)>,
) {
    let mut s = rt
        .session("llm", || request(headers))
        .expect("a plugin applies");
    let d = s.request_headers().await;
    let mut out = PluginOutcomes::default();
    s.record_outcomes(&mut out);
    let outcomes = out.iter().map(|(n, o)| (n.to_string(), o)).collect();
    let state = std::mem::take(&mut *s.state);
    (d, state, outcomes)
}

fn trail(state: &RequestState) -> &str {
    state
        .properties
        .get("probe-trail")
        .map_or("", String::as_str)
}

fn calls(p: &LoadedPlugin) -> (u64, u64) {
    (p.stats.calls.load(Relaxed), p.stats.traps.load(Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_run_in_one_instance_each_with_its_own_outcome_and_statistics() {
    let (rt, _) = runtime();
    let p = abc(&rt, FailPolicy::FailClosed).await;
    let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["tp-member-a", "tp-member-b", "tp-member-c"]);
    for _ in 0..3 {
        let (d, state, outcomes) = run(&rt, &[]).await;
        assert!(
            matches!(
                d,
                Ok(Decision::Continue {
                    upstream_hint: None
                })
            ),
            "{d:?}"
        );
        // Each saw what the one before it set.
        assert_eq!(trail(&state), "a;b;c;");
        assert_eq!(
            outcomes,
            [
                ("tp-member-a".to_string(), Outcome::Continued),
                ("tp-member-b".to_string(), Outcome::Continued),
                ("tp-member-c".to_string(), Outcome::Continued),
            ]
        );
    }
    for m in &p {
        assert_eq!(calls(m), (3, 0), "{}", m.name);
        assert!(m.stats.percentile_us(0.5).is_some());
    }
    // One instance served all three, three times.
    assert_eq!(p[0].live_instances(), 1);
    let (_, state, _) = run(&rt, &[]).await;
    assert_eq!(state.headers["x-member-c-uses"], "4");
    assert_eq!(rt.services().metrics.counter("tp-member-b", "runs"), 4);
}

/// What a request looks like after the view script ran.
#[derive(Debug, PartialEq)]
struct Seen {
    /// What each `request` call answered.
    trace: String,
    /// The request headers it left, in the host's order.
    headers: Vec<(String, Vec<u8>)>,
    /// The response headers it queued.
    queued: Vec<String>,
    /// The properties it left.
    properties: Vec<String>,
}

fn seen(state: &RequestState) -> Seen {
    Seen {
        trace: state.properties["view-trace"].clone(),
        headers: state
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        queued: state
            .queued_response_headers
            .iter()
            .map(|q| format!("{}={:?}:{:?}", q.name, q.value, q.mode))
            .collect(),
        properties: state
            .properties
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sees_and_changes_a_request_exactly_as_the_same_plugin_alone() {
    let headers: &[(&str, &[u8])] = &[
        ("host", b"api.example.com"),
        ("x-api-key", b"k-1"),
        ("x-hidden", b"caf\xc3\xa9"),
        ("x-multi", b"first"),
        ("x-multi", b"second"),
        ("x-remove-me", b"gone"),
        ("x-obs", b"old"),
    ];
    let (settings_name, settings) = member("v", r#","view":true"#, FailPolicy::FailClosed);

    let (alone_rt, _) = runtime();
    let wasm = std::fs::read(guests::TP_MEMBER_PROBE).unwrap();
    let alone = alone_rt
        .load(PluginSource::Builtin, &wasm, settings.clone())
        .await
        .unwrap();
    assert_eq!(alone.name, settings_name);
    alone_rt.install(vec![alone], vec![]);
    let (d, alone_state, _) = run(&alone_rt, headers).await;
    assert!(d.is_ok(), "{d:?}");

    let (member_rt, _) = runtime();
    bundle(&member_rt, vec![(settings_name, settings)]).await;
    let (d, member_state, _) = run(&member_rt, headers).await;
    assert!(d.is_ok(), "{d:?}");

    let alone = seen(&alone_state);
    let member = seen(&member_state);
    assert_eq!(member.trace, alone.trace, "what the request calls answered");
    assert_eq!(member.headers, alone.headers, "the request headers it left");
    assert_eq!(
        member.queued, alone.queued,
        "the response headers it queued"
    );
    assert_eq!(
        member.properties, alone.properties,
        "the properties it left"
    );
    // The script's answers are the host's rules, not just equal: spot-check a few.
    for expected in [
        "key=k-1",
        "mixed=v1",
        "bad-name=-",
        "ctl=-",
        "obs=-",
        "hidden=-",
        "multi=first",
        "removed=-",
        "p=2",
        "status=-",
        "client=10.1.2.3",
        "query=stream=true",
        "targets=10.0.0.1:8000 up 3 eu-west gpu-a+gpu-b,10.0.0.2:8000 down 0 - ",
        "targets-owned=10.0.0.1:8000 up 3 eu-west gpu-a+gpu-b,10.0.0.2:8000 down 0 - ",
    ] {
        assert!(
            alone.trace.split('|').any(|p| p == expected),
            "{expected} in {}",
            alone.trace
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_traps_costs_only_its_own_fail_policy() {
    let (rt, _) = runtime();
    let p = abc(&rt, FailPolicy::FailOpen).await;
    // b (fail-open) traps: a's changes stand, b is skipped, c runs in a fresh instance.
    let (d, state, outcomes) = run(&rt, &[("x-panic", b"b")]).await;
    assert!(matches!(d, Ok(Decision::Continue { .. })), "{d:?}");
    assert_eq!(trail(&state), "a;c;");
    assert!(state.headers.contains_key("x-member-a-uses"));
    assert!(!state.headers.contains_key("x-member-b-uses"));
    assert_eq!(
        outcomes,
        [
            ("tp-member-a".to_string(), Outcome::Continued),
            ("tp-member-b".to_string(), Outcome::FailedOpen),
            ("tp-member-c".to_string(), Outcome::Continued),
        ]
    );
    assert_eq!(calls(&p[0]), (1, 0));
    assert_eq!(calls(&p[1]), (1, 1));
    assert_eq!(calls(&p[2]), (1, 0));
    // c (fail-closed) traps: the request fails, naming c.
    let (d, _, outcomes) = run(&rt, &[("x-panic", b"c")]).await;
    match d {
        Err(f) => assert_eq!(f.plugin, "tp-member-c"),
        other => panic!("expected c's failure, got {other:?}"),
    }
    assert_eq!(outcomes[2], ("tp-member-c".to_string(), Outcome::Failed));
    assert_eq!(calls(&p[2]), (2, 1));
    // The trapped instances were replaced: the next request is served in full.
    let (d, state, _) = run(&rt, &[]).await;
    assert!(d.is_ok());
    assert_eq!(trail(&state), "a;b;c;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_stops_the_run_and_a_route_hint_is_the_hosts() {
    let (rt, _) = runtime();
    abc(&rt, FailPolicy::FailClosed).await;
    let (d, state, outcomes) = run(&rt, &[("x-answer", b"b")]).await;
    match d {
        Ok(Decision::Respond(r)) => {
            assert_eq!(r.status, 418);
            assert!(r
                .headers
                .iter()
                .any(|h| h.name == "x-answered-by" && h.value == "b"));
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["request_id"], "rid-7");
        }
        other => panic!("expected b's answer, got {other:?}"),
    }
    assert_eq!(trail(&state), "a;b;");
    assert_eq!(outcomes.len(), 2, "c never ran: {outcomes:?}");
    assert_eq!(outcomes[1].1, Outcome::Answered);
    let (d, _, outcomes) = run(&rt, &[("x-route", b"a"), ("x-route-to", b"10.0.0.9:80")]).await;
    match d {
        Ok(Decision::Continue { upstream_hint }) => {
            assert_eq!(upstream_hint.as_deref(), Some("10.0.0.9:80"))
        }
        other => panic!("expected a hint, got {other:?}"),
    }
    assert_eq!(outcomes[0].1, Outcome::Routed);
    assert_eq!(outcomes[2].1, Outcome::Continued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_keep_their_own_namespaces_and_grants_and_a_new_tenant_gets_its_own_instance() {
    let (rt, kv) = runtime();
    let mut denied = member("b", r#","kv":true"#, FailPolicy::FailClosed);
    denied.1.grants = vec!["metrics".into()];
    let p = bundle(
        &rt,
        vec![
            member(
                "a",
                r#","kv":true,"set_tenant":true"#,
                FailPolicy::FailClosed,
            ),
            denied,
            member("c", r#","kv":true"#, FailPolicy::FailClosed),
        ],
    )
    .await;
    let (_, state, _) = run(&rt, &[]).await;
    assert_eq!(state.headers["x-member-a-kv"], "1");
    assert_eq!(state.headers["x-member-b-kv"], "denied");
    assert_eq!(state.headers["x-member-c-kv"], "1");
    assert_eq!(
        kv.keys(),
        ["gateway:tp-member-a:hits", "gateway:tp-member-c:hits"]
    );
    // a sets the tenant: b and c run in the tenant's instance, with the tenant's keys.
    let (d, state, _) = run(&rt, &[("x-tenant", b"acme")]).await;
    assert!(d.is_ok());
    assert_eq!(trail(&state), "a;b;c;");
    assert_eq!(state.headers["x-member-a-tenant"], "acme");
    assert_eq!(state.headers["x-member-c-tenant"], "acme");
    assert_eq!(
        state.headers["x-member-a-kv"], "2",
        "a ran before the tenant was set"
    );
    assert_eq!(state.headers["x-member-c-kv"], "1");
    assert!(kv
        .keys()
        .contains(&"gateway:t:acme:tp-member-c:hits".to_string()));
    assert_eq!(state.headers["x-member-c-uses"], "1", "a fresh instance");
    assert_eq!(p[0].live_instances(), 2, "the shared instance and acme's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_member_is_skipped_and_the_others_still_run() {
    let (rt, _) = runtime();
    let p = abc(&rt, FailPolicy::FailClosed).await;
    p[1].set_enabled(false);
    let (d, state, outcomes) = run(&rt, &[]).await;
    assert!(d.is_ok());
    assert_eq!(trail(&state), "a;c;");
    assert_eq!(outcomes[1], ("tp-member-b".to_string(), Outcome::Skipped));
    assert_eq!(calls(&p[1]), (0, 0));
    p[1].set_enabled(true);
    let (_, state, _) = run(&rt, &[]).await;
    assert_eq!(trail(&state), "a;b;c;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_member_that_is_not_a_member_is_refused_with_the_reason() {
    let (rt, _) = runtime();
    let wasm = std::fs::read(guests::TP_BUNDLE_PROBE).unwrap();
    let e = rt
        .load_bundle(
            &wasm,
            vec![
                member("a", "", FailPolicy::FailClosed),
                ("auth".to_string(), PluginSettings::default()),
            ],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`auth` is not a member of the probe bundle"),
        "{e}"
    );
    let e = rt
        .load_bundle(
            &wasm,
            vec![(
                "tp-member-x".to_string(),
                PluginSettings {
                    config_json: r#"{"tag":"y"}"#.into(),
                    ..Default::default()
                },
            )],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("says its name is `tp-member-y`"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_load_as_one_or_import_what_only_the_bundle_may() {
    let (rt, _) = runtime();
    let bundle = std::fs::read(guests::TP_BUNDLE_PROBE).unwrap();
    let e = rt
        .load(PluginSource::Builtin, &bundle, PluginSettings::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "imports `wasmgate:plugin/bundle@0.1.0`, which only wasmgate's built-in bundle may use"
        ),
        "{e}"
    );
    // And a plugin is not a bundle.
    let plugin = std::fs::read(guests::TP_MEMBER_PROBE).unwrap();
    let e = rt
        .load_bundle(&plugin, vec![member("a", "", FailPolicy::FailClosed)])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("init-members"), "{e}");
}
