//! auth's JWTs: HS256, RS256 and ES256, claims, JWKS files and URLs.
use super::*;

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
