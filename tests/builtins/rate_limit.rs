//! rate-limit: windows, per-route and per-tenant limits, Redis across replicas, fail-open.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counts_per_client_with_headers_on_every_response() {
    let up = upstream().spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(limited(3))
        .config(|c| c.forwarded.trusted_proxies = vec!["127.0.0.1/32".into()])
        .spawn()
        .await;
    let c = client();
    for remaining in [2, 1, 0] {
        let r = c.get(gw.url("/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit"), "3");
        assert_eq!(header(&r, "x-ratelimit-remaining"), remaining.to_string());
        let reset: u64 = header(&r, "x-ratelimit-reset").parse().unwrap();
        assert!(
            (1..=60).contains(&reset),
            "seconds until a slot frees: {reset}"
        );
    }
    let before = up.request_count();
    let r = c.get(gw.url("/v1/models")).send().await.unwrap();
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    let body = expect_error(r, 429, "rate_limited").await;
    assert!(body["message"].as_str().unwrap().contains("3 requests"));
    assert_eq!(
        up.request_count(),
        before,
        "a refused request never reaches the upstream"
    );

    // Another client (through a trusted proxy) has its own window.
    let r = get_with(
        &c,
        gw.url("/v1/models"),
        &[("x-forwarded-for", "203.0.113.9")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_limits_and_fixed_windows_and_live_reconfiguration() {
    let up = upstream().spawn().await;
    let gw = gateway()
        .route("/v1", "llm", &[up.url()])
        .route("/", "jobs", &[up.url()])
        .config(limited(5))
        .config(|c| {
            c.rate_limit.algorithm = RateLimitAlgorithm::Fixed;
            c.rate_limit.routes.insert("llm".into(), max_only(1));
        })
        .spawn()
        .await;
    let c = client();
    assert_eq!(
        c.get(gw.url("/v1/chat")).send().await.unwrap().status(),
        200
    );
    let r = c.get(gw.url("/v1/chat")).send().await.unwrap();
    assert_eq!(r.status(), 429, "the llm route allows 1");
    assert_eq!(header(&r, "x-ratelimit-limit"), "1");
    let r = c.get(gw.url("/api/v1/jobs")).send().await.unwrap();
    assert_eq!(r.status(), 200, "other routes keep the default");
    assert_eq!(header(&r, "x-ratelimit-limit"), "5");

    // A reload with a new limit takes effect without a restart.
    let mut next = gw.gateway().snapshot().config.as_ref().clone();
    next.rate_limit.routes.clear();
    next.rate_limit.max_requests = 50;
    gw.gateway().reload(next).unwrap();
    common::eventually("the new limit applies", async || {
        let r = c.get(gw.url("/v1/chat")).send().await.unwrap();
        r.headers()
            .get("x-ratelimit-limit")
            .is_some_and(|v| v == "50")
    })
    .await;
}

/// The acceptance check: three gateways, one Redis, 90 concurrent requests, limit 20:
/// exactly 20 pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_sharing_redis_let_exactly_the_limit_through() {
    let redis = RedisServer::start().await;
    let up = upstream().spawn().await;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(
            gateway()
                .upstream(&up)
                .redis(&redis.url())
                .config(limited(20))
                .spawn()
                .await,
        );
    }
    let urls: Vec<String> = gateways.iter().map(|g| g.url("/v1/chat")).collect();
    let statuses = common::burst(90, |i| urls[i % 3].clone()).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 70);
    // The seeds' layout: one sorted set per client under gateway:ratelimit:.
    let py = redis.client().await;
    let n: u64 = fred::interfaces::SortedSetsInterface::zcard(&py, "gateway:ratelimit:127.0.0.1")
        .await
        .unwrap();
    assert_eq!(n, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_limit_fails_open_or_closed_as_configured() {
    let mut redis = RedisServer::start().await;
    let up = upstream().spawn().await;
    let open = gateway()
        .upstream(&up)
        .redis(&redis.url())
        .config(limited(2))
        .spawn()
        .await;
    let closed = gateway()
        .upstream(&up)
        .redis(&redis.url())
        .config(limited(2))
        .config(|c| c.rate_limit.fail_open = false)
        .spawn()
        .await;
    let c = client();
    assert_eq!(c.get(open.url("/a")).send().await.unwrap().status(), 200);
    redis.stop();
    for _ in 0..5 {
        let r = c.get(open.url("/a")).send().await.unwrap();
        assert_eq!(r.status(), 200, "fail-open: served past the limit");
        assert!(r.headers().get("x-ratelimit-limit").is_none());
    }
    let r = c.get(closed.url("/a")).send().await.unwrap();
    expect_error(r, 503, "rate_limit_unavailable").await;
    redis.restart().await;
    common::eventually("limits apply again", async || {
        let r = c.get(open.url("/a")).send().await.unwrap();
        r.headers().contains_key("x-ratelimit-limit")
    })
    .await;
    let plugins = json(c.get(open.url("/gateway/plugins"))).await;
    assert_eq!(plugins["plugins"][0]["name"], "rate-limit");
    assert_eq!(
        plugins["plugins"][0]["source"]["kind"], "builtin",
        "{plugins}"
    );
}

/// ACIP `.env` names turn it on in the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acip_env_names_configure_the_rate_limit() {
    let up = upstream().spawn().await;
    let dir = tempdir("acip-rate-limit");
    std::fs::write(
        dir.join(".env"),
        format!(
            "FASTAPI_URL={}\nGATEWAY_HOST=127.0.0.1\nGATEWAY_PORT=0\nAUTH_ENABLED=false\nRATE_LIMIT_ENABLED=true\nRATE_LIMIT_WINDOW_MS=60000\nRATE_LIMIT_MAX_REQUESTS=2\nPLUGINS_DIR={}\n",
            up.url(),
            dir.join("plugins").display()
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(common::wasmgate_command(&dir));
    let c = client();
    let statuses: Vec<u16> = futures_util::future::join_all(
        (0..3).map(|_| async { c.get(gw.url("/x")).send().await.unwrap().status().as_u16() }),
    )
    .await;
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [200, 200, 429]);
    std::fs::remove_dir_all(dir).ok();
}
