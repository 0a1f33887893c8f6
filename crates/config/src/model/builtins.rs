//! The built-in plugins' sections (`[auth]`, `[rate_limit]`, `[cache]`, `[router]`, `[cors]`,
//! `[security_headers]`, `[request_signing]`) and `[workers]`, the GPU worker registry the
//! router reads.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Secret;

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a credential on proxied routes.
    pub enabled: bool,
    /// Accepted API keys, plain (`AUTH_API_KEYS`).
    pub api_keys: Vec<Secret>,
    /// Accepted API keys given as hex sha256 of the key.
    pub api_key_hashes: Vec<Secret>,
    /// Salt of the worker token hash (`AUTH_TOKEN_SALT`).
    pub token_salt: Option<Secret>,
    /// Accepted worker token hashes (`AUTH_TOKEN_HASHES`).
    pub token_hashes: Vec<Secret>,
    /// What is hashed: `{salt}` and `{token}` filled in (`AUTH_TOKEN_HASH_FORMAT`).
    pub token_hash_format: String,
    /// A Redis set of valid worker token hashes that the operator fills (read only), e.g.
    /// `auth:worker-token-hashes`; checked after `token_hashes`.
    pub token_hash_set: Option<String>,
    /// HS256 secret for JWTs (`JWT_SECRET`).
    pub jwt_secret: Option<Secret>,
    /// RS256 public keys as a JWKS document (`{"keys":[{"kty":"RSA","kid":..,"n":..,"e":..}]}`).
    pub jwt_jwks: Option<String>,
    /// A JWKS file with RS256 public keys, read at startup and on reload (`JWT_JWKS_FILE`).
    pub jwt_jwks_file: Option<String>,
    /// An identity provider's JWKS endpoint (`http(s)://…`, `JWT_JWKS_URL`): fetched at start
    /// and every `jwt_jwks_refresh_s`; a failed fetch keeps the keys of the last good one.
    pub jwt_jwks_url: Option<String>,
    /// How often the JWKS URL is fetched again, in seconds (`JWT_JWKS_REFRESH_S`).
    pub jwt_jwks_refresh_s: u64,
    /// Required `iss` claim.
    pub jwt_issuer: Option<String>,
    /// Required audience: the `aud` claim (a string or a list) must contain it.
    pub jwt_audience: Option<String>,
    /// The claim that names the tenant.
    pub jwt_tenant_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub jwt_leeway_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            api_keys: Vec::new(),
            api_key_hashes: Vec::new(),
            token_salt: None,
            token_hashes: Vec::new(),
            token_hash_format: "{salt}:{token}".into(),
            token_hash_set: None,
            jwt_secret: None,
            jwt_jwks: None,
            jwt_jwks_file: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_s: 300,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_tenant_claim: "tenant".into(),
            jwt_leeway_s: 30,
        }
    }
}

/// Rate-limit window algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAlgorithm {
    /// Sliding log window.
    #[default]
    Sliding,
    /// Fixed window counter.
    Fixed,
}

/// `[rate_limit]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Enforce a limit.
    pub enabled: bool,
    /// Window length in ms (`RATE_LIMIT_WINDOW_MS`).
    pub window_ms: u64,
    /// Requests allowed per window (`RATE_LIMIT_MAX_REQUESTS`).
    pub max_requests: u64,
    /// `sliding` or `fixed`.
    pub algorithm: RateLimitAlgorithm,
    /// Let requests through when the state store is unavailable (else `503`).
    pub fail_open: bool,
    /// Per-route limits: route name → `{max_requests, window_ms}` (either may be omitted).
    pub routes: BTreeMap<String, LimitOverride>,
    /// Per-tenant limits: tenant → `{max_requests, window_ms}`; a tenant's limit wins over a
    /// route's.
    pub tenants: BTreeMap<String, LimitOverride>,
}

/// A per-route or per-tenant rate limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverride {
    /// Requests allowed per window (default: `rate_limit.max_requests`).
    pub max_requests: Option<u64>,
    /// Window length in ms (default: `rate_limit.window_ms`).
    pub window_ms: Option<u64>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            window_ms: 60_000,
            max_requests: 100,
            algorithm: RateLimitAlgorithm::Sliding,
            fail_open: true,
            routes: BTreeMap::new(),
            tenants: BTreeMap::new(),
        }
    }
}

/// `[cache]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache responses.
    pub enabled: bool,
    /// Lifetime of an entry whose response has no `max-age` (`CACHE_TTL_SECONDS`).
    pub ttl_seconds: u64,
    /// Most entries kept (`CACHE_MAX_SIZE`).
    pub max_size: u64,
    /// Methods whose responses are cached.
    pub methods: Vec<String>,
    /// Path prefixes whose responses are cached (empty = every path).
    pub paths: Vec<String>,
    /// Path prefixes never cached (wins over `paths`).
    pub exclude_paths: Vec<String>,
    /// Routes whose cached responses are shared by every caller (the key leaves the caller's
    /// identity out). Only for responses that are the same for everyone.
    pub public_routes: Vec<String>,
    /// Largest response body stored, in bytes (larger ones pass uncached).
    pub max_entry_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            ttl_seconds: 300,
            max_size: 1_000,
            methods: vec!["GET".into(), "HEAD".into()],
            paths: Vec::new(),
            exclude_paths: Vec::new(),
            public_routes: Vec::new(),
            max_entry_bytes: 1024 * 1024,
        }
    }
}

/// Upstream target choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterStrategy {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight.
    LeastConnections,
    /// Targets in the client's region first.
    RegionAffinity,
    /// The target whose workers report the least load.
    LeastLoaded,
}

/// `[router]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// `ROUTER_STRATEGY`. `round-robin` is the core's own choice (no plugin runs); the others
    /// run the `router` built-in.
    pub strategy: RouterStrategy,
    /// Health check and worker registry refresh interval in ms (`ROUTER_HEALTH_CHECK_INTERVAL`).
    pub health_check_interval_ms: u64,
    /// Request header naming the client's region (`region-affinity`).
    pub region_header: String,
    /// Client networks (CIDR) → region, for requests without the region header.
    pub networks: BTreeMap<String, String>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            strategy: RouterStrategy::RoundRobin,
            health_check_interval_ms: 10_000,
            region_header: "x-region".into(),
            networks: BTreeMap::new(),
        }
    }
}

/// `[workers]`: the registry of GPU workers built from what they write to Redis
/// (`worker:{id}:status`, `:gpu`, `:heartbeat`), refreshed every
/// `router.health_check_interval_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// Path of the worker list endpoint; empty disables it.
    pub endpoint: String,
    /// A worker is active while its heartbeat is younger than this, in ms.
    pub max_heartbeat_age_ms: u64,
    /// Prefix of the keys workers write (`worker:`). Read only: the gateway never writes it.
    pub key_prefix: String,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            endpoint: "/api/v1/workers".into(),
            max_heartbeat_age_ms: 30_000,
            key_prefix: "worker:".into(),
        }
    }
}

/// `[cors]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Answer preflights and add CORS headers.
    pub enabled: bool,
    /// Allowed origins (`CORS_ORIGIN`, comma-separated; `*` for any).
    pub origins: Vec<String>,
    /// Allowed methods (`CORS_METHODS`).
    pub methods: Vec<String>,
    /// Request headers a cross-origin request may send.
    pub headers: Vec<String>,
    /// Response headers a browser script may read.
    pub expose_headers: Vec<String>,
    /// Allow credentials (cookies, `Authorization`); needs explicit origins.
    pub credentials: bool,
    /// How long a browser may cache a preflight answer, in seconds.
    pub max_age_s: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            enabled: false,
            origins: vec!["*".into()],
            methods: ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
                .map(String::from)
                .to_vec(),
            headers: [
                "authorization",
                "content-type",
                "x-api-key",
                "x-worker-token",
                "x-request-id",
                "traceparent",
            ]
            .map(String::from)
            .to_vec(),
            expose_headers: [
                "x-request-id",
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "retry-after",
                "x-gateway-cache",
            ]
            .map(String::from)
            .to_vec(),
            credentials: false,
            max_age_s: 600,
        }
    }
}

/// `[security_headers]`: the headers helmet sets by default, added to responses that do not
/// carry them already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    /// Add them (`SECURITY_HEADERS_ENABLED`; on by default in ACIP mode, as helmet was).
    pub enabled: bool,
    /// Overrides: header name → value; an empty value removes a default.
    pub headers: BTreeMap<String, String>,
    /// `Strict-Transport-Security` when the gateway listens with TLS (empty = none).
    pub hsts: String,
}

impl Default for SecurityHeadersConfig {
    fn default() -> Self {
        SecurityHeadersConfig {
            enabled: false,
            headers: BTreeMap::new(),
            hsts: "max-age=31536000; includeSubDomains".into(),
        }
    }
}

/// `[request_signing]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestSigningConfig {
    /// HMAC secret (`REQUEST_SIGNING_SECRET`); unset = no signing.
    pub secret: Option<Secret>,
}
