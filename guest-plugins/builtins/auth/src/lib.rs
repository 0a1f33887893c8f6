//! The `auth` built-in (docs/plugins/auth.md).
//!
//! Accepts, in this order:
//! - `X-Worker-Token`: valid when hex(sha256(format with `{salt}` and `{token}` filled in)) is
//!   among the configured hashes or in the operator's Redis set (read-only grant). Forwarded:
//!   the backend checks it too.
//! - `X-API-Key: <key>` or `Authorization: Bearer <key>`: valid when sha256(key) is among the
//!   configured key hashes (plain keys are hashed by the host before they reach the plugin).
//! - `Authorization: Bearer <jwt>`: HS256 (shared secret), RS256 or ES256 (JWKS), with `exp`,
//!   `nbf`, `iss` and `aud` checked.
//!
//! Every comparison of a secret is constant-time and goes over every candidate. A presented
//! key or token is hashed once (the host's sha256) and compared inside the plugin with a
//! branch-free comparison, not through a host call per candidate: with many keys configured,
//! a request costs one hash and a few hundred instructions instead of one host call per key.
//! An API key that verified is remembered by a keyed MAC of it ([`KeyCache`]): the next
//! request with the same key costs a SipHash instead of the sha256 and the comparisons. The
//! caller's identity (`key:<id>`, `worker:<hash prefix>`, `jwt:<sub>`) and
//! tenant become request properties and the `X-Gateway-Identity` header upstream (the proxy
//! removes a client's own before plugins run); the gateway's credential (API key or bearer) is
//! removed before forwarding. Otherwise `401 unauthorized` with `WWW-Authenticate`.
use std::hash::Hasher;

use base64::Engine;
use siphasher::sip128::{Hasher128, SipHasher24};
use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct ApiKey {
    id: String,
    sha256: String,
}

#[derive(serde::Deserialize, Clone)]
struct RsaKey {
    kid: Option<String>,
    n: String,
    e: String,
}

/// A P-256 public key (JWK `kty: EC`, `crv: P-256`).
#[derive(serde::Deserialize, Clone)]
struct EcKey {
    kid: Option<String>,
    x: String,
    y: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    api_keys: Vec<ApiKey>,
    #[serde(default)]
    token_salt: String,
    #[serde(default = "default_format")]
    token_hash_format: String,
    #[serde(default)]
    token_hashes: Vec<String>,
    token_hash_set: Option<String>,
    jwt_secret: Option<String>,
    #[serde(default)]
    jwt_rsa_keys: Vec<RsaKey>,
    #[serde(default)]
    jwt_ec_keys: Vec<EcKey>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    #[serde(default = "default_tenant_claim")]
    jwt_tenant_claim: String,
    #[serde(default = "default_leeway")]
    jwt_leeway_s: u64,
}

fn default_format() -> String {
    "{salt}:{token}".into()
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_leeway() -> u64 {
    30
}

/// The plugin (a member of the built-in bundle, `guest-plugins/builtins/bundle`).
pub struct Auth {
    s: Settings,
    /// Decoded API key hashes, with the identity of each (`key:<id>`).
    keys: Vec<(String, Vec<u8>)>,
    /// Decoded worker token hashes.
    token_hashes: Vec<Vec<u8>>,
    /// Decoded RS256 keys: (kid, n, e).
    rsa: Vec<(Option<String>, Vec<u8>, Vec<u8>)>,
    /// Decoded ES256 keys: (kid, x, y).
    ec: Vec<(Option<String>, Vec<u8>, Vec<u8>)>,
    /// API keys that verified, by their MAC.
    cache: KeyCache,
}

/// The API keys presented to this instance that verified, remembered by a keyed MAC of the
/// key (SipHash-2-4, 128 bits, with a random key per instance from the host's CSPRNG):
/// `slots[mac % SLOTS]` holds `(mac, index in keys)`. A presented key whose MAC is in its slot
/// is the key that verified there, with no sha256 and no pass over the configured hashes.
///
/// What this keeps is a MAC under a key that never leaves the instance, not the key or its
/// sha256: a forged match needs a 128-bit collision of a PRF whose key is unknown. The MAC is
/// compared in constant time; a hit is faster than a miss, which tells a caller only that the
/// exact key it sent verified before (so it is valid). Keys come from the configuration, which
/// does not change during an instance's life (a reload makes new instances), so an entry never
/// goes stale. Worker tokens (which a Redis set may revoke) and JWTs (which expire) are not
/// cached. A slot holds the latest key that verified there: 1 024 slots, no growth.
struct KeyCache {
    mac_key: [u8; 16],
    slots: Vec<Option<(u128, u32)>>,
}

impl KeyCache {
    const SLOTS: usize = 1024;

    fn new() -> KeyCache {
        let mut mac_key = [0u8; 16];
        let random = crypto::random_bytes(16);
        mac_key.copy_from_slice(&random[..16]);
        KeyCache {
            mac_key,
            slots: vec![None; Self::SLOTS],
        }
    }

    fn mac(&self, key: &[u8]) -> u128 {
        let mut h = SipHasher24::new_with_key(&self.mac_key);
        h.write(key);
        h.finish128().as_u128()
    }

    /// The index (in the configured keys) of the key whose MAC is `mac`, if it verified here.
    fn get(&self, mac: u128) -> Option<u32> {
        let (cached, index) = self.slots[mac as usize % Self::SLOTS]?;
        constant_time_eq(&cached.to_le_bytes(), &mac.to_le_bytes()).then_some(index)
    }

    fn put(&mut self, mac: u128, index: u32) {
        self.slots[mac as usize % Self::SLOTS] = Some((mac, index));
    }
}

/// A verified caller (an API key's identity is the configured one, borrowed).
struct Caller<'a> {
    identity: std::borrow::Cow<'a, str>,
    tenant: Option<String>,
}

enum Failure {
    /// No credential at all.
    Missing,
    /// A credential that does not verify (the message says which kind, never why in detail).
    Invalid(&'static str),
    /// The token store could not be asked.
    Unavailable,
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// sha256, by the host (native code with the CPU's SHA extensions). In wasm, `sha2`'s rounds
/// are 14 KB of code and about 3 000 instructions a block, more than the host call
/// (docs/performance.md, 2026-12-04).
fn sha256(data: &[u8]) -> [u8; 32] {
    crypto::sha256(data)
        .try_into()
        .expect("the host's sha256 is 32 bytes")
}

/// Whether `a == b`, in time that depends only on the lengths (which are public: hashes and
/// MACs have fixed sizes). `black_box` keeps the compiler from turning the fold into an early
/// exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether `candidate` equals any of `known`, comparing with every one in constant time.
fn matches_any<'a>(candidate: &[u8], known: impl Iterator<Item = &'a [u8]>) -> Option<usize> {
    let mut found = None;
    for (i, k) in known.enumerate() {
        if constant_time_eq(candidate, k) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

/// Whether a JWKS key verifies: the one the token's `kid` names, or any when it names none.
fn any_key(
    keys: &[(Option<String>, Vec<u8>, Vec<u8>)],
    kid: Option<&str>,
    verify: impl Fn(&[u8], &[u8]) -> bool,
) -> bool {
    keys.iter()
        .filter(|(k, _, _)| kid.is_none() || k.as_deref() == kid)
        .any(|(_, a, b)| verify(a, b))
}

fn now_s() -> u64 {
    clock::now_ms() / 1000
}

impl Auth {
    fn worker_token(&self, token: &str) -> Result<Caller<'static>, Failure> {
        let material = self
            .s
            .token_hash_format
            .replace("{salt}", &self.s.token_salt)
            .replace("{token}", token);
        let hash = sha256(material.as_bytes());
        let hash_hex = hex::encode(hash);
        let known = matches_any(&hash, self.token_hashes.iter().map(Vec::as_slice)).is_some();
        let known = known
            || match &self.s.token_hash_set {
                Some(set) => match kv::shared_set_contains(set, &hash_hex) {
                    Ok(found) => found,
                    Err(kv::KvError::Unavailable(_)) => return Err(Failure::Unavailable),
                    Err(e) => {
                        log::log(log::Level::Warn, &format!("token hash set: {e:?}"));
                        false
                    }
                },
                None => false,
            };
        if known {
            Ok(Caller {
                identity: format!("worker:{}", &hash_hex[..12]).into(),
                tenant: None,
            })
        } else {
            Err(Failure::Invalid("worker token"))
        }
    }

    /// The index (in `keys`) of the configured key `key` is.
    fn api_key(&mut self, key: &str) -> Result<usize, Failure> {
        let mac = self.cache.mac(key.as_bytes());
        if let Some(i) = self.cache.get(mac) {
            return Ok(i as usize);
        }
        let hash = sha256(key.as_bytes());
        let i = matches_any(&hash, self.keys.iter().map(|(_, h)| h.as_slice()))
            .ok_or(Failure::Invalid("API key"))?;
        self.cache.put(mac, i as u32);
        Ok(i)
    }

    fn key_caller(&self, index: usize) -> Caller<'_> {
        Caller {
            identity: self.keys[index].0.as_str().into(),
            tenant: None,
        }
    }

    fn jwt(&self, token: &str) -> Result<Caller<'static>, Failure> {
        let bad = Failure::Invalid("token");
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad);
        };
        let header: serde_json::Value =
            serde_json::from_slice(&b64url(h).ok_or(Failure::Invalid("token"))?)
                .map_err(|_| Failure::Invalid("token"))?;
        let sig = b64url(sig).ok_or(Failure::Invalid("token"))?;
        let signed = format!("{h}.{p}");
        let verified = match header["alg"].as_str() {
            Some("HS256") => match &self.s.jwt_secret {
                Some(secret) => {
                    let mac = crypto::hmac_sha256(secret.as_bytes(), signed.as_bytes());
                    constant_time_eq(&mac, &sig)
                }
                None => false,
            },
            Some("RS256") => any_key(&self.rsa, header["kid"].as_str(), |n, e| {
                crypto::rsa_pkcs1_sha256_verify(n, e, signed.as_bytes(), &sig)
            }),
            Some("ES256") => any_key(&self.ec, header["kid"].as_str(), |x, y| {
                crypto::ecdsa_p256_sha256_verify(x, y, signed.as_bytes(), &sig)
            }),
            // `none` and every other algorithm are refused.
            _ => false,
        };
        if !verified {
            return Err(Failure::Invalid("token"));
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&b64url(p).ok_or(Failure::Invalid("token"))?)
                .map_err(|_| Failure::Invalid("token"))?;
        let now = now_s();
        let leeway = self.s.jwt_leeway_s;
        if claims["exp"].as_u64().is_some_and(|exp| now > exp + leeway) {
            return Err(Failure::Invalid("token (expired)"));
        }
        if claims["nbf"].as_u64().is_some_and(|nbf| now + leeway < nbf) {
            return Err(Failure::Invalid("token (not yet valid)"));
        }
        if let Some(iss) = &self.s.jwt_issuer {
            if claims["iss"].as_str() != Some(iss.as_str()) {
                return Err(Failure::Invalid("token (issuer)"));
            }
        }
        if let Some(aud) = &self.s.jwt_audience {
            let ok = match &claims["aud"] {
                serde_json::Value::String(a) => a == aud,
                serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(aud)),
                _ => false,
            };
            if !ok {
                return Err(Failure::Invalid("token (audience)"));
            }
        }
        let sub = claims["sub"].as_str().unwrap_or("anonymous");
        Ok(Caller {
            identity: format!("jwt:{sub}").into(),
            tenant: claims[self.s.jwt_tenant_claim.as_str()]
                .as_str()
                .map(str::to_string),
        })
    }

    fn authenticate(&mut self) -> Result<Caller<'_>, Failure> {
        if let Some(token) = request::get_header("x-worker-token") {
            return self.worker_token(token.trim());
        }
        // Borrowed: no `String` for the key on every request.
        if let Some(r) = request::with_header("x-api-key", |k| k.map(|k| self.api_key(k.trim()))) {
            request::remove_header("x-api-key");
            return r.map(|i| self.key_caller(i));
        }
        if let Some(auth) = request::get_header("authorization") {
            let Some(cred) = auth
                .strip_prefix("Bearer ")
                .or_else(|| auth.strip_prefix("bearer "))
            else {
                return Err(Failure::Invalid("authorization scheme (use Bearer)"));
            };
            let cred = cred.trim();
            let r = if cred.matches('.').count() == 2 {
                self.jwt(cred)
            } else {
                self.api_key(cred).map(|i| self.key_caller(i))
            };
            request::remove_header("authorization");
            return r;
        }
        Err(Failure::Missing)
    }
}

impl Plugin for Auth {
    fn new(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let keys = s
            .api_keys
            .iter()
            .map(|k| {
                hex::decode(k.sha256.trim())
                    .ok()
                    .filter(|h| h.len() == 32)
                    .map(|h| (format!("key:{}", k.id), h))
                    .ok_or_else(|| format!("api key `{}`: sha256 must be 64 hex digits", k.id))
            })
            .collect::<Result<_, _>>()?;
        let token_hashes = s
            .token_hashes
            .iter()
            .enumerate()
            .map(|(i, h)| {
                hex::decode(h.trim())
                    .ok()
                    .filter(|h| h.len() == 32)
                    .ok_or_else(|| format!("token_hashes[{i}] must be 64 hex digits"))
            })
            .collect::<Result<_, _>>()?;
        let rsa = s
            .jwt_rsa_keys
            .iter()
            .map(|k| match (b64url(&k.n), b64url(&k.e)) {
                (Some(n), Some(e)) => Ok((k.kid.clone(), n, e)),
                _ => Err(format!("JWKS key {:?}: n and e must be base64url", k.kid)),
            })
            .collect::<Result<_, _>>()?;
        let ec = s
            .jwt_ec_keys
            .iter()
            .map(|k| match (b64url(&k.x), b64url(&k.y)) {
                (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => Ok((k.kid.clone(), x, y)),
                _ => Err(format!(
                    "JWKS key {:?}: x and y must be base64url of 32 bytes (P-256)",
                    k.kid
                )),
            })
            .collect::<Result<_, _>>()?;
        if !s.token_hash_format.contains("{token}") {
            return Err("token_hash_format must contain {token}".into());
        }
        Ok(Auth {
            s,
            keys,
            token_hashes,
            rsa,
            ec,
            cache: KeyCache::new(),
        })
    }

    fn info(&self) -> Info {
        let mut info = Info::new("auth", env!("CARGO_PKG_VERSION"))
            .phase(Phase::RequestHeaders)
            .capability("metrics");
        if self.s.token_hash_set.is_some() {
            info = info.capability("kv");
        }
        info
    }

    fn on_request_headers(&mut self) -> Action {
        match self.authenticate() {
            Ok(caller) => {
                metrics::counter_add("accepted", 1);
                request::set_property("identity", &caller.identity);
                if let Some(t) = &caller.tenant {
                    request::set_property("tenant", t);
                }
                request::set_header("x-gateway-identity", &caller.identity);
                Action::Continue
            }
            Err(Failure::Unavailable) => {
                metrics::counter_add("rejected_unavailable", 1);
                Action::error(
                    503,
                    "auth_unavailable",
                    "credentials cannot be checked right now",
                )
            }
            Err(f) => {
                let (reason, message, challenge) = match f {
                    Failure::Missing => (
                        "missing",
                        "a credential is required: X-API-Key, Authorization: Bearer, or X-Worker-Token".to_string(),
                        r#"Bearer realm="wasmgate""#,
                    ),
                    Failure::Invalid(what) => (
                        "invalid",
                        format!("invalid {what}"),
                        r#"Bearer realm="wasmgate", error="invalid_token""#,
                    ),
                    Failure::Unavailable => unreachable!(),
                };
                metrics::counter_add(&format!("rejected_{reason}"), 1);
                let mut action = Action::error(401, "unauthorized", &message);
                if let Action::Respond(r) = &mut action {
                    r.headers.push(Header {
                        name: "www-authenticate".into(),
                        value: challenge.into(),
                    });
                }
                action
            }
        }
    }
}
