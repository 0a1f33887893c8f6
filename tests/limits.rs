//! Limits and failures: concurrency caps, header and body size, slow and garbage clients,
//! unreachable and slow upstreams, the request timeout's SSE semantics.
mod common;

use std::time::{Duration, Instant};

use common::{client, expect_error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmgate_testkit::{gateway, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_in_flight_cap_answers_503_and_health_still_answers() {
    let up = upstream()
        .slow("/", Duration::from_millis(800))
        .spawn()
        .await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| c.server.max_in_flight = 2)
        .spawn()
        .await;
    let c = client();
    let first = tokio::spawn(c.get(gw.url("/a")).send());
    let second = tokio::spawn(c.get(gw.url("/b")).send());
    while up.request_count() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = c.get(gw.url("/c")).send().await.unwrap();
    expect_error(resp, 503, "downstream_concurrency_exceeded").await;
    let health = c.get(gw.url("/gateway/health")).send().await.unwrap();
    assert_eq!(
        health.status(),
        200,
        "health is not counted against the cap"
    );
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        c.get(gw.url("/d")).send().await.unwrap().status(),
        200,
        "permits come back"
    );
    assert_eq!(up.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_in_flight_cap_answers_503() {
    let slow = upstream()
        .slow("/", Duration::from_millis(600))
        .spawn()
        .await;
    let other = upstream().route("/", "other").spawn().await;
    let gw = gateway()
        .route("/slow", "slow", &[slow.url()])
        .route("/other", "other", &[other.url()])
        .config(|c| c.upstreams.get_mut("slow").unwrap().max_in_flight = 1)
        .spawn()
        .await;
    let c = client();
    let first = tokio::spawn(c.get(gw.url("/slow/1")).send());
    while slow.request_count() < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = c.get(gw.url("/slow/2")).send().await.unwrap();
    let v = expect_error(resp, 503, "upstream_concurrency_exceeded").await;
    assert!(v["message"].as_str().unwrap().contains("slow"));
    assert_eq!(
        c.get(gw.url("/other")).send().await.unwrap().status(),
        200,
        "other upstreams unaffected"
    );
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(slow.peak_in_flight(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_headers_get_431() {
    let up = upstream().spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| c.server.max_header_bytes = 2048)
        .spawn()
        .await;
    let c = client();
    let resp = c
        .get(gw.url("/"))
        .header("x-big", "a".repeat(3000))
        .send()
        .await
        .unwrap();
    expect_error(resp, 431, "request_header_fields_too_large").await;
    let resp = c
        .get(gw.url("/"))
        .header("x-ok", "a".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.request_count(),
        1,
        "the oversize request never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_get_413_declared_or_streamed() {
    let up = upstream().spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| c.server.max_body_bytes = 1024)
        .spawn()
        .await;
    let c = client();
    let resp = c
        .post(gw.url("/"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, "payload_too_large").await;
    assert_eq!(
        up.request_count(),
        0,
        "a declared oversize body is refused before the upstream"
    );

    // Chunked, no Content-Length: caught while streaming.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..8)
        .map(|_| Ok(bytes::Bytes::from(vec![b'y'; 512])))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = c.post(gw.url("/")).body(body).send().await.unwrap();
    expect_error(resp, 413, "payload_too_large").await;

    let resp = c
        .post(gw.url("/"))
        .body(vec![b'z'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "exactly the limit passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_senders_are_cut_off() {
    let up = upstream().spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| c.server.header_read_timeout_ms = 300)
        .spawn()
        .await;
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the gateway closes the connection instead of waiting forever"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        !String::from_utf8_lossy(&buf).contains(" 200 "),
        "no response to an incomplete head"
    );
    assert_eq!(up.request_count(), 0);
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        200,
        "still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_socket_gets_400_and_the_gateway_keeps_serving() {
    let up = upstream().spawn().await;
    let gw = gateway().upstream(&up).spawn().await;
    for garbage in [
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n"[..],
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("connection closed");
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 400"),
            "400 or closed, got {text:?}"
        );
    }
    assert_eq!(
        client().get(gw.url("/")).send().await.unwrap().status(),
        200
    );
    assert_eq!(up.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_502_and_does_not_leak_the_address() {
    let refusing = wasmgate_testkit::RefusingTarget::bind();
    let dead = refusing.url();
    let gw = gateway()
        .route("/", "dead", &[dead])
        .config(|c| {
            c.upstreams.get_mut("dead").unwrap().connect_timeout_ms = 500;
        })
        .spawn()
        .await;
    let resp = client().get(gw.url("/")).send().await.unwrap();
    let v = expect_error(resp, 502, "upstream_connect_error").await;
    assert!(!v["message"].as_str().unwrap().contains("127.0.0.1"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_headers_are_504() {
    let up = upstream().slow("/", Duration::from_secs(3)).spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| {
            c.upstreams.get_mut("default").unwrap().request_timeout_ms = 300;
        })
        .spawn()
        .await;
    let started = Instant::now();
    let resp = client().get(gw.url("/")).send().await.unwrap();
    expect_error(resp, 504, "upstream_timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at the timeout, not when the upstream finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_cuts_slow_bodies_but_never_event_streams() {
    let up = upstream()
        .slow_body(
            "/download",
            "first-part;",
            Duration::from_millis(1500),
            "rest",
        )
        .sse(
            "/events",
            &["1", "2", "3", "4", "5"],
            Duration::from_millis(150),
        )
        .spawn()
        .await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| {
            c.upstreams.get_mut("default").unwrap().request_timeout_ms = 400;
        })
        .spawn()
        .await;
    let c = client();

    let resp = c.get(gw.url("/download")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "headers arrived in time");
    let started = Instant::now();
    let body = resp.bytes().await;
    assert!(
        body.is_err(),
        "a non-streaming body past the timeout is cut, not completed"
    );
    assert!(started.elapsed() < Duration::from_millis(1400));

    // 5 events over ~600 ms: longer than the 400 ms timeout, all delivered.
    let text = common::text(c.get(gw.url("/events"))).await;
    assert_eq!(text.matches("data: ").count(), 5, "{text}");
}
