//! The built-in bundle through the real gateway: the built-ins whose only phase is
//! `on-request-headers` run fused (one instance and one call per request, the default) or each
//! on its own (`plugins.fuse_builtins = false`), and a client cannot tell the two apart.
mod common;

use common::{client, echoed_header, json};
use wasmgate_config::{Config, RouterStrategy, Secret, TargetTags};
use wasmgate_testkit::{gateway, upstream, TestGateway, TestUpstream};

/// security-headers, cors, auth, rate-limit (5 a minute) and router (region affinity) in front
/// of `eu` and `us`.
fn every_request_phase_built_in(c: &mut Config, eu: &str, us: &str, fuse: bool) {
    c.plugins.fuse_builtins = fuse;
    c.security_headers.enabled = true;
    c.cors.enabled = true;
    c.cors.origins = vec!["https://app.example".into()];
    c.auth.enabled = true;
    c.auth.api_keys = vec![Secret::new("k-1")];
    c.rate_limit.enabled = true;
    c.rate_limit.max_requests = 5;
    c.rate_limit.window_ms = 60_000;
    c.router.strategy = RouterStrategy::RegionAffinity;
    for (target, region) in [(eu, "eu-west"), (us, "us-east")] {
        c.upstreams.get_mut("default").unwrap().target_tags.insert(
            target.to_string(),
            TargetTags {
                region: Some(region.into()),
                workers: Vec::new(),
            },
        );
    }
}

async fn spawn(fuse: bool) -> (TestUpstream, TestUpstream, TestGateway) {
    let eu = upstream().spawn().await;
    let us = upstream().spawn().await;
    let (eu_url, us_url) = (eu.url(), us.url());
    let gw = gateway()
        .route("/", "default", &[eu_url.clone(), us_url.clone()])
        .config(move |c| every_request_phase_built_in(c, &eu_url, &us_url, fuse))
        .spawn()
        .await;
    (eu, us, gw)
}

/// What a client and the upstreams see of one request: the status, the response headers the
/// built-ins decide (not the date or the request id), and which upstream got it with which
/// identity and credential headers.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    upstream: Option<&'static str>,
    identity: Option<String>,
    api_key_forwarded: bool,
}

async fn exchange(gw: &TestGateway, eu: &TestUpstream, us: &TestUpstream) -> Vec<Seen> {
    let c = client();
    let mut out = Vec::new();
    let requests: Vec<reqwest::RequestBuilder> = vec![
        // No credential: refused.
        c.get(gw.url("/v1/models"))
            .header("origin", "https://app.example"),
        // A preflight: answered before auth.
        c.request(reqwest::Method::OPTIONS, gw.url("/v1/models"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST"),
        // A wrong key.
        c.get(gw.url("/v1/models")).header("x-api-key", "k-2"),
    ]
    .into_iter()
    .chain((0..6).map(|i| {
        // Accepted, routed by region, counted; the sixth is over the limit.
        let region = if i % 2 == 0 { "us-east" } else { "eu-west" };
        c.get(gw.url(&format!("/v1/echo/{i}")))
            .header("x-api-key", "k-1")
            .header("x-region", region)
            .header("origin", "https://app.example")
    }))
    .collect();
    for req in requests {
        let (eu_before, us_before) = (eu.request_count(), us.request_count());
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let mut headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| !["date", "x-request-id", "content-length"].contains(&k.as_str()))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        headers.sort();
        let body = r.text().await.unwrap();
        let upstream = match (
            eu.request_count() - eu_before,
            us.request_count() - us_before,
        ) {
            (0, 0) => None,
            (1, 0) => Some("eu"),
            (0, 1) => Some("us"),
            other => panic!("one request reached {other:?}"),
        };
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        out.push(Seen {
            status,
            headers,
            upstream,
            identity: echoed_header(&echo, "x-gateway-identity").map(str::to_string),
            api_key_forwarded: echoed_header(&echo, "x-api-key").is_some(),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fused_and_separate_built_ins_answer_every_request_alike() {
    let (eu, us, fused) = spawn(true).await;
    let fused_seen = exchange(&fused, &eu, &us).await;
    let (eu2, us2, separate) = spawn(false).await;
    let separate_seen = exchange(&separate, &eu2, &us2).await;
    assert_eq!(fused_seen, separate_seen);

    // And what they agree on is what the built-ins promise.
    let statuses: Vec<u16> = fused_seen.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [401, 204, 401, 200, 200, 200, 200, 200, 429]);
    let has = |s: &Seen, name: &str| s.headers.iter().any(|(k, _)| k == name);
    assert!(has(&fused_seen[0], "www-authenticate"));
    assert!(has(&fused_seen[0], "x-content-type-options"));
    assert!(has(&fused_seen[0], "access-control-allow-origin"));
    assert!(has(&fused_seen[1], "access-control-allow-methods"));
    let routed: Vec<Option<&str>> = fused_seen[3..8].iter().map(|s| s.upstream).collect();
    assert_eq!(
        routed,
        [Some("us"), Some("eu"), Some("us"), Some("eu"), Some("us")]
    );
    for s in &fused_seen[3..8] {
        assert!(s.identity.as_deref().is_some_and(|i| i.starts_with("key:")));
        assert!(
            !s.api_key_forwarded,
            "the gateway's credential is not forwarded"
        );
        assert!(has(s, "x-ratelimit-remaining"));
    }
    assert_eq!(fused_seen[8].upstream, None);
    assert!(has(&fused_seen[8], "retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fused_built_in_is_listed_as_its_own_plugin_with_its_bundle() {
    for fuse in [true, false] {
        let up = upstream().spawn().await;
        let gw = gateway()
            .upstream(&up)
            .config(move |c| {
                c.admin.token = Some(Secret::new("admin-secret"));
                c.plugins.fuse_builtins = fuse;
                c.auth.enabled = true;
                c.auth.api_keys = vec![Secret::new("k-1")];
                c.rate_limit.enabled = true;
                c.rate_limit.max_requests = 100;
                c.cache.enabled = true;
            })
            .spawn()
            .await;
        let r = client()
            .get(gw.url("/v1/models"))
            .header("x-api-key", "k-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let list = json(
            client()
                .get(gw.url("/gateway/plugins"))
                .bearer_auth("admin-secret"),
        )
        .await;
        let find = |name: &str| {
            list["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{name} in {list}"))
                .clone()
        };
        let (auth, limit, cache) = (find("auth"), find("rate-limit"), find("cache"));
        for p in [&auth, &limit] {
            assert_eq!(p["calls"], 1, "{p}");
            assert_eq!(p["instances"], 1, "{p}");
            let bundle: Vec<&str> = p["bundle"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let alone = [p["name"].as_str().unwrap()];
            let expected: &[&str] = if fuse {
                &["auth", "rate-limit"]
            } else {
                &alone
            };
            assert_eq!(bundle, expected, "the members sharing its instances");
        }
        assert_eq!(
            cache["bundle"],
            serde_json::Value::Null,
            "cache has response phases"
        );
    }
}
