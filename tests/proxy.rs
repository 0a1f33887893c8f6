//! Routing, header hygiene, request identity, trace context, forwarding, balancing and
//! streaming, through real sockets.
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{client, echoed_header, expect_error};
use serde_json::Value;
use wasmgate_config::{parse_str, ConfigSource, MapEnv};
use wasmgate_testkit::{gateway, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_on_segment_boundaries_with_strip_prefix() {
    let api = upstream().spawn().await;
    let v1 = upstream().spawn().await;
    let gw = gateway()
        .route("/api", "api", &[api.url()])
        .route("/api/v1", "v1", &[v1.url()])
        .config(|c| c.routes[1].strip_prefix = true)
        .spawn()
        .await;
    let c = client();

    let echo: Value = common::json(c.get(gw.url("/api/x?b=2&a=1"))).await;
    assert_eq!(
        echo["uri"], "/api/x?b=2&a=1",
        "path and query pass unchanged"
    );
    let echo: Value = common::json(c.get(gw.url("/api"))).await;
    assert_eq!(echo["uri"], "/api");
    let echo: Value = common::json(c.get(gw.url("/api/v1/jobs/7"))).await;
    assert_eq!(
        echo["uri"], "/jobs/7",
        "longest prefix wins and is stripped"
    );
    let echo: Value = common::json(c.get(gw.url("/api/v1"))).await;
    assert_eq!(echo["uri"], "/");
    assert_eq!(api.request_count(), 2);
    assert_eq!(v1.request_count(), 2);

    let resp = c.get(gw.url("/apix")).send().await.unwrap();
    expect_error(resp, 404, "route_not_found").await;
    let resp = c.get(gw.url("/")).send().await.unwrap();
    expect_error(resp, 404, "route_not_found").await;
    assert_eq!(
        api.request_count() + v1.request_count(),
        4,
        "404s never reach an upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_removed_both_ways_and_upstream_headers_edited() {
    let up = upstream().spawn().await;
    // Built through the real TOML path so `${ENV}` interpolation is exercised.
    let toml = format!(
        r#"
        [server]
        host = "127.0.0.1"
        port = 0
        [[routes]]
        prefix = "/"
        upstream = "llm"
        [upstreams.llm]
        targets = ["{}"]
        inject_headers = {{ Authorization = "Bearer ${{UPSTREAM_KEY}}", X-Team = "gpu" }}
        remove_headers = ["x-internal"]
        "#,
        up.url()
    );
    let env = MapEnv::from_pairs([("UPSTREAM_KEY", "sk-upstream-secret")]);
    let cfg = parse_str(&toml, &ConfigSource::File("inline.toml".into()), &env).unwrap();
    let gw = gateway().config(|c| *c = cfg).spawn().await;

    let send = |url: String| {
        client()
            .get(url)
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "named-by-connection")
            .header("keep-alive", "timeout=9")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("te", "trailers")
            .header("x-internal", "do-not-forward")
            .header("authorization", "Bearer client-credential")
            .header("x-kept", "yes")
            .send()
    };
    // Control: sent directly, the upstream does receive every one of these headers, so their
    // absence below is the gateway's doing.
    let direct = send(format!("{}/v1/models", up.url())).await.unwrap();
    assert!(direct.headers().get("x-upstream-hop").is_some());
    let direct: Value = direct.json().await.unwrap();
    for present in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "x-internal",
    ] {
        assert!(
            echoed_header(&direct, present).is_some(),
            "control: {present} sent: {direct}"
        );
    }

    let resp = send(gw.url("/v1/models")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("x-upstream-hop").is_none(),
        "response hop header named by Connection dropped"
    );
    assert!(
        resp.headers().get("keep-alive").is_none(),
        "response Keep-Alive dropped"
    );
    let echo: Value = resp.json().await.unwrap();
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "x-internal",
    ] {
        assert!(
            echoed_header(&echo, gone).is_none(),
            "{gone} must not reach the upstream: {echo}"
        );
    }
    assert_eq!(echoed_header(&echo, "x-kept"), Some("yes"));
    assert_eq!(
        echoed_header(&echo, "authorization"),
        Some("Bearer sk-upstream-secret"),
        "injected header overrides the client's"
    );
    assert_eq!(echoed_header(&echo, "x-team"), Some("gpu"));
    assert_eq!(
        echoed_header(&echo, "host"),
        Some(up.addr().to_string().as_str()),
        "Host is the target's"
    );
    assert!(
        echoed_header(&echo, "x-forwarded-for").is_none(),
        "forwarding headers are off by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_kept_when_valid_and_made_when_not() {
    let up = upstream().spawn().await;
    let gw = gateway().upstream(&up).spawn().await;
    let c = client();

    let resp = c
        .get(gw.url("/x"))
        .header("x-request-id", "client-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-req-42");
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echoed_header(&echo, "x-request-id"), Some("client-req-42"));

    for incoming in [None, Some("bad id <script>")] {
        let mut req = c.get(gw.url("/x"));
        if let Some(v) = incoming {
            req = req.header("x-request-id", v);
        }
        let resp = req.send().await.unwrap();
        let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        let parsed = uuid::Uuid::parse_str(&rid).expect("a generated id is a UUID");
        assert_eq!(parsed.get_version_num(), 4);
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(
            echoed_header(&echo, "x-request-id"),
            Some(rid.as_str()),
            "upstream and client see the same id"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_continued_with_own_span_or_started() {
    let up = upstream().spawn().await;
    let gw = gateway().upstream(&up).spawn().await;
    let c = client();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let echo: Value = common::json(c.get(gw.url("/")).header("traceparent", incoming)).await;
    let tp = echoed_header(&echo, "traceparent").unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "the gateway's own span id");
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01");

    for header in [None, Some("00-zzzz-bad-01")] {
        let mut req = c.get(gw.url("/"));
        if let Some(h) = header {
            req = req.header("traceparent", h);
        }
        let echo: Value = common::json(req).await;
        let tp = echoed_header(&echo, "traceparent").unwrap();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[1].len(), 32);
        assert_ne!(parts[1], "0".repeat(32));
        assert_ne!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_only_trusted_from_configured_proxies() {
    let up = upstream().spawn().await;
    let trusting = gateway()
        .upstream(&up)
        .config(|c| {
            c.forwarded.enabled = true;
            c.forwarded.trusted_proxies = vec!["127.0.0.1".into()];
        })
        .spawn()
        .await;
    let distrusting = gateway()
        .upstream(&up)
        .config(|c| {
            c.forwarded.enabled = true;
            c.forwarded.trusted_proxies = vec!["10.0.0.0/8".into()];
        })
        .spawn()
        .await;
    let c = client();

    let echo: Value = common::json(
        c.get(trusting.url("/"))
            .header("x-forwarded-for", "198.51.100.7")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(
        echoed_header(&echo, "x-forwarded-for"),
        Some("198.51.100.7, 127.0.0.1")
    );
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), Some("https"));

    let echo: Value = common::json(
        c.get(distrusting.url("/"))
            .header("x-forwarded-for", "198.51.100.7")
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(
        echoed_header(&echo, "x-forwarded-for"),
        Some("127.0.0.1"),
        "spoofed value replaced"
    );
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), Some("http"));
    let host = format!("{}", distrusting.addr());
    assert_eq!(
        echoed_header(&echo, "x-forwarded-host"),
        Some(host.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_pooled_keep_alive_connections() {
    let a = upstream().route("/", "a").spawn().await;
    let b = upstream().route("/", "b").spawn().await;
    let gw = gateway()
        .route("/", "pair", &[a.url(), b.url()])
        .spawn()
        .await;
    let c = client();
    let mut seen = String::new();
    for _ in 0..10 {
        seen.push_str(&common::text(c.get(gw.url("/"))).await);
    }
    assert_eq!(seen, "ababababab");
    assert_eq!(a.request_count(), 5);
    assert_eq!(
        a.connection_count(),
        1,
        "sequential requests reuse one pooled connection"
    );
    assert_eq!(b.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_reaches_the_client_chunk_by_chunk() {
    let (builder, pace) = upstream().paced("/v1/chat/completions", "text/event-stream");
    let up = builder.spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| {
            c.upstreams.get_mut("default").unwrap().request_timeout_ms = 500;
        })
        .spawn()
        .await;
    let mut resp = client()
        .post(gw.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    // Headers arrive while the upstream holds the stream open.
    pace.send(Bytes::from_static(b"data: {\"n\":1}\n\n"))
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    for n in 1..=3 {
        if n > 1 {
            // Past the 500 ms request timeout: SSE is never cut by it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            pace.send(Bytes::from(format!("data: {{\"n\":{n}}}\n\n")))
                .unwrap();
        }
        // The upstream sends the next event only after this one was received: a proxy that
        // held chunks back would time out here.
        let chunk = tokio::time::timeout(Duration::from_secs(3), resp.chunk())
            .await
            .expect("event arrives while the stream is still open")
            .unwrap()
            .unwrap();
        assert_eq!(chunk, Bytes::from(format!("data: {{\"n\":{n}}}\n\n")));
    }
    drop(pace);
    assert!(
        resp.chunk().await.unwrap().is_none(),
        "stream ends when the upstream ends it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_to_the_upstream() {
    let (builder, mut arrived) = upstream().chunk_reporter("/upload");
    let up = builder.spawn().await;
    let gw = gateway().upstream(&up).spawn().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|x| (x, rx))
    }));
    let req = tokio::spawn(client().post(gw.url("/upload")).body(body).send());
    for i in 0..3 {
        let chunk = Bytes::from(format!("part-{i};"));
        tx.send(Ok(chunk.clone())).unwrap();
        // The next part is sent only once this one reached the upstream.
        let got = tokio::time::timeout(Duration::from_secs(3), arrived.recv())
            .await
            .expect("chunk forwarded before the body is complete")
            .unwrap();
        assert_eq!(got, chunk);
    }
    drop(tx);
    let resp = req.await.unwrap().unwrap();
    assert_eq!(resp.text().await.unwrap(), "received 21 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_answered_locally() {
    let gw = gateway().spawn().await; // no routes at all
    let resp = client()
        .get(gw.url("/gateway/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_exact_gateway_paths_are_local() {
    let up = upstream().spawn().await;
    let gw = gateway().upstream(&up).spawn().await;
    let c = client();
    let list: Value = common::json(c.get(gw.url("/gateway/plugins"))).await;
    assert_eq!(
        list["enabled"], false,
        "answered locally: no plugin runtime here"
    );
    let echo: Value = common::json(c.get(gw.url("/gateway/pluginsfoo"))).await;
    assert_eq!(
        echo["uri"], "/gateway/pluginsfoo",
        "not a local endpoint: routed upstream"
    );
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_routes_and_keeps_in_flight_requests() {
    let old = upstream()
        .slow("/slow", Duration::from_millis(400))
        .route("/", "old")
        .spawn()
        .await;
    let new = upstream().route("/", "new").spawn().await;
    let gw = gateway().upstream(&old).spawn().await;
    let c = client();
    let in_flight = tokio::spawn(c.get(gw.url("/slow")).send());
    old.wait_for_requests(1).await;
    let mut cfg = gw.gateway().snapshot().config.as_ref().clone();
    cfg.upstreams.get_mut("default").unwrap().targets = vec![new.url()];
    gw.gateway().reload(cfg).unwrap();
    assert_eq!(common::text(c.get(gw.url("/"))).await, "new");
    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the request in flight finished on the old upstream"
    );
}
