//! The built-in plugins through the real gateway (docs/plugins/).
mod common;

use common::{client, expect_error, json, tempdir, GatewayProcess};
use wasmgate_config::{Config, LimitOverride, RateLimitAlgorithm};
use wasmgate_testkit::{gateway, upstream, RedisServer};

fn limited(max: u64) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.rate_limit.enabled = true;
        c.rate_limit.max_requests = max;
        c.rate_limit.window_ms = 60_000;
    }
}

/// A per-route or per-tenant limit of `n` requests in the default window.
fn max_only(n: u64) -> LimitOverride {
    LimitOverride {
        max_requests: Some(n),
        window_ms: None,
    }
}

/// `GET url` with `headers`.
async fn get_with(c: &reqwest::Client, url: String, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = c.get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} is missing"))
        .to_str()
        .unwrap()
        .to_string()
}

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

/// The issue's acceptance check: three gateways, one Redis, 90 concurrent requests, limit 20:
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

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT signed with HS256.
fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    use hmac::Mac;
    let signing = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing.as_bytes());
    format!("{signing}.{}", b64(&mac.finalize().into_bytes()))
}

/// An RSA key made by the `openssl` CLI: signs RS256 JWTs and describes itself as a JWK.
struct OpensslKey {
    pem: std::path::PathBuf,
}

impl OpensslKey {
    fn generate(dir: &std::path::Path, name: &str) -> OpensslKey {
        let pem = dir.join(format!("{name}.pem"));
        let ok = std::process::Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&pem)
            .arg("2048")
            .output()
            .expect("openssl is needed for RS256 tests")
            .status
            .success();
        assert!(ok, "openssl genrsa");
        OpensslKey { pem }
    }

    fn jwk(&self, kid: &str) -> serde_json::Value {
        let out = std::process::Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&self.pem)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let modulus = hex::decode(text.trim().trim_start_matches("Modulus=")).unwrap();
        serde_json::json!({"kty": "RSA", "kid": kid, "n": b64(&modulus), "e": b64(&[1, 0, 1])})
    }

    fn rs256(&self, kid: &str, claims: &serde_json::Value) -> String {
        let (signing, signature) = openssl_sign(&self.pem, "RS256", kid, claims);
        format!("{signing}.{}", b64(&signature))
    }
}

/// `header.claims` of a JWT with `alg` and `kid`, and its signature by `openssl dgst -sha256`
/// with the private key in `pem`.
fn openssl_sign(
    pem: &std::path::Path,
    alg: &str,
    kid: &str,
    claims: &serde_json::Value,
) -> (String, Vec<u8>) {
    let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid});
    let signing = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let input = pem.with_extension("input");
    std::fs::write(&input, &signing).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(pem)
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl dgst -sign");
    (signing, out.stdout)
}

/// A P-256 key made by the `openssl` CLI: signs ES256 JWTs and describes itself as a JWK.
struct OpensslEcKey {
    pem: std::path::PathBuf,
}

impl OpensslEcKey {
    fn generate(dir: &std::path::Path, name: &str) -> OpensslEcKey {
        let pem = dir.join(format!("{name}.pem"));
        let ok = std::process::Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(&pem)
            .status()
            .expect("openssl is needed for ES256 tests")
            .success();
        assert!(ok, "openssl ecparam -genkey");
        OpensslEcKey { pem }
    }

    fn jwk(&self, kid: &str) -> serde_json::Value {
        let out = std::process::Command::new("openssl")
            .args(["ec", "-pubout", "-outform", "DER", "-in"])
            .arg(&self.pem)
            .output()
            .unwrap();
        // The DER public key ends with the uncompressed point: 0x04, x, y.
        let point = &out.stdout[out.stdout.len() - 65..];
        assert_eq!(point[0], 4, "an uncompressed P-256 point");
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid,
                           "x": b64(&point[1..33]), "y": b64(&point[33..])})
    }

    /// An ES256 JWT: OpenSSL's DER signature turned into JWS's `r || s`, 32 bytes each.
    fn es256(&self, kid: &str, claims: &serde_json::Value) -> String {
        let (signing, der) = openssl_sign(&self.pem, "ES256", kid, claims);
        // SEQUENCE { INTEGER r, INTEGER s }, short lengths for P-256.
        assert_eq!(der[0], 0x30);
        let int = |at: usize| -> (Vec<u8>, usize) {
            assert_eq!(der[at], 0x02);
            let len = der[at + 1] as usize;
            let bytes = &der[at + 2..at + 2 + len];
            let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
            let mut fixed = vec![0u8; 32 - trimmed.len()];
            fixed.extend_from_slice(&trimmed);
            (fixed, at + 2 + len)
        };
        let (r, next) = int(2);
        let (s, _) = int(next);
        format!("{signing}.{}", b64(&[r, s].concat()))
    }
}

fn python_sha256(expr: &str, salt: &str, token: &str) -> String {
    let script = format!(
        "import hashlib,sys; salt, token = sys.argv[1], sys.argv[2]; print(hashlib.sha256(({expr}).encode()).hexdigest())"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script, salt, token])
        .output()
        .expect("python3");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(hash.len(), 64, "python3 printed a sha256: {hash:?}");
    hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_accepts_api_keys_in_either_header_and_never_forwards_them() {
    let up = upstream().spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| {
            c.auth.enabled = true;
            c.auth.api_keys = vec![wasmgate_config::Secret::new("k-live-1")];
            c.auth.api_key_hashes = vec![wasmgate_config::Secret::new(sha256_hex("k-hashed-2"))];
        })
        .spawn()
        .await;
    let c = client();
    let before = up.request_count();
    let r = c.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(header(&r, "www-authenticate"), r#"Bearer realm="wasmgate""#);
    expect_error(r, 401, "unauthorized").await;
    assert_eq!(up.request_count(), before, "refused before the upstream");

    let echo = json(
        c.get(gw.url("/v1/models"))
            .header("x-api-key", "k-live-1")
            .header("x-gateway-identity", "key:admin"),
    )
    .await;
    let id = common::echoed_header(&echo, "x-gateway-identity").unwrap();
    assert_eq!(
        id,
        format!("key:{}", &sha256_hex("k-live-1")[..8]),
        "not the client's claim"
    );
    assert!(
        common::echoed_header(&echo, "x-api-key").is_none(),
        "the key is not forwarded"
    );

    let echo = json(
        c.get(gw.url("/v1/models"))
            .header("authorization", "Bearer k-hashed-2"),
    )
    .await;
    assert_eq!(
        common::echoed_header(&echo, "x-gateway-identity").unwrap(),
        format!("key:{}", &sha256_hex("k-hashed-2")[..8])
    );
    assert!(common::echoed_header(&echo, "authorization").is_none());

    let r = get_with(&c, gw.url("/v1/models"), &[("x-api-key", "k-live-2")]).await;
    assert!(header(&r, "www-authenticate").contains("invalid_token"));
    expect_error(r, 401, "unauthorized").await;
    // Local endpoints need no credential.
    assert_eq!(
        c.get(gw.url("/gateway/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Without auth too, a client cannot claim an identity: the proxy drops `X-Gateway-Identity`.
#[tokio::test]
async fn a_client_cannot_claim_an_identity_without_auth() {
    let up = upstream().spawn().await;
    let gw = gateway().upstream(&up).spawn().await;
    let echo = json(
        client()
            .get(gw.url("/v1/models"))
            .header("x-gateway-identity", "key:admin"),
    )
    .await;
    assert!(common::echoed_header(&echo, "x-gateway-identity").is_none());
}

/// Worker tokens against hashes made the way the backend (Python `hashlib`) makes them, in
/// both formats, from the configuration and from a Redis set the operator fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_tokens_match_hashes_made_by_python_hashlib() {
    let salt = "distributed-gpu-inference-v1";
    let token = "wt-7f3a9c";
    let backend_hash = python_sha256(r#"f"{salt}:{token}""#, salt, token);
    let guide_hash = python_sha256("token + salt", salt, token);
    assert_ne!(backend_hash, guide_hash);
    let up = upstream().spawn().await;
    let redis = RedisServer::start().await;
    let with = |format: &'static str, hashes: Vec<String>| {
        move |c: &mut Config| {
            c.auth.enabled = true;
            c.auth.token_salt = Some(wasmgate_config::Secret::new(salt));
            c.auth.token_hash_format = format.into();
            c.auth.token_hashes = hashes
                .into_iter()
                .map(wasmgate_config::Secret::new)
                .collect();
        }
    };
    let backend = gateway()
        .upstream(&up)
        .config(with("{salt}:{token}", vec![backend_hash.clone()]))
        .spawn()
        .await;
    let guide = gateway()
        .upstream(&up)
        .config(with("{token}{salt}", vec![guide_hash.clone()]))
        .spawn()
        .await;
    let from_redis = gateway()
        .upstream(&up)
        .redis(&redis.url())
        .config(with("{salt}:{token}", vec![]))
        .config(|c| c.auth.token_hash_set = Some("auth:worker-token-hashes".into()))
        .spawn()
        .await;
    let c = client();
    for gw in [&backend, &guide] {
        let echo = json(
            c.get(gw.url("/api/v1/jobs"))
                .header("x-worker-token", token),
        )
        .await;
        assert_eq!(
            common::echoed_header(&echo, "x-worker-token"),
            Some(token),
            "forwarded: the backend checks it too"
        );
        assert!(common::echoed_header(&echo, "x-gateway-identity")
            .unwrap()
            .starts_with("worker:"));
        let r = get_with(
            &c,
            gw.url("/api/v1/jobs"),
            &[("x-worker-token", "wt-wrong")],
        )
        .await;
        expect_error(r, 401, "unauthorized").await;
    }
    let r = get_with(
        &c,
        from_redis.url("/api/v1/jobs"),
        &[("x-worker-token", token)],
    )
    .await;
    assert_eq!(r.status(), 401, "not in the set yet");
    let py = redis.client().await;
    let _: i64 = fred::interfaces::SetsInterface::sadd(
        &py,
        "auth:worker-token-hashes",
        backend_hash.as_str(),
    )
    .await
    .unwrap();
    let r = get_with(
        &c,
        from_redis.url("/api/v1/jobs"),
        &[("x-worker-token", token)],
    )
    .await;
    assert_eq!(r.status(), 200, "the operator's set is read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_hs256_rs256_and_es256_with_claims_checked_and_tenants_for_later_plugins() {
    let dir = tempdir("jwt");
    let key = OpensslKey::generate(&dir, "signer");
    let stranger = OpensslKey::generate(&dir, "stranger");
    let ec = OpensslEcKey::generate(&dir, "ec-signer");
    let ec_stranger = OpensslEcKey::generate(&dir, "ec-stranger");
    let jwks = serde_json::json!({"keys": [key.jwk("k1"), ec.jwk("e1")]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
    let up = upstream().spawn().await;
    let jwks_file = dir.join("jwks.json").display().to_string();
    let gw = gateway()
        .upstream(&up)
        .config(move |c| {
            c.auth.enabled = true;
            c.auth.jwt_secret = Some(wasmgate_config::Secret::new("hs-secret"));
            c.auth.jwt_jwks_file = Some(jwks_file);
            c.auth.jwt_issuer = Some("https://idp.example".into());
            c.auth.jwt_audience = Some("wasmgate".into());
            c.rate_limit.enabled = true;
            c.rate_limit.max_requests = 100;
            c.rate_limit.tenants.insert("acme".into(), max_only(1));
        })
        .spawn()
        .await;
    let c = client();
    let now = unix_now();
    let claims = |sub: &str, tenant: &str| {
        serde_json::json!({"sub": sub, "tenant": tenant, "iss": "https://idp.example",
                           "aud": ["other", "wasmgate"], "exp": now + 300, "nbf": now - 5})
    };
    let status = async |token: String| {
        c.get(gw.url("/v1/chat"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    let echo = json(
        c.get(gw.url("/v1/chat"))
            .bearer_auth(hs256("hs-secret", &claims("alice", "globex"))),
    )
    .await;
    assert_eq!(
        common::echoed_header(&echo, "x-gateway-identity"),
        Some("jwt:alice")
    );
    assert!(common::echoed_header(&echo, "authorization").is_none());
    assert_eq!(status(key.rs256("k1", &claims("bob", "globex"))).await, 200);
    // ES256 (P-256), signed by OpenSSL: several tokens, since r and s vary in length.
    for sub in ["dave", "erin", "frank"] {
        assert_eq!(status(ec.es256("e1", &claims(sub, "globex"))).await, 200);
    }
    assert_eq!(
        status(ec_stranger.es256("e1", &claims("eve", "globex"))).await,
        401,
        "an ES256 token signed by a key not in the JWKS"
    );
    let forged = ec.es256("e1", &claims("eve", "globex"));
    let (head, _) = forged.rsplit_once('.').unwrap();
    let tampered = format!(
        "{}.{}",
        head.replace(
            &b64(claims("eve", "globex").to_string().as_bytes()),
            &b64(claims("mallory", "globex").to_string().as_bytes())
        ),
        forged.rsplit('.').next().unwrap()
    );
    assert_eq!(status(tampered).await, 401, "claims changed after signing");

    assert_eq!(
        status(hs256("wrong-secret", &claims("eve", "globex"))).await,
        401
    );
    assert_eq!(
        status(stranger.rs256("k1", &claims("eve", "globex"))).await,
        401
    );
    let mut expired = claims("eve", "globex");
    expired["exp"] = (now - 120).into();
    assert_eq!(status(hs256("hs-secret", &expired)).await, 401);
    let mut early = claims("eve", "globex");
    early["nbf"] = (now + 120).into();
    assert_eq!(status(hs256("hs-secret", &early)).await, 401);
    let mut foreign = claims("eve", "globex");
    foreign["iss"] = "https://evil.example".into();
    assert_eq!(status(hs256("hs-secret", &foreign)).await, 401);
    let mut wrong_aud = claims("eve", "globex");
    wrong_aud["aud"] = "someone-else".into();
    assert_eq!(status(hs256("hs-secret", &wrong_aud)).await, 401);
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(claims("eve", "globex").to_string().as_bytes())
    );
    assert_eq!(status(unsigned).await, 401, "alg none is refused");

    // The tenant claim reaches later plugins: acme's own limit (1) applies to carol.
    let carol = hs256("hs-secret", &claims("carol", "acme"));
    assert_eq!(status(carol.clone()).await, 200);
    assert_eq!(
        status(carol).await,
        429,
        "the tenant's limit, keyed by identity"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The status of a GET with `token` as its bearer.
async fn status_with(c: &reqwest::Client, url: &str, token: &str) -> u16 {
    let r = c.get(url).bearer_auth(token).send().await.unwrap();
    r.status().as_u16()
}

/// Polls until a request with `token` gets `want` (the JWKS refresh runs in the background).
async fn until_status(c: &reqwest::Client, url: &str, token: &str, want: u16) -> bool {
    for _ in 0..100 {
        if status_with(c, url, token).await == want {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_from_an_identity_provider_url_is_fetched_refreshed_and_kept_through_failures() {
    let dir = tempdir("jwks-url");
    let old = OpensslKey::generate(&dir, "old");
    let new = OpensslKey::generate(&dir, "new");
    let doc = |key: &OpensslKey, kid: &str| serde_json::json!({"keys": [key.jwk(kid)]}).to_string();
    let (idp, jwks) = upstream().document("/.well-known/jwks.json", &doc(&old, "k-old"));
    let idp = idp.spawn().await;
    let up = upstream().spawn().await;
    let url = format!("{}/.well-known/jwks.json", idp.url());
    let gw = gateway()
        .upstream(&up)
        .config(move |c| {
            c.auth.enabled = true;
            c.auth.jwt_jwks_url = Some(url);
            c.auth.jwt_jwks_refresh_s = 1;
        })
        .spawn()
        .await;
    let c = client();
    let claims = serde_json::json!({"sub": "carol", "exp": unix_now() + 300});
    let by_old = old.rs256("k-old", &claims);
    let by_new = new.rs256("k-new", &claims);
    let target = gw.url("/v1/chat");
    assert!(
        until_status(&c, &target, &by_old, 200).await,
        "the provider's key was fetched"
    );
    assert_eq!(
        status_with(&c, &target, &by_new).await,
        401,
        "a key the provider does not publish"
    );
    // The provider rotates its key: picked up at the next refresh, the old one dropped.
    *jwks.lock().unwrap() = doc(&new, "k-new").into();
    assert!(until_status(&c, &target, &by_new, 200).await, "rotated in");
    assert!(until_status(&c, &target, &by_old, 401).await, "rotated out");
    // The provider fails (503), then serves garbage: the last good keys stay.
    *jwks.lock().unwrap() = bytes::Bytes::new();
    let fetches = idp.requests_to("/.well-known/jwks.json");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(
        idp.requests_to("/.well-known/jwks.json") > fetches,
        "fetched again"
    );
    assert_eq!(status_with(&c, &target, &by_new).await, 200);
    *jwks.lock().unwrap() = "{\"not\": \"a jwks\"}".into();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(status_with(&c, &target, &by_new).await, 200);
    std::fs::remove_dir_all(dir).ok();
}

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
    let dead = format!("http://127.0.0.1:{}", wasmgate_testkit::free_port());
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
