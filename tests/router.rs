//! Target choice through the real gateway: the core's health checks, ejection and retries, and
//! the `router` built-in's strategies (docs/plugins/router.md).
mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{client, eventually, expect_error};
use fred::interfaces::KeysInterface;
use wasmgate_config::{Config, RouterStrategy, TargetTags};
use wasmgate_testkit::{gateway, upstream, RedisServer};

fn tag(c: &mut Config, target: &str, region: Option<&str>, workers: &[&str]) {
    c.upstreams.get_mut("default").unwrap().target_tags.insert(
        target.to_string(),
        TargetTags {
            region: region.map(str::to_string),
            workers: workers.iter().map(|w| w.to_string()).collect(),
        },
    );
}

/// Targets `a` (its health check answers as the switch says) and `b`, behind a gateway that
/// checks them every 50 ms.
async fn two_checked_targets() -> (
    wasmgate_testkit::TestUpstream,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    wasmgate_testkit::TestUpstream,
    wasmgate_testkit::TestGateway,
) {
    let (a, a_health) = upstream().health_switch("/health");
    let a = a.spawn().await;
    let (b, _) = upstream().health_switch("/health");
    let b = b.spawn().await;
    let gw = gateway()
        .route("/", "default", &[a.url(), b.url()])
        .config(|c| common::fast_health_checks(c, 2))
        .spawn()
        .await;
    (a, a_health, b, gw)
}

/// Six requests through `gw` all succeed, and none reaches `target`.
async fn six_requests_miss(
    target: &wasmgate_testkit::TestUpstream,
    gw: &wasmgate_testkit::TestGateway,
    why: &str,
) {
    let before = target.requests_to("/v1");
    let c = client();
    for _ in 0..6 {
        let r = c.get(gw.url("/v1/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(target.requests_to("/v1"), before, "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_eject_a_failing_target_and_restore_it() {
    let (a, a_health, b, gw) = two_checked_targets().await;
    let c = client();
    for _ in 0..4 {
        let r = c.get(gw.url("/v1/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        (a.requests_to("/v1"), b.requests_to("/v1")),
        (2, 2),
        "round-robin"
    );

    a_health.store(false, Ordering::SeqCst);
    let upstream = gw.gateway().snapshot().upstreams["default"].clone();
    eventually("a is ejected", async || {
        upstream.health_report()["healthy"] == 1
    })
    .await;
    six_requests_miss(&a, &gw, "no request goes to an ejected target").await;
    let before = a.requests_to("/v1");

    a_health.store(true, Ordering::SeqCst);
    eventually("a is restored", async || {
        upstream.health_report()["healthy"] == 2
    })
    .await;
    for _ in 0..4 {
        c.get(gw.url("/v1/x")).send().await.unwrap();
    }
    assert!(
        a.requests_to("/v1") > before,
        "a restored target gets requests again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_is_retried_on_another_target_with_the_body() {
    let refusing = wasmgate_testkit::RefusingTarget::bind();
    let down = refusing.url(); // nothing listens
    let up = upstream().spawn().await;
    let gw = gateway()
        .route("/", "default", &[down.clone(), up.url()])
        .config(|c| {
            let u = c.upstreams.get_mut("default").unwrap();
            u.retries = 1;
            u.health_check.unhealthy_threshold = 2;
        })
        .spawn()
        .await;
    let c = client();
    for i in 0..6 {
        let body = format!("{{\"n\":{i}}}");
        let r = c
            .post(gw.url("/v1/jobs"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "POST {i} reaches the live target");
        let echo: serde_json::Value = r.json().await.unwrap();
        assert_eq!(echo["body"], body, "the retried request carries its body");
    }
    assert_eq!(up.request_count(), 6);
    let report = gw.gateway().snapshot().upstreams["default"].health_report();
    assert_eq!(
        report["healthy"], 1,
        "connect failures ejected the dead target: {report}"
    );

    // Without retries, the failure is the client's (it names the upstream; the target address
    // stays in the gateway's log).
    let gw2 = gateway()
        .route("/", "default", &[down.clone(), up.url()])
        .config(|c| c.upstreams.get_mut("default").unwrap().retries = 0)
        .spawn()
        .await;
    let mut failed = 0;
    for _ in 0..2 {
        let r = c.get(gw2.url("/v1/x")).send().await.unwrap();
        if r.status() == 502 {
            let body = expect_error(r, 502, "upstream_connect_error").await;
            assert_eq!(body["message"], "cannot connect to upstream `default`");
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "round-robin hits the dead target once in two");
}

/// A target that accepts connections and closes them at once: the request was sent, no
/// response came.
async fn slamming_target() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    drop(s);
                });
            }
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_connection_opened_only_idempotent_requests_are_retried() {
    let slam = slamming_target().await;
    let up = upstream().spawn().await;
    let gw = gateway()
        .route("/", "default", &[slam, up.url()])
        .config(|c| c.upstreams.get_mut("default").unwrap().retries = 1)
        .spawn()
        .await;
    let c = client();
    for _ in 0..4 {
        let r = c.get(gw.url("/v1/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "a GET is retried on the other target");
    }
    let mut refused = 0;
    for _ in 0..4 {
        let r = c
            .post(gw.url("/v1/jobs"))
            .body("{\"a\":1}")
            .send()
            .await
            .unwrap();
        if r.status() == 502 {
            refused += 1;
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert!(
        refused >= 1,
        "a POST that reached the slamming target is not sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_busy_target() {
    let a = upstream()
        .slow("/slow", Duration::from_millis(800))
        .spawn()
        .await;
    let b = upstream()
        .slow("/slow", Duration::from_millis(800))
        .spawn()
        .await;
    let gw = gateway()
        .route("/", "default", &[a.url(), b.url()])
        .config(|c| c.router.strategy = RouterStrategy::LeastConnections)
        .spawn()
        .await;
    let c = client();
    let slow = tokio::spawn({
        let c = c.clone();
        let url = gw.url("/slow");
        async move { c.get(url).send().await.unwrap().status() }
    });
    // The slow request is recorded when it answers: wait for it to be in flight instead.
    eventually("the slow request arrives", async || {
        a.peak_in_flight() + b.peak_in_flight() == 1
    })
    .await;
    let busy_is_a = a.peak_in_flight() == 1;
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/fast")).send().await.unwrap().status(), 200);
    }
    let (busy, idle) = if busy_is_a { (&a, &b) } else { (&b, &a) };
    assert_eq!(
        busy.requests_to("/fast"),
        0,
        "the busy target got no request"
    );
    assert_eq!(idle.requests_to("/fast"), 5);
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_affinity_prefers_the_clients_region_and_falls_back() {
    let eu = upstream().spawn().await;
    let (us, us_health) = upstream().health_switch("/health");
    let us = us.spawn().await;
    let (eu_url, us_url) = (eu.url(), us.url());
    let gw = gateway()
        .route("/", "default", &[eu_url.clone(), us_url.clone()])
        .config(|c| {
            c.router.strategy = RouterStrategy::RegionAffinity;
            c.router
                .networks
                .insert("127.0.0.0/8".into(), "eu-west".into());
            tag(c, &eu_url, Some("eu-west"), &[]);
            tag(c, &us_url, Some("us-east"), &[]);
            common::fast_health_checks(c, 1);
        })
        .spawn()
        .await;
    let c = client();
    for _ in 0..4 {
        let r = c
            .get(gw.url("/v1/us"))
            .header("x-region", "US-East")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!((us.requests_to("/v1/us"), eu.requests_to("/v1/us")), (4, 0));
    // No header: the client network table says loopback is eu-west.
    for _ in 0..4 {
        c.get(gw.url("/v1/net")).send().await.unwrap();
    }
    assert_eq!(
        (eu.requests_to("/v1/net"), us.requests_to("/v1/net")),
        (4, 0)
    );

    // The region's only target fails its checks: the other region serves.
    us_health.store(false, Ordering::SeqCst);
    let upstream = gw.gateway().snapshot().upstreams["default"].clone();
    eventually("us is ejected", async || {
        upstream.health_report()["healthy"] == 1
    })
    .await;
    for _ in 0..3 {
        let r = c
            .get(gw.url("/v1/fallback"))
            .header("x-region", "us-east")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(eu.requests_to("/v1/fallback"), 3);
}

async fn put_worker(redis: &fred::clients::Client, id: &str, queue: u64, util: f64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let status = serde_json::json!({"status": "busy", "queue_depth": queue}).to_string();
    let gpu = serde_json::json!({"utilization": util}).to_string();
    let _: () = redis
        .set(format!("worker:{id}:status"), status, None, None, false)
        .await
        .unwrap();
    let _: () = redis
        .set(format!("worker:{id}:gpu"), gpu, None, None, false)
        .await
        .unwrap();
    let _: () = redis
        .set(format!("worker:{id}:heartbeat"), now, None, None, false)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_follows_the_worker_registry() {
    let redis = RedisServer::start().await;
    let py = redis.client().await;
    put_worker(&py, "gpu-a", 6, 0.9).await;
    put_worker(&py, "gpu-b", 0, 0.2).await;
    let a = upstream().spawn().await;
    let b = upstream().spawn().await;
    let (a_url, b_url) = (a.url(), b.url());
    let gw = gateway()
        .route("/", "default", &[a_url.clone(), b_url.clone()])
        .redis(&redis.url())
        .config(|c| {
            c.router.strategy = RouterStrategy::LeastLoaded;
            c.router.health_check_interval_ms = 50;
            tag(c, &a_url, None, &["gpu-a"]);
            tag(c, &b_url, None, &["gpu-b"]);
        })
        .spawn()
        .await;
    let c = client();
    eventually("the registry sees both workers", async || {
        gw.gateway().services().workers.active().len() == 2
    })
    .await;
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/v1/one")).send().await.unwrap().status(), 200);
    }
    assert_eq!((a.requests_to("/v1/one"), b.requests_to("/v1/one")), (0, 5));

    // The load moves: so do the requests, once the registry refreshes.
    put_worker(&py, "gpu-a", 0, 0.1).await;
    put_worker(&py, "gpu-b", 4, 0.95).await;
    eventually("requests follow the lighter worker", async || {
        c.get(gw.url("/v1/two")).send().await.unwrap();
        a.requests_to("/v1/two") > 0
    })
    .await;
    let before = b.requests_to("/v1/two");
    for _ in 0..5 {
        c.get(gw.url("/v1/two")).send().await.unwrap();
    }
    assert_eq!(
        b.requests_to("/v1/two"),
        before,
        "gpu-b is now the busier one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_target_stays_ejected_across_a_reload_that_rebuilds_its_upstream() {
    let (a, a_health, _b, gw) = two_checked_targets().await;
    a_health.store(false, Ordering::SeqCst);
    let upstream = gw.gateway().snapshot().upstreams["default"].clone();
    eventually("a is ejected", async || {
        upstream.health_report()["healthy"] == 1
    })
    .await;

    // Settings that rebuild the upstream: three failed checks a minute apart would be needed
    // to eject `a` again from scratch.
    let mut cfg = gw.gateway().snapshot().config.as_ref().clone();
    let u = cfg.upstreams.get_mut("default").unwrap();
    u.health_check.interval_ms = Some(60_000);
    u.health_check.unhealthy_threshold = 3;
    gw.gateway().reload(cfg).unwrap();
    let rebuilt = gw.gateway().snapshot().upstreams["default"].clone();
    assert!(
        !std::sync::Arc::ptr_eq(&upstream, &rebuilt),
        "the reload rebuilt the upstream"
    );
    assert_eq!(rebuilt.health_report()["healthy"], 1, "a is still ejected");
    six_requests_miss(
        &a,
        &gw,
        "no request goes to the target ejected before the reload",
    )
    .await;
}
