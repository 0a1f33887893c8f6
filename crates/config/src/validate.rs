use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{Config, ConfigError, ConfigSource, Result};

/// Parses a trusted-proxy entry: an IP address or a CIDR block.
pub fn parse_trusted_proxy(s: &str) -> std::result::Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))
}

/// Checks what serde cannot: references between sections, URLs, ranges, header names.
pub fn validate(c: &Config, source: &ConfigSource) -> Result<()> {
    let err = |key: String, msg: String| Err(ConfigError::invalid(source, key, msg));

    if c.server.host.trim().is_empty() {
        return err("server.host".into(), "must not be empty".into());
    }
    if c.server.max_header_bytes < 1024 {
        return err(
            "server.max_header_bytes".into(),
            "must be at least 1024".into(),
        );
    }
    if c.server.max_body_bytes == 0 {
        return err(
            "server.max_body_bytes".into(),
            "must be greater than 0".into(),
        );
    }
    if c.server.header_read_timeout_ms == 0 {
        return err(
            "server.header_read_timeout_ms".into(),
            "must be greater than 0".into(),
        );
    }
    if let Some(tls) = &c.server.tls {
        for (key, path) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
            if let Err(e) = std::fs::metadata(path) {
                return err(key.into(), format!("cannot read `{path}`: {e}"));
            }
        }
    }
    for (i, p) in c.forwarded.trusted_proxies.iter().enumerate() {
        if let Err(m) = parse_trusted_proxy(p) {
            return err(format!("forwarded.trusted_proxies[{i}]"), m);
        }
    }

    let mut prefixes = HashSet::new();
    for (i, r) in c.routes.iter().enumerate() {
        let key = |f: &str| format!("routes[{i}].{f}");
        if !r.prefix.starts_with('/') {
            return err(key("prefix"), format!("`{}` must start with `/`", r.prefix));
        }
        if r.prefix.contains(['?', '#']) {
            return err(
                key("prefix"),
                "must be a path without query or fragment".into(),
            );
        }
        if !prefixes.insert(normalize_prefix(&r.prefix)) {
            return err(
                key("prefix"),
                format!("`{}` is used by another route", r.prefix),
            );
        }
        if !c.upstreams.contains_key(&r.upstream) {
            let known: Vec<_> = c.upstreams.keys().map(String::as_str).collect();
            return err(
                key("upstream"),
                format!("no upstream named `{}` (defined: {known:?})", r.upstream),
            );
        }
    }

    for (name, u) in &c.upstreams {
        let key = |f: &str| format!("upstreams.{name}.{f}");
        if u.targets.is_empty() {
            return err(key("targets"), "needs at least one target URL".into());
        }
        for (i, t) in u.targets.iter().enumerate() {
            if let Err(m) = check_target(t) {
                return err(format!("upstreams.{name}.targets[{i}]"), m);
            }
        }
        for t in u.target_tags.keys() {
            if !u.targets.contains(t) {
                return err(
                    format!("upstreams.{name}.target_tags"),
                    format!("`{t}` is not one of the targets (tags are keyed by the target URL as written in `targets`)"),
                );
            }
        }
        let hc = &u.health_check;
        if let Some(p) = &hc.path {
            if !p.starts_with('/') {
                return err(
                    key("health_check.path"),
                    format!("`{p}` must start with `/`"),
                );
            }
        }
        if hc.interval_ms == Some(0) || hc.timeout_ms == 0 {
            return err(
                key("health_check.interval_ms"),
                "interval and timeout must be greater than 0".into(),
            );
        }
        if hc.unhealthy_threshold == 0 || hc.healthy_threshold == 0 {
            return err(
                key("health_check.unhealthy_threshold"),
                "thresholds must be at least 1".into(),
            );
        }
        if u.retries > 10 {
            return err(key("retries"), "at most 10".into());
        }
        if u.connect_timeout_ms == 0 || u.request_timeout_ms == 0 {
            return err(
                key("request_timeout_ms"),
                "timeouts must be greater than 0".into(),
            );
        }
        for (h, v) in &u.inject_headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return err(
                    key("inject_headers"),
                    format!("`{h}` is not a valid header name"),
                );
            }
            if http::HeaderValue::from_str(v.expose()).is_err() {
                return err(
                    format!("upstreams.{name}.inject_headers.{h}"),
                    "value is not a valid header value (control characters?)".into(),
                );
            }
        }
        for h in &u.remove_headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return err(
                    key("remove_headers"),
                    format!("`{h}` is not a valid header name"),
                );
            }
        }
    }

    if let Some(url) = &c.redis.url {
        let url = url.expose();
        let ok = [
            "redis://",
            "rediss://",
            "redis-sentinel://",
            "redis-cluster://",
            "rediss-sentinel://",
            "rediss-cluster://",
        ]
        .iter()
        .any(|s| url.starts_with(s));
        if !ok {
            return err(
                "redis.url".into(),
                "must start with redis://, rediss://, redis-sentinel://, redis-cluster:// (or rediss-sentinel://, rediss-cluster:// for TLS)"
                    .into(),
            );
        }
    }
    if c.redis.command_timeout_ms == 0 {
        return err(
            "redis.command_timeout_ms".into(),
            "must be greater than 0".into(),
        );
    }
    if c.redis.pool_size == Some(0) {
        return err("redis.pool_size".into(), "must be at least 1".into());
    }
    if c.redis.memory_max_keys == 0 {
        return err("redis.memory_max_keys".into(), "must be at least 1".into());
    }
    if !c.workers.endpoint.is_empty() && !c.workers.endpoint.starts_with('/') {
        return err(
            "workers.endpoint".into(),
            "must start with `/` (or be empty to disable the endpoint)".into(),
        );
    }
    if c.workers.max_heartbeat_age_ms == 0 {
        return err(
            "workers.max_heartbeat_age_ms".into(),
            "must be greater than 0".into(),
        );
    }
    if c.router.health_check_interval_ms == 0 {
        return err(
            "router.health_check_interval_ms".into(),
            "must be greater than 0".into(),
        );
    }
    if http::HeaderName::from_bytes(c.router.region_header.as_bytes()).is_err() {
        return err(
            "router.region_header".into(),
            format!("`{}` is not a valid header name", c.router.region_header),
        );
    }
    for net in c.router.networks.keys() {
        if let Err(m) = parse_trusted_proxy(net) {
            return err(format!("router.networks.\"{net}\""), m);
        }
    }
    for m in &c.cache.methods {
        if http::Method::from_bytes(m.as_bytes()).is_err() || m.to_ascii_uppercase() != *m {
            return err(
                "cache.methods".into(),
                format!("`{m}` is not an upper-case HTTP method"),
            );
        }
    }
    if c.cache.enabled && c.cache.max_size == 0 {
        return err("cache.max_size".into(), "must be at least 1".into());
    }
    if !c.metrics.path.starts_with('/') {
        return err("metrics.path".into(), "must start with `/`".into());
    }
    if !(0.0..=1.0).contains(&c.otel.sampling_ratio) {
        return err(
            "otel.sampling_ratio".into(),
            "must be between 0.0 and 1.0".into(),
        );
    }
    for (key, ep) in [
        ("otel.otlp_endpoint", &c.otel.otlp_endpoint),
        ("otel.zipkin_endpoint", &c.otel.zipkin_endpoint),
    ] {
        if let Some(ep) = ep {
            if let Err(m) = check_target(ep) {
                return err(key.into(), m);
            }
        }
    }
    if c.otel.enabled && c.otel.otlp_endpoint.is_none() && c.otel.zipkin_endpoint.is_none() {
        return err(
            "otel.enabled".into(),
            "needs otel.otlp_endpoint (OTEL_EXPORTER_OTLP_ENDPOINT) or otel.zipkin_endpoint (OTEL_ZIPKIN_ENDPOINT)".into(),
        );
    }
    // The built-ins are wasm plugins: with the engine off they do not run. For the two whose
    // absence is silent and unsafe (requests pass unauthenticated, or unsigned to a backend
    // that then refuses them all), that is refused rather than served.
    if !c.plugins.enabled {
        let needs_engine = [
            (c.auth.enabled, "auth.enabled"),
            (c.request_signing.secret.is_some(), "request_signing.secret"),
        ];
        if let Some((_, key)) = needs_engine.iter().find(|(on, _)| *on) {
            return err(
                key.to_string(),
                "needs plugins.enabled = true (PLUGINS_ENABLED): the built-ins run as wasm plugins, and with the engine off every request would pass without them".into(),
            );
        }
    }
    if !c.auth.token_hash_format.contains("{token}") {
        return err(
            "auth.token_hash_format".into(),
            "must contain `{token}` (e.g. `{salt}:{token}`)".into(),
        );
    }
    if c.cors.enabled && c.cors.credentials && c.cors.origins.iter().any(|o| o == "*") {
        return err(
            "cors.credentials".into(),
            "cannot be true while cors.origins allows any origin (`*`): list the origins".into(),
        );
    }
    for name in c.security_headers.headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return err(
                format!("security_headers.headers.{name}"),
                "is not a valid header name".into(),
            );
        }
    }
    if let Some(url) = &c.auth.jwt_jwks_url {
        let parsed = url.parse::<http::Uri>().ok();
        let ok = parsed.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
        if !ok {
            return err(
                "auth.jwt_jwks_url".into(),
                format!("`{url}` is not an http:// or https:// URL"),
            );
        }
        // The URL is logged and shown by /gateway/config: no credentials in it (a JWKS is
        // public).
        if parsed
            .as_ref()
            .and_then(|u| u.authority())
            .is_some_and(|a| a.as_str().contains('@'))
        {
            return err(
                "auth.jwt_jwks_url".into(),
                "must not carry credentials (`user:password@`): a JWKS is public".into(),
            );
        }
        if c.auth.jwt_jwks_refresh_s == 0 {
            return err(
                "auth.jwt_jwks_refresh_s".into(),
                "must be at least 1 second".into(),
            );
        }
    }
    if let Some(set) = &c.auth.token_hash_set {
        if set.is_empty() || set.contains(['*', '?', '[', ']']) {
            return err(
                "auth.token_hash_set".into(),
                "must be the exact key of a Redis set (no glob characters)".into(),
            );
        }
    }
    if c.rate_limit.window_ms == 0 || c.rate_limit.max_requests == 0 {
        return err(
            "rate_limit.window_ms".into(),
            "window_ms and max_requests must be greater than 0".into(),
        );
    }
    for (kind, map) in [
        ("routes", &c.rate_limit.routes),
        ("tenants", &c.rate_limit.tenants),
    ] {
        for (name, o) in map {
            if o.window_ms == Some(0) || o.max_requests == Some(0) {
                return err(
                    format!("rate_limit.{kind}.{name}"),
                    "window_ms and max_requests must be greater than 0".into(),
                );
            }
        }
    }
    if c.log.level.trim().is_empty() {
        return err("log.level".into(), "must not be empty".into());
    }
    Ok(())
}

fn normalize_prefix(p: &str) -> &str {
    if p.len() > 1 {
        p.trim_end_matches('/')
    } else {
        p
    }
}

fn check_target(t: &str) -> std::result::Result<(), String> {
    let uri: http::Uri = t.parse().map_err(|e| format!("`{t}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{t}` must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{t}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{t}` must not have a query string"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MapEnv, RouteConfig, UpstreamConfig};

    fn base() -> Config {
        let mut c = Config::default();
        c.upstreams.insert(
            "b".into(),
            UpstreamConfig {
                targets: vec!["http://127.0.0.1:8000".into()],
                ..Default::default()
            },
        );
        c.routes.push(RouteConfig {
            name: None,
            prefix: "/api".into(),
            upstream: "b".into(),
            strip_prefix: false,
        });
        c
    }

    fn check(c: &Config) -> String {
        validate(c, &ConfigSource::File("f.toml".into()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn accepts_a_sane_config() {
        assert_eq!(check(&base()), "");
        let _ = MapEnv::default();
    }

    #[test]
    fn refuses_dangling_route_and_bad_targets() {
        let mut c = base();
        c.routes[0].upstream = "nope".into();
        assert!(check(&c).contains("routes[0].upstream"));
        let mut c = base();
        c.upstreams.get_mut("b").unwrap().targets = vec!["ftp://x".into()];
        assert!(check(&c).contains("upstreams.b.targets[0]"));
        let mut c = base();
        c.upstreams.get_mut("b").unwrap().targets.clear();
        assert!(check(&c).contains("upstreams.b.targets"));
        let mut c = base();
        c.routes[0].prefix = "api".into();
        assert!(check(&c).contains("routes[0].prefix"));
        let mut c = base();
        c.routes.push(c.routes[0].clone());
        c.routes[1].prefix = "/api/".into();
        assert!(check(&c).contains("used by another route"));
    }

    #[test]
    fn a_jwks_url_must_be_http_and_refreshed() {
        let mut c = base();
        for bad in [
            "idp.example/jwks",
            "file:///etc/jwks.json",
            "https://",
            "https://user:pw@idp.example/jwks",
        ] {
            c.auth.jwt_jwks_url = Some(bad.into());
            assert!(
                check(&c).contains("auth.jwt_jwks_url"),
                "{bad}: {}",
                check(&c)
            );
        }
        c.auth.jwt_jwks_url = Some("https://idp.example/.well-known/jwks.json".into());
        assert_eq!(check(&c), "");
        c.auth.jwt_jwks_refresh_s = 0;
        assert!(check(&c).contains("auth.jwt_jwks_refresh_s"));
    }

    #[test]
    fn refuses_auth_or_signing_with_the_plugin_engine_off() {
        let mut c = base();
        c.plugins.enabled = false;
        assert_eq!(check(&c), "", "no built-in needs it");
        c.auth.enabled = true;
        assert!(check(&c).contains("auth.enabled"), "{}", check(&c));
        c.auth.enabled = false;
        c.request_signing.secret = Some(crate::Secret::new("s"));
        assert!(check(&c).contains("request_signing.secret"));
        c.plugins.enabled = true;
        assert_eq!(check(&c), "");
    }

    #[test]
    fn refuses_bad_trusted_proxy_and_ratio() {
        let mut c = base();
        c.forwarded.trusted_proxies = vec!["10.0.0.0/8".into(), "nonsense".into()];
        assert!(check(&c).contains("forwarded.trusted_proxies[1]"));
        let mut c = base();
        c.otel.sampling_ratio = 1.5;
        assert!(check(&c).contains("otel.sampling_ratio"));
        let mut c = base();
        c.otel.enabled = true;
        assert!(
            check(&c).contains("otel.enabled"),
            "tracing on with nowhere to send"
        );
        c.otel.zipkin_endpoint = Some("http://zipkin:9411/api/v2/spans".into());
        assert_eq!(check(&c), "");
    }

    #[test]
    fn trusted_proxy_accepts_ips_and_cidrs() {
        assert!(parse_trusted_proxy("127.0.0.1")
            .unwrap()
            .contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
        assert!(parse_trusted_proxy("::1").is_ok());
        assert!(parse_trusted_proxy("10.0.0.0/8")
            .unwrap()
            .contains(&"10.1.2.3".parse::<IpAddr>().unwrap()));
    }
}
