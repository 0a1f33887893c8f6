//! auth: API keys, identities, worker tokens (docs/plugins/auth.md).
use super::*;

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
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

/// auth remembers the API keys that verified (a MAC of each, per instance): on every later
/// request a key still maps to its own identity, whichever header carries it, and a key close
/// to a remembered one (one byte off, a prefix, an extension) is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_api_keys_keep_their_identity_and_near_misses_stay_refused() {
    let up = upstream().spawn().await;
    let keys: Vec<String> = (0..40).map(|i| format!("k-remembered-{i:02}")).collect();
    let gw = gateway()
        .upstream(&up)
        .config({
            let keys = keys.clone();
            move |c| {
                c.auth.enabled = true;
                c.auth.api_keys = keys.iter().map(wasmgate_config::Secret::new).collect();
            }
        })
        .spawn()
        .await;
    let c = client();
    for pass in 0..3 {
        for (i, key) in keys.iter().enumerate() {
            // Alternate the headers: both paths share what was remembered.
            let echo = if (i + pass) % 2 == 0 {
                json(c.get(gw.url("/v1/models")).header("x-api-key", key)).await
            } else {
                json(
                    c.get(gw.url("/v1/models"))
                        .header("authorization", format!("Bearer {key}")),
                )
                .await
            };
            assert_eq!(
                common::echoed_header(&echo, "x-gateway-identity").unwrap(),
                format!("key:{}", &sha256_hex(key)[..8]),
                "pass {pass}: {key} is its own caller"
            );
            let near = [
                key.replacen('k', "j", 1),
                key[..key.len() - 1].to_string(),
                format!("{key}x"),
            ];
            for wrong in near {
                let r = get_with(&c, gw.url("/v1/models"), &[("x-api-key", &wrong)]).await;
                assert_eq!(r.status(), 401, "pass {pass}: {wrong:?} after {key:?}");
            }
        }
    }
}
