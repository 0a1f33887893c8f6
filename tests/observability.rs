//! Health probes and the effective configuration through the real gateway (docs/api.md).
mod common;

use common::{client, expect_error};
use wasmgate_config::Secret;
use wasmgate_testkit::{gateway, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_healthy_degraded_or_unhealthy_with_probes_for_kubernetes() {
    let (a, a_health) = upstream().health_switch("/health");
    let a = a.spawn().await;
    let (b, b_health) = upstream().health_switch("/health");
    let b = b.spawn().await;
    let gw = gateway()
        .route("/", "default", &[a.url(), b.url()])
        .config(|c| common::fast_health_checks(c, 1))
        .spawn()
        .await;
    let c = client();
    let get = |path: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            let r = c.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (code, h) = get("/gateway/health").await;
    assert_eq!((code, h["status"].as_str()), (200, Some("healthy")), "{h}");
    assert_eq!(h["checks"]["redis"]["backend"], "memory");
    assert_eq!(h["checks"]["upstreams"]["default"]["total"], 2);
    assert!(h["version"].is_string() && h["uptime_s"].is_u64());
    assert!(
        !h.to_string().contains(&a.addr().to_string()),
        "no target address on an endpoint without a credential"
    );

    use std::sync::atomic::Ordering::SeqCst;
    a_health.store(false, SeqCst);
    common::eventually("degraded", async || {
        get("/gateway/health").await.1["status"] == "degraded"
    })
    .await;
    assert_eq!(
        get("/gateway/health/ready").await.0,
        200,
        "degraded still serves"
    );

    b_health.store(false, SeqCst);
    common::eventually("unhealthy", async || get("/gateway/health").await.0 == 503).await;
    let (code, ready) = get("/gateway/health/ready").await;
    assert_eq!((code, ready["status"].as_str()), (503, Some("unhealthy")));
    let (code, live) = get("/gateway/health/live").await;
    assert_eq!(
        (code, live["status"].as_str()),
        (200, Some("alive")),
        "alive while unhealthy"
    );

    a_health.store(true, SeqCst);
    common::eventually("healthy again", async || {
        get("/gateway/health/ready").await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_effective_configuration_needs_the_admin_token_and_shows_no_secret() {
    let up = upstream().spawn().await;
    let secrets = [
        "admin-token-value",
        "api-key-value",
        "salt-value",
        "jwt-secret-value",
        "signing-secret-value",
        "injected-header-value",
        "redis-password-value",
    ];
    let gw = gateway()
        .upstream(&up)
        .config(|c| {
            c.admin.token = Some(Secret::new(secrets[0]));
            c.auth.enabled = true;
            c.auth.api_keys = vec![Secret::new(secrets[1])];
            c.auth.token_salt = Some(Secret::new(secrets[2]));
            c.auth.jwt_secret = Some(Secret::new(secrets[3]));
            c.request_signing.secret = Some(Secret::new(secrets[4]));
            c.upstreams
                .get_mut("default")
                .unwrap()
                .inject_headers
                .insert("authorization".into(), Secret::new(secrets[5]));
            c.redis.password = Some(Secret::new(secrets[6]));
        })
        .spawn()
        .await;
    let c = client();
    let r = c.get(gw.url("/gateway/config")).send().await.unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = c
        .get(gw.url("/gateway/config"))
        .bearer_auth(secrets[0])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for s in secrets {
        assert!(!text.contains(s), "`{s}` leaked: {text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["auth"]["api_keys"][0], "[redacted]");
    assert_eq!(v["request_signing"]["secret"], "[redacted]");
    assert_eq!(v["upstreams"]["default"]["targets"][0], up.url());

    // Without an admin token configured: 403, saying how to set one.
    let open = gateway().upstream(&up).spawn().await;
    let r = c.get(open.url("/gateway/config")).send().await.unwrap();
    common::expect_admin_off(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_upstreams_and_plugins_with_bounded_labels() {
    let up = upstream().spawn().await;
    let refusing = wasmgate_testkit::RefusingTarget::bind();
    let dead = refusing.url(); // nothing listens
    let gw = gateway()
        .route("/dead", "dead", std::slice::from_ref(&dead))
        .route("/", "default", &[up.url()])
        .config(|c| {
            c.routes[1].name = Some("api".into());
            c.cache.enabled = true;
            c.cache.paths = vec!["/v1".into()];
            c.auth.enabled = true;
            c.auth.api_keys = vec![Secret::new("metrics-test-key")];
            c.metrics.token = Some(Secret::new("scrape-token"));
        })
        .spawn()
        .await;
    let c = client();
    for i in 0..3 {
        let r = c
            .get(gw.url(&format!("/v1/models/{i}")))
            .header("x-api-key", "metrics-test-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c.get(gw.url("/v1/models/0")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(gw.url("/dead/x"))
        .header("x-api-key", "metrics-test-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);

    let r = c.get(gw.url("/gateway/metrics")).send().await.unwrap();
    expect_error(r, 401, "unauthorized").await;
    let r = c
        .get(gw.url("/gateway/metrics"))
        .bearer_auth("scrape-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let has = |needle: &str| {
        assert!(
            text.lines().any(|l| l.starts_with(needle) || l == needle),
            "no `{needle}` in:\n{text}"
        )
    };
    has(r#"wasmgate_http_requests_total{route="api",method="GET",status="200"} 3"#);
    has(r#"wasmgate_http_requests_total{route="api",method="GET",status="401"} 1"#);
    has(r#"wasmgate_http_requests_total{route="dead",method="GET",status="502"} 1"#);
    has(r#"wasmgate_http_request_duration_seconds_count{route="api"} 4"#);
    has("wasmgate_http_requests_in_flight 1");
    let up_target = up.url()[7..].to_string();
    has(&format!(
        r#"wasmgate_upstream_request_duration_seconds_count{{upstream="default",target="{up_target}"}} 3"#
    ));
    has(&format!(
        r#"wasmgate_upstream_errors_total{{upstream="dead",target="{}",kind="connect"}} 1"#,
        &dead[7..]
    ));
    has(&format!(
        r#"wasmgate_upstream_target_healthy{{upstream="default",target="{up_target}"}} 1"#
    ));
    has(r#"wasmgate_plugin_calls_total{plugin="auth"}"#);
    has(r#"wasmgate_plugin_state{plugin="cache",state="active"} 1"#);
    has("wasmgate_plugin_cache_misses_total 3");
    has(r#"wasmgate_state_up{backend="memory"} 1"#);
    has("wasmgate_workers_active 0");
    has("wasmgate_build_info{version=");
    assert!(text.trim_end().ends_with("# EOF"));
    // Bounded labels: no raw path, no credential.
    assert!(!text.contains("/v1/models"), "{text}");
    assert!(!text.contains("metrics-test-key") && !text.contains("scrape-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genai_token_usage_and_time_to_first_token_by_route_and_model() {
    use wasmgate_testkit::sim::{SimOptions, Simulator};
    let sim = Simulator::spawn(SimOptions {
        token_delay: std::time::Duration::from_millis(20),
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = gateway()
        .route("/v1", "llm", &[sim.url()])
        .config(|c| c.routes[0].name = Some("llm".into()))
        .spawn()
        .await;
    let c = client();
    let chat = |model: &str, stream: bool| {
        serde_json::json!({"model": model, "stream": stream,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "five words in this prompt"}]})
    };
    let mut expected = std::collections::HashMap::<(&str, &str), u64>::new();
    for (model, stream) in [("m-a", false), ("m-a", true), ("m-b", false)] {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat(model, stream))
            .send()
            .await
            .unwrap();
        let text = r.text().await.unwrap();
        // The usage the client saw: the JSON body's, or the stream's last event's.
        let usage = text
            .lines()
            .map(|l| l.strip_prefix("data: ").unwrap_or(l))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter_map(|v| v.get("usage").filter(|u| u.is_object()).cloned())
            .next_back()
            .expect("usage");
        *expected.entry((model, "input")).or_default() += usage["prompt_tokens"].as_u64().unwrap();
        *expected.entry((model, "output")).or_default() +=
            usage["completion_tokens"].as_u64().unwrap();
    }
    // Not an OpenAI-style path: not read.
    let r = c.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = common::text(c.get(gw.url("/gateway/metrics"))).await;
    for ((model, kind), n) in &expected {
        let line = format!(
            "wasmgate_genai_usage_tokens_total{{route=\"llm\",operation=\"chat\",model=\"{model}\",token_type=\"{kind}\"}} {n}"
        );
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("wasmgate_genai_usage_tokens_total{"))
            .count(),
        4,
        "two models, two token types"
    );
    // One stream: its time to first token (the simulator's first event comes after 20 ms).
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let series = |part: &str| {
        format!("wasmgate_genai_time_to_first_token_seconds_{part}{{route=\"llm\",model=\"m-a\"}}")
    };
    assert_eq!(value(&series("count")), 1.0, "streams only");
    let ttft = value(&series("sum"));
    assert!((0.02..2.0).contains(&ttft), "{ttft}");
    assert!(
        !text.contains(
            "wasmgate_genai_time_to_first_token_seconds_count{route=\"llm\",model=\"m-b\"}"
        ),
        "m-b was only asked without streaming"
    );
}
