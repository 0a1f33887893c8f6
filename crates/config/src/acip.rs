//! Configuration from the ACIP GPU gateway's `.env` names, for users who switch by pointing
//! the same environment at `wasmgate`. docs/configuration.md has the full mapping.
use std::str::FromStr;

use crate::{
    validate, Config, ConfigError, ConfigSource, Env, LogFormat, RateLimitAlgorithm, Result,
    RouteConfig, RouterStrategy, Secret, TlsConfig, UpstreamConfig,
};

/// Every environment variable read in ACIP mode, with the config key it sets.
pub const ACIP_ENV_NAMES: &[(&str, &str)] = &[
    ("GATEWAY_HOST", "server.host"),
    ("GATEWAY_PORT", "server.port"),
    ("GATEWAY_WORKERS", "server.workers"),
    ("GATEWAY_TLS_CERT", "server.tls.cert"),
    ("GATEWAY_TLS_KEY", "server.tls.key"),
    ("FASTAPI_URL", "upstreams.fastapi.targets"),
    ("FASTAPI_TIMEOUT", "upstreams.fastapi.request_timeout_ms"),
    ("REDIS_URL", "redis.url"),
    ("REDIS_PASSWORD", "redis.password"),
    ("REDIS_DB", "redis.db"),
    ("REDIS_KEY_PREFIX", "redis.key_prefix"),
    ("AUTH_ENABLED", "auth.enabled"),
    ("AUTH_API_KEYS", "auth.api_keys"),
    ("AUTH_TOKEN_SALT", "auth.token_salt"),
    ("AUTH_TOKEN_HASHES", "auth.token_hashes"),
    ("AUTH_TOKEN_HASH_FORMAT", "auth.token_hash_format"),
    ("JWT_SECRET", "auth.jwt_secret"),
    ("JWT_JWKS_FILE", "auth.jwt_jwks_file"),
    ("JWT_JWKS_URL", "auth.jwt_jwks_url"),
    ("JWT_JWKS_REFRESH_S", "auth.jwt_jwks_refresh_s"),
    ("RATE_LIMIT_ENABLED", "rate_limit.enabled"),
    ("RATE_LIMIT_WINDOW_MS", "rate_limit.window_ms"),
    ("RATE_LIMIT_MAX_REQUESTS", "rate_limit.max_requests"),
    ("RATE_LIMIT_ALGORITHM", "rate_limit.algorithm"),
    ("CACHE_ENABLED", "cache.enabled"),
    ("CACHE_TTL_SECONDS", "cache.ttl_seconds"),
    ("CACHE_MAX_SIZE", "cache.max_size"),
    ("ROUTER_STRATEGY", "router.strategy"),
    ("ROUTER_REGION_HEADER", "router.region_header"),
    (
        "ROUTER_HEALTH_CHECK_INTERVAL",
        "router.health_check_interval_ms",
    ),
    ("METRICS_ENABLED", "metrics.enabled"),
    ("METRICS_PATH", "metrics.path"),
    ("METRICS_TOKEN", "metrics.token"),
    ("OTEL_ENABLED", "otel.enabled"),
    ("OTEL_SERVICE_NAME", "otel.service_name"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel.otlp_endpoint"),
    ("OTEL_ZIPKIN_ENDPOINT", "otel.zipkin_endpoint"),
    ("OTEL_SAMPLING_RATIO", "otel.sampling_ratio"),
    ("LOG_LEVEL", "log.level"),
    ("LOG_FORMAT", "log.format"),
    ("CORS_ENABLED", "cors.enabled"),
    ("SECURITY_HEADERS_ENABLED", "security_headers.enabled"),
    ("CORS_ORIGIN", "cors.origins"),
    ("CORS_METHODS", "cors.methods"),
    ("PLUGINS_DIR", "plugins.dir"),
    ("PLUGINS_ENABLED", "plugins.enabled"),
    ("PLUGINS_CACHE_DIR", "plugins.cache_dir"),
    ("PLUGINS_FUSE_BUILTINS", "plugins.fuse_builtins"),
    ("GATEWAY_ADMIN_TOKEN", "admin.token"),
    ("REQUEST_SIGNING_SECRET", "request_signing.secret"),
];

/// Prefixes of the ACIP families: a set variable with one of these prefixes that is not in
/// [`ACIP_ENV_NAMES`] is probably misspelt, and [`unknown_acip_names`] reports it.
const FAMILIES: &[&str] = &[
    "GATEWAY_",
    "FASTAPI_",
    "AUTH_",
    "RATE_LIMIT_",
    "CACHE_",
    "ROUTER_",
    "METRICS_",
    "CORS_",
];

/// The upstream name ACIP mode creates for `FASTAPI_URL`.
pub const ACIP_UPSTREAM: &str = "fastapi";

/// Set variables that look like ACIP names but are not read (likely typos), for a warning.
pub fn unknown_acip_names(env: &dyn Env) -> Vec<String> {
    let mut out: Vec<String> = env
        .names()
        .into_iter()
        .filter(|n| FAMILIES.iter().any(|f| n.starts_with(f)))
        .filter(|n| !ACIP_ENV_NAMES.iter().any(|(k, _)| k == n))
        .collect();
    out.sort();
    out
}

struct Reader<'a> {
    env: &'a dyn Env,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        self.env
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn bad(&self, name: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError::invalid(
            &ConfigSource::Environment,
            format!("{name} (from {})", self.env.origin(name)),
            format!("invalid value {value:?}: expected {expected}"),
        )
    }

    fn parse<T: FromStr>(&self, name: &str, expected: &str, slot: &mut T) -> Result<()> {
        if let Some(v) = self.raw(name) {
            *slot = v.parse().map_err(|_| self.bad(name, &v, expected))?;
        }
        Ok(())
    }

    fn bool(&self, name: &str, slot: &mut bool) -> Result<()> {
        if let Some(v) = self.raw(name) {
            *slot = match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(self.bad(name, &v, "true or false")),
            };
        }
        Ok(())
    }

    fn string(&self, name: &str, slot: &mut String) {
        if let Some(v) = self.raw(name) {
            *slot = v;
        }
    }

    fn opt_string(&self, name: &str) -> Option<String> {
        self.raw(name)
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        self.raw(name).map(Secret::new)
    }

    fn list(&self, name: &str) -> Option<Vec<String>> {
        self.raw(name).map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
    }

    fn serde_enum<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        expected: &str,
        slot: &mut T,
    ) -> Result<()> {
        if let Some(v) = self.raw(name) {
            *slot = serde_json::from_value(serde_json::Value::String(v.to_ascii_lowercase()))
                .map_err(|_| self.bad(name, &v, expected))?;
        }
        Ok(())
    }
}

/// Builds the configuration from the ACIP `.env` names: one catch-all route `/` to
/// `FASTAPI_URL` (comma-separated = several targets), plugins on as in ACIP.
pub fn from_acip_env(env: &dyn Env) -> Result<Config> {
    let r = Reader { env };
    let mut c = Config::default();

    r.string("GATEWAY_HOST", &mut c.server.host);
    r.parse(
        "GATEWAY_PORT",
        "a port number (0-65535)",
        &mut c.server.port,
    )?;
    r.parse(
        "GATEWAY_WORKERS",
        "a number of threads (0 = cores)",
        &mut c.server.workers,
    )?;
    match (
        r.opt_string("GATEWAY_TLS_CERT"),
        r.opt_string("GATEWAY_TLS_KEY"),
    ) {
        (Some(cert), Some(key)) => c.server.tls = Some(TlsConfig { cert, key }),
        (None, None) => {}
        (Some(_), None) => {
            return Err(r.bad(
                "GATEWAY_TLS_KEY",
                "",
                "a key file (GATEWAY_TLS_CERT is set)",
            ))
        }
        (None, Some(_)) => {
            return Err(r.bad(
                "GATEWAY_TLS_CERT",
                "",
                "a certificate file (GATEWAY_TLS_KEY is set)",
            ))
        }
    }

    let mut upstream = UpstreamConfig {
        targets: r
            .list("FASTAPI_URL")
            .unwrap_or_else(|| vec!["http://localhost:8000".into()]),
        ..Default::default()
    };
    r.parse(
        "FASTAPI_TIMEOUT",
        "a timeout in milliseconds",
        &mut upstream.request_timeout_ms,
    )?;
    // The backend serves `GET /health`: check it, as the ACIP router's health checks did.
    upstream.health_check.path = Some("/health".into());
    c.upstreams.insert(ACIP_UPSTREAM.into(), upstream);
    c.routes.push(RouteConfig {
        name: Some("default".into()),
        prefix: "/".into(),
        upstream: ACIP_UPSTREAM.into(),
        strip_prefix: false,
    });

    c.redis.url = r.secret("REDIS_URL");
    c.redis.password = r.secret("REDIS_PASSWORD");
    r.parse("REDIS_DB", "a database number (0-255)", &mut c.redis.db)?;
    r.string("REDIS_KEY_PREFIX", &mut c.redis.key_prefix);

    c.auth.enabled = true;
    r.bool("AUTH_ENABLED", &mut c.auth.enabled)?;
    if let Some(keys) = r.list("AUTH_API_KEYS") {
        c.auth.api_keys = keys.into_iter().map(Secret::new).collect();
    }
    c.auth.token_salt = r.secret("AUTH_TOKEN_SALT");
    if let Some(hashes) = r.list("AUTH_TOKEN_HASHES") {
        c.auth.token_hashes = hashes.into_iter().map(Secret::new).collect();
    }
    r.string("AUTH_TOKEN_HASH_FORMAT", &mut c.auth.token_hash_format);
    c.auth.jwt_secret = r.secret("JWT_SECRET");
    c.auth.jwt_jwks_file = r.opt_string("JWT_JWKS_FILE");
    c.auth.jwt_jwks_url = r.opt_string("JWT_JWKS_URL");
    r.parse(
        "JWT_JWKS_REFRESH_S",
        "a number of seconds",
        &mut c.auth.jwt_jwks_refresh_s,
    )?;

    c.rate_limit.enabled = true;
    r.bool("RATE_LIMIT_ENABLED", &mut c.rate_limit.enabled)?;
    r.parse(
        "RATE_LIMIT_WINDOW_MS",
        "a window in milliseconds",
        &mut c.rate_limit.window_ms,
    )?;
    r.parse(
        "RATE_LIMIT_MAX_REQUESTS",
        "a number of requests",
        &mut c.rate_limit.max_requests,
    )?;
    r.serde_enum::<RateLimitAlgorithm>(
        "RATE_LIMIT_ALGORITHM",
        "sliding or fixed",
        &mut c.rate_limit.algorithm,
    )?;

    c.cache.enabled = true;
    // Job status and queue statistics change from one poll to the next: never cached.
    c.cache.exclude_paths = vec!["/api/v1/jobs".into(), "/api/v1/queue".into()];
    r.bool("CACHE_ENABLED", &mut c.cache.enabled)?;
    r.parse(
        "CACHE_TTL_SECONDS",
        "a number of seconds",
        &mut c.cache.ttl_seconds,
    )?;
    r.parse(
        "CACHE_MAX_SIZE",
        "a number of entries",
        &mut c.cache.max_size,
    )?;

    r.serde_enum::<RouterStrategy>(
        "ROUTER_STRATEGY",
        "round-robin, least-connections, region-affinity or least-loaded",
        &mut c.router.strategy,
    )?;
    r.string("ROUTER_REGION_HEADER", &mut c.router.region_header);
    r.parse(
        "ROUTER_HEALTH_CHECK_INTERVAL",
        "an interval in milliseconds",
        &mut c.router.health_check_interval_ms,
    )?;

    r.bool("METRICS_ENABLED", &mut c.metrics.enabled)?;
    r.string("METRICS_PATH", &mut c.metrics.path);
    c.metrics.token = r.secret("METRICS_TOKEN");

    r.bool("OTEL_ENABLED", &mut c.otel.enabled)?;
    r.string("OTEL_SERVICE_NAME", &mut c.otel.service_name);
    c.otel.otlp_endpoint = r.opt_string("OTEL_EXPORTER_OTLP_ENDPOINT");
    c.otel.zipkin_endpoint = r.opt_string("OTEL_ZIPKIN_ENDPOINT");
    r.parse(
        "OTEL_SAMPLING_RATIO",
        "a ratio between 0.0 and 1.0",
        &mut c.otel.sampling_ratio,
    )?;

    r.string("LOG_LEVEL", &mut c.log.level);
    r.serde_enum::<LogFormat>("LOG_FORMAT", "text or json", &mut c.log.format)?;

    c.cors.enabled = true;
    r.bool("CORS_ENABLED", &mut c.cors.enabled)?;
    c.security_headers.enabled = true;
    r.bool("SECURITY_HEADERS_ENABLED", &mut c.security_headers.enabled)?;
    if let Some(o) = r.list("CORS_ORIGIN") {
        c.cors.origins = o;
    }
    if let Some(m) = r.list("CORS_METHODS") {
        c.cors.methods = m.into_iter().map(|m| m.to_ascii_uppercase()).collect();
    }

    r.string("PLUGINS_DIR", &mut c.plugins.dir);
    r.bool("PLUGINS_ENABLED", &mut c.plugins.enabled)?;
    if let Some(dir) = r.opt_string("PLUGINS_CACHE_DIR") {
        c.plugins.cache_dir = Some(dir);
    }
    r.bool("PLUGINS_FUSE_BUILTINS", &mut c.plugins.fuse_builtins)?;
    c.admin.token = r.secret("GATEWAY_ADMIN_TOKEN");
    c.request_signing.secret = r.secret("REQUEST_SIGNING_SECRET");

    validate(&c, &ConfigSource::Environment).map_err(|e| match e {
        ConfigError::Invalid { key, message, .. } => {
            let env_name = env_name_for_key(&key);
            ConfigError::invalid(&ConfigSource::Environment, env_name, message)
        }
        other => other,
    })?;
    Ok(c)
}

/// Maps a config key from a validation error back to the variable that set it.
fn env_name_for_key(key: &str) -> String {
    let base = key.split('[').next().unwrap_or(key);
    ACIP_ENV_NAMES
        .iter()
        .find(|(_, k)| *k == base)
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MapEnv;

    #[test]
    fn defaults_match_acip() {
        let c = from_acip_env(&MapEnv::default()).unwrap();
        assert_eq!(c.server.port, 3000);
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].prefix, "/");
        assert_eq!(
            c.upstreams[ACIP_UPSTREAM].targets,
            vec!["http://localhost:8000"]
        );
        assert!(c.redis.url.is_none(), "no REDIS_URL means in-memory state");
        assert!(c.auth.enabled);
        assert_eq!(c.auth.token_hash_format, "{salt}:{token}");
        assert_eq!(c.plugins.dir, "./plugins");
        assert!(c.plugins.fuse_builtins);
    }

    #[test]
    fn reads_every_family() {
        let env = MapEnv::from_pairs([
            ("GATEWAY_PORT", "4000"),
            ("GATEWAY_WORKERS", "3"),
            ("FASTAPI_URL", "http://a:8000, http://b:8000"),
            ("FASTAPI_TIMEOUT", "1500"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDIS_DB", "2"),
            ("AUTH_ENABLED", "false"),
            ("AUTH_API_KEYS", "k1,k2"),
            ("AUTH_TOKEN_SALT", "distributed-gpu-inference-v1"),
            ("AUTH_TOKEN_HASH_FORMAT", "{token}{salt}"),
            ("RATE_LIMIT_WINDOW_MS", "1000"),
            ("RATE_LIMIT_MAX_REQUESTS", "20"),
            ("CACHE_TTL_SECONDS", "10"),
            ("ROUTER_STRATEGY", "least-loaded"),
            ("ROUTER_HEALTH_CHECK_INTERVAL", "500"),
            ("METRICS_PATH", "/m"),
            ("LOG_FORMAT", "JSON"),
            ("CORS_ORIGIN", "https://a.example,https://b.example"),
            ("PLUGINS_DIR", "/srv/plugins"),
            ("PLUGINS_CACHE_DIR", "/var/cache/wasmgate"),
            ("PLUGINS_FUSE_BUILTINS", "false"),
            ("GATEWAY_ADMIN_TOKEN", "adm"),
            ("REQUEST_SIGNING_SECRET", "sig"),
        ]);
        let c = from_acip_env(&env).unwrap();
        assert_eq!(c.server.port, 4000);
        assert_eq!(c.server.workers, 3);
        let up = &c.upstreams[ACIP_UPSTREAM];
        assert_eq!(up.targets, vec!["http://a:8000", "http://b:8000"]);
        assert_eq!(up.request_timeout_ms, 1500);
        assert_eq!(c.redis.db, 2);
        assert!(!c.auth.enabled);
        assert_eq!(c.auth.api_keys.len(), 2);
        assert_eq!(c.auth.token_hash_format, "{token}{salt}");
        assert_eq!(c.rate_limit.max_requests, 20);
        assert_eq!(c.cache.ttl_seconds, 10);
        assert_eq!(c.router.strategy, RouterStrategy::LeastLoaded);
        assert_eq!(c.router.health_check_interval_ms, 500);
        assert_eq!(c.metrics.path, "/m");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.cors.origins.len(), 2);
        assert_eq!(c.plugins.dir, "/srv/plugins");
        assert_eq!(c.plugins.cache_dir.as_deref(), Some("/var/cache/wasmgate"));
        assert!(!c.plugins.fuse_builtins);
        assert_eq!(c.admin.token.as_ref().unwrap().expose(), "adm");
        assert_eq!(c.request_signing.secret.as_ref().unwrap().expose(), "sig");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = from_acip_env(&MapEnv::from_pairs([("GATEWAY_PORT", "abc")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("GATEWAY_PORT"), "{err}");
        let err = from_acip_env(&MapEnv::from_pairs([("FASTAPI_URL", "ftp://x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FASTAPI_URL"), "{err}");
        let err = from_acip_env(&MapEnv::from_pairs([("ROUTER_STRATEGY", "random")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ROUTER_STRATEGY"), "{err}");
        let err = from_acip_env(&MapEnv::from_pairs([("AUTH_ENABLED", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("AUTH_ENABLED"), "{err}");
    }

    #[test]
    fn reports_misspelt_names() {
        let env = MapEnv::from_pairs([
            ("RATE_LIMIT_MAX_REQUEST", "5"),
            ("GATEWAY_PORT", "1"),
            ("HOME", "/"),
        ]);
        assert_eq!(unknown_acip_names(&env), vec!["RATE_LIMIT_MAX_REQUEST"]);
    }
}
