//! The `request-signing` built-in through the real gateway (docs/plugins/request-signing.md):
//! every upstream request is signed in the backend's `RequestSigner` format, checked here by
//! the same verification in Python (`hmac`, `hashlib`), streaming bodies included.
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::{client, expect_error};
use wasmgate_config::{Config, Secret};
use wasmgate_testkit::{gateway, upstream, Recorded};

const SECRET: &str = "backend-shared-signing-secret";

fn signed(c: &mut Config) {
    c.request_signing.secret = Some(Secret::new(SECRET));
}

/// The backend's check (`RequestSigner.verify`): HMAC-SHA256 over
/// `"{METHOD}:{path}:{sha256_hex(body)}:{timestamp}"`, compared in constant time, timestamp
/// within 300 s. Runs Python's `hmac` on what the upstream received.
fn backend_verifies(r: &Recorded) -> bool {
    let header = |n: &str| {
        r.headers
            .get(n)
            .unwrap_or_else(|| panic!("{n} is missing"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let path = r.uri.split('?').next().unwrap().to_string();
    let script = r#"
import hashlib, hmac, sys, time
secret, method, path, ts, sig = sys.argv[1:6]
body = sys.stdin.buffer.read()
msg = f"{method}:{path}:{hashlib.sha256(body).hexdigest()}:{ts}".encode()
expected = hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()
ok = hmac.compare_digest(expected, sig) and abs(time.time() - int(ts)) <= 300
sys.exit(0 if ok else 1)
"#;
    let mut child = Command::new("python3")
        .args([
            "-c",
            script,
            SECRET,
            &r.method,
            &path,
            &header("x-timestamp"),
            &header("x-signature"),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(&r.body).unwrap();
    child.wait().unwrap().success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_request_is_signed_as_the_backend_verifies() {
    let up = upstream().spawn().await;
    let gw = gateway().upstream(&up).config(signed).spawn().await;
    let c = client();
    let job = r#"{"type":"llm","params":{"prompt":"hello"}}"#;
    let r = c
        .post(gw.url("/api/v1/jobs?priority=1"))
        .header("content-type", "application/json")
        .header("x-signature", "forged-by-the-client")
        .body(job)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(gw.url("/api/v1/jobs/42")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, job.as_bytes(), "the body arrives unchanged");
    assert_ne!(seen[0].headers["x-signature"], "forged-by-the-client");
    for r in &seen {
        assert!(backend_verifies(r), "{} {} verifies", r.method, r.uri);
    }
    // A signature is bound to its request: the POST's does not verify the GET.
    let mut swapped = seen[1].clone();
    swapped
        .headers
        .insert("x-signature", seen[0].headers["x-signature"].clone());
    assert!(!backend_verifies(&swapped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_signed_over_all_its_chunks_and_the_upstream_path() {
    let up = upstream().spawn().await;
    let gw = gateway()
        .route("/gpu", "default", &[up.url()])
        .config(|c| c.routes[0].strip_prefix = true)
        .config(signed)
        .spawn()
        .await;
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..20)
        .map(|i| {
            Ok(Bytes::from(format!(
                "{{\"chunk\":{i},\"pad\":\"{}\"}}\n",
                "x".repeat(900)
            )))
        })
        .collect();
    let whole: Vec<u8> = chunks
        .iter()
        .flat_map(|c| c.as_ref().unwrap().to_vec())
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = client()
        .post(gw.url("/gpu/api/v1/jobs"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.requests();
    assert_eq!(seen[0].uri, "/api/v1/jobs", "the prefix was stripped");
    assert_eq!(seen[0].body.as_ref(), whole.as_slice());
    assert!(
        backend_verifies(&seen[0]),
        "signed over the path the backend sees and every chunk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_before_anything_is_sent() {
    let up = upstream().spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(signed)
        .config(|c| c.server.max_body_bytes = 1024)
        .spawn()
        .await;
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..4).map(|_| Ok(Bytes::from(vec![b'a'; 512]))).collect();
    let r = client()
        .post(gw.url("/api/v1/jobs"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    expect_error(r, 413, "payload_too_large").await;
    assert_eq!(up.request_count(), 0);
}
