//! HTTP/2 downstream (h2c prior knowledge, and ALPN under TLS), inbound TLS, HTTP/2 upstreams.
mod common;

use std::time::Duration;

use serde_json::Value;
use wasmgate_config::TlsConfig;
use wasmgate_testkit::{gateway, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_downstream() {
    let up = upstream().spawn().await;
    let gw = gateway().upstream(&up).spawn().await;
    wasmgate_testkit::install_crypto_provider();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.post(gw.url("/v1/x")).body("hello").send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "upstream spoken to over HTTP/1.1 by default"
    );
    assert_eq!(echo["body"], "hello");
    assert_eq!(echo["uri"], "/v1/x");
    assert_eq!(
        common::echoed_header(&echo, "host"),
        Some(up.addr().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_can_be_turned_off() {
    let up = upstream().spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| c.server.http2 = false)
        .spawn()
        .await;
    wasmgate_testkit::install_crypto_provider();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        h2.get(gw.url("/")).send().await.is_err(),
        "no h2c when server.http2 = false"
    );
    assert_eq!(
        common::client()
            .get(gw.url("/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

fn self_signed(dir: &std::path::Path) -> (TlsConfig, rustls::pki_types::CertificateDer<'static>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (
        TlsConfig {
            cert: cert_path.display().to_string(),
            key: key_path.display().to_string(),
        },
        cert.cert.der().clone(),
    )
}

fn tls_client(ca: rustls::pki_types::CertificateDer<'static>, http1_only: bool) -> reqwest::Client {
    wasmgate_testkit::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(10));
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_alpn_h2_and_http1() {
    let dir = common::tempdir("tls");
    let (tls, ca) = self_signed(&dir);
    let up = upstream().spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| {
            c.server.tls = Some(tls);
            c.forwarded.enabled = true;
        })
        .spawn()
        .await;
    let url = format!("https://localhost:{}/secure", gw.addr().port());

    let resp = tls_client(ca.clone(), false)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2, "ALPN picks h2");
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(
        common::echoed_header(&echo, "x-forwarded-proto"),
        Some("https")
    );

    let resp = tls_client(ca, true).get(&url).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(resp.status(), 200);

    // A cleartext client on the TLS port gets no response, and the port keeps working.
    let plain = common::client()
        .get(format!("http://127.0.0.1:{}/", gw.addr().port()))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_by_prior_knowledge() {
    let up = upstream().http2_only().spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| c.upstreams.get_mut("default").unwrap().http2 = true)
        .spawn()
        .await;
    let c = common::client();
    for _ in 0..3 {
        let echo: Value = common::json(c.post(gw.url("/gen")).body("prompt")).await;
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["body"], "prompt");
    }
    assert_eq!(up.connection_count(), 1, "one multiplexed connection");
}
