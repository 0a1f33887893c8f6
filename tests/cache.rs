//! The `cache` built-in through the real gateway (docs/plugins/cache.md): hits and misses, the
//! per-caller key, `Cache-Control` and `Vary`, the bounded index on Redis, replicas sharing
//! entries, and the purge endpoint.
mod common;

use common::{client, expect_error};
use fred::interfaces::{ClientLike, KeysInterface, SetsInterface};
use wasmgate_config::{Config, Secret};
use wasmgate_testkit::{gateway, upstream, RedisServer};

fn cached(c: &mut Config) {
    c.cache.enabled = true;
    c.cache.ttl_seconds = 60;
    c.cache.max_size = 100;
}

fn cache_header(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-gateway-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| "(none)".into())
}

/// The cache verdict and body of `GET url` with `headers`.
async fn verdict(url: String, headers: &[(&str, &str)]) -> (String, String) {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let verdict = cache_header(&r);
    (verdict, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_get_is_a_hit_with_the_same_response_and_an_age() {
    let up = upstream()
        .echo_with("/v1", &[("x-backend", "sim")])
        .spawn()
        .await;
    let gw = gateway().upstream(&up).config(cached).spawn().await;
    let c = client();
    let first = c.get(gw.url("/v1/models?b=2&a=1")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(cache_header(&first), "MISS");
    let first_body = first.text().await.unwrap();

    // Same query in another order: the same entry.
    let hit = c.get(gw.url("/v1/models?a=1&b=2")).send().await.unwrap();
    assert_eq!(hit.status(), 200);
    assert_eq!(cache_header(&hit), "HIT");
    assert_eq!(
        hit.headers()["x-backend"],
        "sim",
        "stored headers come back"
    );
    assert!(hit.headers().contains_key("age"));
    assert!(hit.headers().contains_key("x-request-id"));
    assert_eq!(hit.text().await.unwrap(), first_body);
    assert_eq!(
        up.requests_to("/v1/models"),
        1,
        "the hit never reached the upstream"
    );

    // POST is not cached and gets no verdict; HEAD has its own entry.
    let post = c.post(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(cache_header(&post), "(none)");
    let head = c.head(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(cache_header(&head), "MISS");
    let head = c.head(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(cache_header(&head), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_never_gets_anothers_response_unless_the_route_is_public() {
    let up = upstream().spawn().await;
    let gw = gateway()
        .route("/public", "public", &[up.url()])
        .route("/", "default", &[up.url()])
        .config(cached)
        .config(|c| {
            c.auth.enabled = true;
            c.auth.api_keys = vec![Secret::new("key-alice"), Secret::new("key-bob")];
            c.cache.public_routes = vec!["public".into()];
        })
        .spawn()
        .await;
    let alice = [("x-api-key", "key-alice")];
    let bob = [("x-api-key", "key-bob")];
    assert_eq!(verdict(gw.url("/v1/me"), &alice).await.0, "MISS");
    assert_eq!(verdict(gw.url("/v1/me"), &alice).await.0, "HIT");
    assert_eq!(
        verdict(gw.url("/v1/me"), &bob).await.0,
        "MISS",
        "bob does not get alice's entry"
    );
    // A refused caller gets a 401, never a cached 200.
    let r = client().get(gw.url("/v1/me")).send().await.unwrap();
    expect_error(r, 401, "unauthorized").await;

    assert_eq!(verdict(gw.url("/public/doc"), &alice).await.0, "MISS");
    assert_eq!(
        verdict(gw.url("/public/doc"), &bob).await.0,
        "HIT",
        "a public route shares entries"
    );

    // Without gateway auth, the credentials the backend checks keep callers apart.
    let open = gateway().upstream(&up).config(cached).spawn().await;
    let t1 = [("authorization", "Bearer user-1")];
    let t2 = [("authorization", "Bearer user-2")];
    assert_eq!(verdict(open.url("/v1/me"), &t1).await.0, "MISS");
    assert_eq!(verdict(open.url("/v1/me"), &t1).await.0, "HIT");
    assert_eq!(verdict(open.url("/v1/me"), &t2).await.0, "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_set_cookie_streams_and_vary_are_honoured() {
    let up = upstream()
        .echo_with("/no-store", &[("cache-control", "no-store")])
        .echo_with("/private", &[("cache-control", "private, max-age=60")])
        .echo_with("/zero", &[("cache-control", "max-age=0")])
        .echo_with("/cookie", &[("set-cookie", "session=1")])
        .echo_with("/vary", &[("vary", "Accept-Language")])
        .echo_with("/short", &[("cache-control", "max-age=1")])
        .sse(
            "/sse",
            &["data: 1\n\n"],
            std::time::Duration::from_millis(1),
        )
        .respond("/missing", 404, "application/json", "{}")
        .spawn()
        .await;
    let gw = gateway().upstream(&up).config(cached).spawn().await;
    for path in [
        "/no-store",
        "/private",
        "/zero",
        "/cookie",
        "/sse",
        "/missing",
    ] {
        assert_eq!(
            verdict(gw.url(path), &[]).await.0,
            "BYPASS",
            "{path}: looked up, fetched, not storable"
        );
        assert_ne!(
            verdict(gw.url(path), &[]).await.0,
            "HIT",
            "{path} is never served from the cache"
        );
        assert_eq!(up.requests_to(path), 2, "{path} went to the upstream twice");
    }

    // The client asks for a fresh answer: bypass, and the fresh one refreshes the entry.
    assert_eq!(verdict(gw.url("/fresh"), &[]).await.0, "MISS");
    assert_eq!(verdict(gw.url("/fresh"), &[]).await.0, "HIT");
    let no_cache = [("cache-control", "no-cache")];
    assert_eq!(verdict(gw.url("/fresh"), &no_cache).await.0, "BYPASS");
    assert_eq!(up.requests_to("/fresh"), 2);
    assert_eq!(verdict(gw.url("/fresh"), &[]).await.0, "HIT");

    // Vary: a response for one language is never served for another.
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(verdict(gw.url("/vary"), &en).await.0, "MISS");
    let (v, body) = verdict(gw.url("/vary"), &en).await;
    assert_eq!(v, "HIT");
    assert!(body.contains("\"en\""));
    let (v, body) = verdict(gw.url("/vary"), &fr).await;
    assert_eq!(v, "MISS", "another Accept-Language is another response");
    assert!(body.contains("\"fr\""));
    let (v, body) = verdict(gw.url("/vary"), &fr).await;
    assert_eq!(v, "HIT");
    assert!(body.contains("\"fr\"") && !body.contains("\"en\""));

    // max-age bounds the entry's life.
    assert_eq!(verdict(gw.url("/short"), &[]).await.0, "MISS");
    assert_eq!(verdict(gw.url("/short"), &[]).await.0, "HIT");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(verdict(gw.url("/short"), &[]).await.0, "MISS", "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_entries_are_bounded_shared_by_replicas_and_purged_by_the_admin() {
    let redis = RedisServer::start().await;
    let r = redis.client().await;
    let up = upstream().spawn().await;
    let spawn = || {
        gateway()
            .upstream(&up)
            .redis(&redis.url())
            .config(cached)
            .config(|c| {
                c.cache.max_size = 5;
                c.admin.token = Some(Secret::new("admin-secret"));
            })
            .spawn()
    };
    let a = spawn().await;
    let b = spawn().await;

    // Written by one replica, a hit on the other (behind one load balancer: one Host).
    let lb = [("host", "api.example.com")];
    assert_eq!(verdict(a.url("/v1/models"), &lb).await.0, "MISS");
    assert_eq!(verdict(b.url("/v1/models"), &lb).await.0, "HIT");

    // The seeds' layout: entries at gateway:cache:{hash}, the index at gateway:cache:keys.
    let members: Vec<String> = r.smembers("gateway:cache:keys").await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].len(), 64, "a sha256 hex key");
    let exists: bool = r
        .exists(format!("gateway:cache:{}", members[0]))
        .await
        .unwrap();
    assert!(exists);

    // Bounded by CACHE_MAX_SIZE through the index.
    for i in 0..12 {
        verdict(a.url(&format!("/items/{i}")), &[]).await;
    }
    let size: u64 = r.scard("gateway:cache:keys").await.unwrap();
    assert!(
        size <= 5,
        "the index holds at most max_size entries: {size}"
    );
    let keys: Vec<String> = r
        .custom(fred::cmd!("KEYS"), vec!["gateway:cache:*"])
        .await
        .unwrap();
    assert!(
        keys.len() <= 6,
        "evicted entries are deleted with their index entry: {keys:?}"
    );

    // Purge needs the admin token.
    let c = client();
    let r401 = c.post(a.url("/gateway/cache/purge")).send().await.unwrap();
    expect_error(r401, 401, "unauthorized").await;

    // `POST url` with the admin token; the answer must be 200.
    let purge = async |url: String| {
        let r = c
            .post(url)
            .bearer_auth("admin-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<serde_json::Value>().await.unwrap()
    };
    // From an empty cache, so that no random eviction (the index is at its bound) removes
    // one of the two entries before the purge does.
    purge(a.url("/gateway/cache/purge")).await;
    verdict(a.url("/v1/models"), &lb).await;
    verdict(a.url("/v1/other"), &lb).await;
    assert_eq!(verdict(a.url("/v1/other"), &lb).await.0, "HIT");
    let body = purge(a.url("/gateway/cache/purge?prefix=%2Fv1%2Fmod")).await;
    assert_eq!(body["purged"], 1, "{body}");
    assert_eq!(verdict(b.url("/v1/models"), &lb).await.0, "MISS", "purged");
    assert_eq!(verdict(b.url("/v1/other"), &lb).await.0, "HIT", "kept");

    purge(b.url("/gateway/cache/purge")).await;
    let size: u64 = r.scard("gateway:cache:keys").await.unwrap();
    assert_eq!(size, 0);
    assert_eq!(verdict(a.url("/v1/other"), &lb).await.0, "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_without_an_admin_token_configured_is_forbidden() {
    let up = upstream().spawn().await;
    let gw = gateway().upstream(&up).config(cached).spawn().await;
    let r = client()
        .post(gw.url("/gateway/cache/purge"))
        .send()
        .await
        .unwrap();
    common::expect_admin_off(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_completion_is_not_passed_through_the_cache_chunk_by_chunk() {
    let events: Vec<String> = (0..20).map(|i| format!("{{\"token\":{i}}}")).collect();
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    let up = upstream()
        .sse("/v1/chat", &events, std::time::Duration::from_millis(1))
        .spawn()
        .await;
    let gw = gateway().upstream(&up).config(cached).spawn().await;
    let calls = || async {
        common::plugin_entry(gw.url("/gateway/plugins"), "cache").await["calls"]
            .as_u64()
            .unwrap()
    };
    let before = calls().await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .body(r#"{"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(cache_header(&r), "(none)");
    let body = r.text().await.unwrap();
    assert_eq!(body.matches("data: ").count(), 20, "every event arrives");
    assert_eq!(
        calls().await - before,
        2,
        "request and response headers only: no call per streamed chunk"
    );

    // A cacheable GET still has its body stored (and served).
    assert_eq!(verdict(gw.url("/v1/models"), &[]).await.0, "MISS");
    assert_eq!(verdict(gw.url("/v1/models"), &[]).await.0, "HIT");
}

/// A client that hangs up while the cache is storing the response (the plugin mid-call,
/// awaiting Redis) costs nothing after it: the interrupted instance is retired, not pooled, so
/// the next request does not trap on a component still inside its last call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_store_does_not_break_the_next_request() {
    let redis = RedisServer::start().await;
    let body: &'static str = Box::leak("x".repeat(64 * 1024).into_boxed_str());
    let up = upstream().route("/big", body).spawn().await;
    let gw = gateway()
        .upstream(&up)
        .redis(&redis.url())
        .config(cached)
        .spawn()
        .await;
    let c = client();
    for i in 0..20 {
        // Headers only: the response is dropped with its body unread.
        let r = c.get(gw.url(&format!("/big/{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(cache_header(&r), "MISS", "request {i}");
        drop(r);
    }
    let (v, b) = verdict(gw.url("/big/last"), &[]).await;
    assert_eq!(v, "MISS");
    assert_eq!(b.len(), body.len());
    assert_eq!(verdict(gw.url("/big/last"), &[]).await.0, "HIT");
    let cache = common::plugin_entry(gw.url("/gateway/plugins"), "cache").await;
    assert_eq!(cache["traps"], 0, "{cache}");
    assert_eq!(cache["state"], "active");
}
