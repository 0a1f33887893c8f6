//! The built-in plugins through the real gateway (docs/plugins/), one module per plugin: one
//! test binary.
#[path = "../common/mod.rs"]
mod common;

mod auth;
mod headers;
mod jwt;
mod rate_limit;

use common::{client, expect_error, json, tempdir, GatewayProcess};
use wasmgate_config::{Config, LimitOverride, RateLimitAlgorithm};
use wasmgate_testkit::{gateway, upstream, RedisServer};

/// A rate limit of `max` requests a minute.
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
