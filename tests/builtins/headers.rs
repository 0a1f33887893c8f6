//! cors and security-headers, and the plugins' response headers on the gateway's own errors.
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflights_before_auth_and_marks_allowed_responses() {
    let up = upstream()
        .echo_with("/vary", &[("vary", "Accept-Encoding")])
        .spawn()
        .await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| {
            c.cors.enabled = true;
            c.cors.origins = vec!["https://app.example".into()];
            c.cors.credentials = true;
            c.auth.enabled = true;
            c.auth.api_keys = vec![wasmgate_config::Secret::new("k1")];
        })
        .spawn()
        .await;
    let c = client();
    let before = up.request_count();
    let r = c
        .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "answered without a credential");
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), "true");
    assert!(header(&r, "access-control-allow-methods").contains("POST"));
    assert!(header(&r, "access-control-allow-headers").contains("authorization"));
    assert_eq!(header(&r, "access-control-max-age"), "600");
    assert_eq!(
        up.request_count(),
        before,
        "preflights never reach the upstream"
    );

    let r = c
        .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    expect_error(r, 403, "cors_forbidden").await;

    let r = get_with(
        &c,
        gw.url("/v1/models"),
        &[("origin", "https://app.example"), ("x-api-key", "k1")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(header(&r, "vary"), "Origin");
    assert!(header(&r, "access-control-expose-headers").contains("x-request-id"));
    // The upstream's own `Vary` stays beside the gateway's `Origin`.
    let r = get_with(
        &c,
        gw.url("/vary/x"),
        &[("origin", "https://app.example"), ("x-api-key", "k1")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let vary: Vec<_> = r
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        vary,
        ["Accept-Encoding", "Origin"],
        "appended, not replaced"
    );
    let r = get_with(
        &c,
        gw.url("/v1/models"),
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        "https://app.example",
        "a browser can read the refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_are_added_and_configurable() {
    let up = upstream()
        .echo_with(
            "/own",
            &[
                ("x-frame-options", "SAMEORIGIN"),
                ("x-content-type-options", "nosniff"),
            ],
        )
        .spawn()
        .await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| {
            c.security_headers.enabled = true;
            c.security_headers
                .headers
                .insert("X-Frame-Options".into(), "DENY".into());
            c.security_headers
                .headers
                .insert("referrer-policy".into(), String::new());
            c.auth.enabled = true;
            c.auth.api_keys = vec![wasmgate_config::Secret::new("k1")];
        })
        .spawn()
        .await;
    let key = |r: reqwest::RequestBuilder| r.header("x-api-key", "k1");
    let r = key(client().get(gw.url("/v1/models")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(header(&r, "cross-origin-opener-policy"), "same-origin");
    assert_eq!(header(&r, "x-frame-options"), "DENY", "overridden");
    assert!(
        r.headers().get("referrer-policy").is_none(),
        "removed by an empty value"
    );
    assert!(
        r.headers().get("strict-transport-security").is_none(),
        "HSTS only when the gateway listens with TLS"
    );
    // The upstream's own policy wins, and nothing is doubled.
    let r = key(client().get(gw.url("/own/x"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let frame: Vec<_> = r.headers().get_all("x-frame-options").iter().collect();
    assert_eq!(frame, ["SAMEORIGIN"], "the upstream's, alone");
    assert_eq!(
        r.headers().get_all("x-content-type-options").iter().count(),
        1
    );
    assert_eq!(header(&r, "cross-origin-opener-policy"), "same-origin");
    // A plugin's local answer (auth's 401) gets them too.
    let r = client()
        .get(gw.url("/v1/models"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(header(&r, "x-frame-options"), "DENY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_errors_get_the_plugins_response_headers() {
    let slow = upstream()
        .slow("/slow", std::time::Duration::from_secs(3))
        .spawn()
        .await;
    let refusing = wasmgate_testkit::RefusingTarget::bind();
    let dead = refusing.url();
    let gw = gateway()
        .route("/dead", "dead", &[dead])
        .route("/slow", "slow", &[slow.url()])
        .config(|c| {
            c.upstreams.get_mut("slow").unwrap().request_timeout_ms = 300;
            c.cors.enabled = true;
            c.cors.origins = vec!["https://app.example".into()];
            c.security_headers.enabled = true;
            limited(100)(c);
        })
        .spawn()
        .await;
    let c = client();
    for (path, status, code) in [
        ("/dead/v1/models", 502, "upstream_connect_error"),
        ("/slow/x", 504, "upstream_timeout"),
    ] {
        let r = get_with(&c, gw.url(path), &[("origin", "https://app.example")]).await;
        // A browser can read the error, and it carries the same headers as any answer.
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            "https://app.example",
            "{path}"
        );
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&r, "x-ratelimit-limit"), "100", "{path}");
        expect_error(r, status, code).await;
    }
}
