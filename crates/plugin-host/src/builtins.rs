//! The built-in plugins: guest components compiled into the binary (`guest-plugins/builtins/`),
//! each configured from its section of the gateway configuration (or the ACIP `.env` names)
//! and loaded like a folder plugin. A folder plugin with the same name replaces a built-in.
//!
//! Chain order (lower first; folder plugins default to 0): `cors` -500 (preflights are
//! answered before credentials are asked for), `auth` -400, `rate-limit` -300 (so limits can
//! key on the authenticated identity), `cache` -200 (hits count against rate limits),
//! `router` -100 (after every plugin that may refuse the request), `request-signing` last (it
//! signs what every other plugin left), `security-headers` -600 (its response phase runs
//! last: response phases run in reverse order).
use std::sync::Arc;

use serde_json::json;
use wasmgate_config::{Config, RouterStrategy};

use crate::settings::{FailPolicy, PluginSettings};
use crate::{guests, LoadedPlugin, PluginRuntime, PluginSource};

/// Position of `security-headers` in the chain.
pub const SECURITY_HEADERS_ORDER: i64 = -600;
/// Position of `cors` in the chain.
pub const CORS_ORDER: i64 = -500;
/// Position of `auth` in the chain.
pub const AUTH_ORDER: i64 = -400;
/// Position of `rate-limit` in the chain.
pub const RATE_LIMIT_ORDER: i64 = -300;
/// Position of `cache` in the chain (after rate limits: hits count against them).
pub const CACHE_ORDER: i64 = -200;
/// Position of `request-signing` in the chain: last, after every folder plugin.
pub const REQUEST_SIGNING_ORDER: i64 = 1_000_000;
/// Position of `router` in the chain (after the plugins that may refuse the request).
pub const ROUTER_ORDER: i64 = -100;

fn wasm(name: &str) -> &'static [u8] {
    guests::BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, w)| *w)
        .unwrap_or_else(|| panic!("built-in `{name}` is not embedded (build.rs BUILTINS)"))
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// The keys of a JWKS document the auth plugin verifies with: RS256 (`[{"kid", "n", "e"}]`)
/// and ES256 (P-256: `[{"kid", "x", "y"}]`). Other key types are skipped.
fn jwks_keys(doc: &str, what: &str, keys: &mut JwtKeys) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| format!("{what}: not a JWKS document: {e}"))?;
    let list = v["keys"]
        .as_array()
        .ok_or_else(|| format!("{what}: a JWKS document has a `keys` list"))?;
    for k in list {
        if k["kty"] == "RSA" && k["n"].is_string() && k["e"].is_string() {
            keys.rsa
                .push(json!({"kid": k["kid"], "n": k["n"], "e": k["e"]}));
        } else if k["kty"] == "EC"
            && k["crv"] == "P-256"
            && k["x"].is_string()
            && k["y"].is_string()
        {
            keys.ec
                .push(json!({"kid": k["kid"], "x": k["x"], "y": k["y"]}));
        }
    }
    Ok(())
}

/// From each `auth.jwt_jwks_url`, the last good JWKS document fetched and its keys (the proxy
/// fetches and refreshes them; the `auth` built-in is configured from what is here).
static REMOTE_JWKS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, (String, JwtKeys)>>,
> = std::sync::LazyLock::new(Default::default);

/// Records the JWKS document fetched from `url`. Returns whether it differs from the one held
/// (the built-ins need configuring again only then); an invalid document is refused and the
/// previous one kept.
pub fn set_remote_jwks(url: &str, doc: String) -> Result<bool, String> {
    let mut keys = JwtKeys::default();
    jwks_keys(&doc, &format!("JWKS from {url}"), &mut keys)?;
    if keys.rsa.is_empty() && keys.ec.is_empty() {
        return Err(format!(
            "JWKS from {url}: no RS256 or ES256 (P-256) key in it"
        ));
    }
    let mut held = REMOTE_JWKS.lock().unwrap_or_else(|p| p.into_inner());
    if held.get(url).is_some_and(|(old, _)| *old == doc) {
        return Ok(false);
    }
    held.insert(url.to_string(), (doc, keys));
    Ok(true)
}

/// The JWT public keys from the config's JWKS document, file and URL.
#[derive(Default, Clone)]
struct JwtKeys {
    rsa: Vec<serde_json::Value>,
    ec: Vec<serde_json::Value>,
}

/// The `auth` built-in's `init` config: plain API keys become their sha256 (the plugin never
/// holds them), JWKS keys are read from the config and the JWKS file.
fn auth_settings(config: &Config) -> Result<PluginSettings, String> {
    let a = &config.auth;
    let mut api_keys: Vec<serde_json::Value> = Vec::new();
    for hash in a.api_keys.iter().map(|k| sha256_hex(k.expose())).chain(
        a.api_key_hashes
            .iter()
            .map(|h| h.expose().to_ascii_lowercase()),
    ) {
        api_keys.push(json!({"id": &hash[..hash.len().min(8)], "sha256": hash}));
    }
    let mut keys = JwtKeys::default();
    if let Some(doc) = &a.jwt_jwks {
        jwks_keys(doc, "auth.jwt_jwks", &mut keys)?;
    }
    if let Some(path) = &a.jwt_jwks_file {
        let doc = std::fs::read_to_string(path)
            .map_err(|e| format!("auth.jwt_jwks_file `{path}`: {e}"))?;
        jwks_keys(&doc, &format!("auth.jwt_jwks_file `{path}`"), &mut keys)?;
    }
    if let Some(url) = &a.jwt_jwks_url {
        // Fetched by the proxy; until the first fetch succeeds JWTs are refused (401).
        let held = REMOTE_JWKS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, remote)) = held.get(url) {
            keys.rsa.extend(remote.rsa.iter().cloned());
            keys.ec.extend(remote.ec.iter().cloned());
        }
    }
    if api_keys.is_empty()
        && a.token_hashes.is_empty()
        && a.token_hash_set.is_none()
        && a.jwt_secret.is_none()
        && a.jwt_jwks_url.is_none()
        && keys.rsa.is_empty()
        && keys.ec.is_empty()
    {
        tracing::warn!("auth is enabled but no credential is configured: every routed request is refused (set AUTH_API_KEYS, AUTH_TOKEN_HASHES or JWT_SECRET, or AUTH_ENABLED=false)");
    }
    let init = json!({
        "api_keys": api_keys,
        "token_salt": a.token_salt.as_ref().map(|s| s.expose()).unwrap_or_default(),
        "token_hash_format": a.token_hash_format,
        "token_hashes": a.token_hashes.iter().map(|h| h.expose().to_ascii_lowercase()).collect::<Vec<_>>(),
        "token_hash_set": a.token_hash_set,
        "jwt_secret": a.jwt_secret.as_ref().map(|s| s.expose()),
        "jwt_rsa_keys": keys.rsa,
        "jwt_ec_keys": keys.ec,
        "jwt_issuer": a.jwt_issuer,
        "jwt_audience": a.jwt_audience,
        "jwt_tenant_claim": a.jwt_tenant_claim,
        "jwt_leeway_s": a.jwt_leeway_s,
    });
    let mut grants = vec!["metrics".to_string()];
    let mut kv_read = Vec::new();
    if let Some(set) = &a.token_hash_set {
        grants.push("kv".into());
        kv_read.push(set.clone());
    }
    Ok(PluginSettings {
        grants,
        kv_read,
        namespace: Some("auth".into()),
        config_json: init.to_string(),
        order: AUTH_ORDER,
        fail_policy: FailPolicy::FailClosed,
        ..Default::default()
    })
}

/// The built-ins `config` enables, with their settings.
pub fn enabled(config: &Config) -> Result<Vec<(&'static str, PluginSettings)>, String> {
    let mut out = Vec::new();
    let sh = &config.security_headers;
    if sh.enabled {
        let mut headers: std::collections::BTreeMap<String, String> = [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "SAMEORIGIN"),
            ("referrer-policy", "no-referrer"),
            ("cross-origin-opener-policy", "same-origin"),
            ("cross-origin-resource-policy", "same-origin"),
            ("origin-agent-cluster", "?1"),
            ("x-dns-prefetch-control", "off"),
            ("x-download-options", "noopen"),
            ("x-permitted-cross-domain-policies", "none"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if config.server.tls.is_some() && !sh.hsts.is_empty() {
            headers.insert("strict-transport-security".into(), sh.hsts.clone());
        }
        for (k, v) in &sh.headers {
            headers.insert(k.to_ascii_lowercase(), v.clone());
        }
        headers.retain(|_, v| !v.is_empty());
        let pairs: Vec<(String, String)> = headers.into_iter().collect();
        out.push((
            "security-headers",
            PluginSettings {
                config_json: json!({ "headers": pairs }).to_string(),
                order: SECURITY_HEADERS_ORDER,
                fail_policy: FailPolicy::FailOpen,
                ..Default::default()
            },
        ));
    }
    let cors = &config.cors;
    if cors.enabled {
        let init = json!({
            "origins": cors.origins,
            "methods": cors.methods,
            "headers": cors.headers,
            "expose_headers": cors.expose_headers,
            "credentials": cors.credentials,
            "max_age_s": cors.max_age_s,
        });
        out.push((
            "cors",
            PluginSettings {
                config_json: init.to_string(),
                order: CORS_ORDER,
                fail_policy: FailPolicy::FailOpen,
                ..Default::default()
            },
        ));
    }
    if config.auth.enabled {
        out.push(("auth", auth_settings(config)?));
    }
    let rl = &config.rate_limit;
    if rl.enabled {
        let init = json!({
            "max_requests": rl.max_requests,
            "window_ms": rl.window_ms,
            "algorithm": rl.algorithm,
            "fail_open": rl.fail_open,
            "routes": rl.routes,
            "tenants": rl.tenants,
        });
        out.push((
            "rate-limit",
            PluginSettings {
                grants: vec!["kv".into(), "metrics".into()],
                namespace: Some("ratelimit".into()),
                config_json: init.to_string(),
                order: RATE_LIMIT_ORDER,
                fail_policy: if rl.fail_open {
                    FailPolicy::FailOpen
                } else {
                    FailPolicy::FailClosed
                },
                ..Default::default()
            },
        ));
    }
    let cache = &config.cache;
    if cache.enabled {
        let init = json!({
            "ttl_ms": cache.ttl_seconds.saturating_mul(1000),
            "max_entries": cache.max_size,
            "methods": cache.methods,
            "paths": cache.paths,
            "exclude_paths": cache.exclude_paths,
            "public_routes": cache.public_routes,
            "max_entry_bytes": cache.max_entry_bytes,
        });
        out.push((
            "cache",
            PluginSettings {
                grants: vec!["kv".into(), "metrics".into()],
                namespace: Some("cache".into()),
                config_json: init.to_string(),
                order: CACHE_ORDER,
                // A broken cache must not break the API: requests go to the upstream.
                fail_policy: FailPolicy::FailOpen,
                ..Default::default()
            },
        ));
    }
    let router = &config.router;
    if router.strategy != RouterStrategy::RoundRobin {
        let init = json!({
            "strategy": router.strategy,
            "region_header": router.region_header,
            "networks": router.networks.iter().collect::<Vec<_>>(),
        });
        let grants = if router.strategy == RouterStrategy::LeastLoaded {
            vec!["workers".to_string()]
        } else {
            Vec::new()
        };
        out.push((
            "router",
            PluginSettings {
                grants,
                config_json: init.to_string(),
                order: ROUTER_ORDER,
                // Without a choice the host's round-robin still routes the request.
                fail_policy: FailPolicy::FailOpen,
                ..Default::default()
            },
        ));
    }
    if let Some(secret) = config
        .request_signing
        .secret
        .as_ref()
        .filter(|s| !s.is_empty())
    {
        out.push((
            "request-signing",
            PluginSettings {
                config_json: json!({ "secret": secret.expose() }).to_string(),
                order: REQUEST_SIGNING_ORDER,
                // An unsigned request would be refused by the backend anyway: say why here.
                fail_policy: FailPolicy::FailClosed,
                ..Default::default()
            },
        ));
    }
    Ok(out)
}

/// Whether two configurations configure the built-ins differently.
pub fn differ(a: &Config, b: &Config) -> bool {
    a.rate_limit != b.rate_limit
        || a.auth != b.auth
        || a.cors != b.cors
        || a.security_headers != b.security_headers
        || a.cache != b.cache
        || a.request_signing != b.request_signing
        || a.router.strategy != b.router.strategy
        || a.router.region_header != b.router.region_header
        || a.router.networks != b.router.networks
        || a.server.tls.is_some() != b.server.tls.is_some()
        || a.plugins.fuse_builtins != b.plugins.fuse_builtins
}

/// The built-ins that are members of the built-in bundle (`guest-plugins/builtins/bundle`):
/// those whose only phase is `on-request-headers`.
pub const BUNDLE_MEMBERS: &[&str] = &["auth", "cors", "rate-limit", "router", "security-headers"];

/// Loads the built-ins `config` enables and installs them in the running chain (replacing the
/// previous built-ins; folder plugins are kept). On error nothing changes.
pub async fn configure(runtime: &PluginRuntime, config: &Config) -> Result<(), String> {
    install(runtime, enabled(config)?, config.plugins.fuse_builtins).await
}

/// Loads `builtins` (from [`enabled`]) and installs them in the running chain. The bundle
/// members among them are members of one bundle when `fuse` is set (consecutive ones in a
/// chain then run with one call), else each of a bundle of its own.
pub async fn install(
    runtime: &PluginRuntime,
    builtins: Vec<(&'static str, PluginSettings)>,
    fuse: bool,
) -> Result<(), String> {
    let mut loaded: Vec<Arc<LoadedPlugin>> = Vec::new();
    let (mut members, others): (Vec<_>, Vec<_>) = builtins
        .into_iter()
        .partition(|(name, _)| BUNDLE_MEMBERS.contains(name));
    // In chain order, as the members of a bundle run.
    members.sort_by_key(|(name, s)| (s.order, *name));
    let groups: Vec<Vec<(String, PluginSettings)>> = if fuse {
        vec![members
            .into_iter()
            .map(|(n, s)| (n.to_string(), s))
            .collect()]
    } else {
        members
            .into_iter()
            .map(|(n, s)| vec![(n.to_string(), s)])
            .collect()
    };
    for group in groups.into_iter().filter(|g| !g.is_empty()) {
        let names: Vec<String> = group.iter().map(|(n, _)| n.clone()).collect();
        let enabled: Vec<bool> = group.iter().map(|(_, s)| s.enabled).collect();
        let plugins = runtime
            .load_bundle(wasm("bundle"), group)
            .await
            .map_err(|e| format!("built-in bundle ({}): {e}", names.join(", ")))?;
        for (p, on) in plugins.iter().zip(enabled) {
            if !on {
                p.set_enabled(false);
            }
        }
        loaded.extend(plugins);
    }
    for (name, settings) in others {
        let p = runtime
            .load(PluginSource::Builtin, wasm(name), settings)
            .await
            .map_err(|e| format!("built-in `{name}`: {e}"))?;
        loaded.push(p);
    }
    runtime.replace_builtins(loaded);
    Ok(())
}
