//! The `rate-limit` built-in (docs/plugins/rate-limit.md).
//!
//! One window hit per request in the state store (atomic there: replicas sharing Redis enforce
//! one exact limit), keyed by the caller's identity when an earlier plugin (auth) set one, else
//! by the client address (`X-Forwarded-For` only from trusted proxies, as the host reports it).
//! Keys live in the `ratelimit` namespace: `gateway:ratelimit:{client}` for the default limit,
//! `gateway:ratelimit:route:{route}:{client}` and `gateway:ratelimit:tenant:{tenant}:{client}`
//! for per-route and per-tenant limits.
//!
//! Every response gets `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//! (seconds until a slot frees); a refusal is `429 rate_limited` with `Retry-After`. When the
//! store is unavailable the request passes (`fail_open`, the default) or gets
//! `503 rate_limit_unavailable`.
use std::collections::BTreeMap;

use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Algorithm {
    Sliding,
    Fixed,
}

#[derive(serde::Deserialize, Clone, Copy)]
struct Override {
    max_requests: Option<u64>,
    window_ms: Option<u64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    max_requests: u64,
    window_ms: u64,
    #[serde(default = "sliding")]
    algorithm: Algorithm,
    #[serde(default = "yes")]
    fail_open: bool,
    #[serde(default)]
    routes: BTreeMap<String, Override>,
    #[serde(default)]
    tenants: BTreeMap<String, Override>,
}

fn sliding() -> Algorithm {
    Algorithm::Sliding
}
fn yes() -> bool {
    true
}

/// The plugin (a member of the built-in bundle, `guest-plugins/builtins/bundle`).
pub struct RateLimit {
    s: Settings,
    /// The window key being built, its buffer reused from request to request.
    key: String,
}

impl Settings {
    /// The limit, window and key scope (appended to `key`) for this request: a tenant's
    /// override wins over a route's, which wins over the default.
    fn applicable(&self, key: &mut String) -> (u64, u64) {
        let pick = |o: &Override| {
            (
                o.max_requests.unwrap_or(self.max_requests),
                o.window_ms.unwrap_or(self.window_ms),
            )
        };
        // Each lookup is a host call: skipped when nothing is configured per tenant or route.
        if !self.tenants.is_empty() {
            if let Some(t) = request::tenant() {
                if let Some(o) = self.tenants.get(&t) {
                    key.push_str("tenant:");
                    key.push_str(&t);
                    key.push(':');
                    return pick(o);
                }
            }
        }
        if !self.routes.is_empty() {
            let route = request::route();
            if let Some(o) = self.routes.get(&route) {
                key.push_str("route:");
                key.push_str(&route);
                key.push(':');
                return pick(o);
            }
        }
        (self.max_requests, self.window_ms)
    }
}

/// Appends the caller to `key`: its identity when authenticated, else its address.
fn push_client(key: &mut String) {
    request::with_property("identity", |id| match id {
        Some(id) if !id.is_empty() => {
            key.push_str("id:");
            key.push_str(id);
        }
        _ => key.push_str(&request::client_addr()),
    })
}

/// `n` in decimal, written into `buf` (no allocation, no UTF-8 check: this runs three times on
/// every request).
#[allow(unsafe_code)]
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // SAFETY: `buf[at..]` holds only the ASCII digits written above.
    unsafe { std::str::from_utf8_unchecked(&buf[at..]) }
}

fn secs_ceil(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl Plugin for RateLimit {
    fn new(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.window_ms == 0 {
            return Err("window_ms must be greater than 0".into());
        }
        Ok(RateLimit {
            s,
            key: String::new(),
        })
    }

    fn info(&self) -> Info {
        Info::new("rate-limit", env!("CARGO_PKG_VERSION"))
            .phase(Phase::RequestHeaders)
            .capability("kv")
            .capability("metrics")
    }

    fn on_request_headers(&mut self) -> Action {
        let key = &mut self.key;
        key.clear();
        let (limit, window_ms) = self.s.applicable(key);
        push_client(key);
        let hit = match self.s.algorithm {
            Algorithm::Sliding => kv::window_hit(key, limit, window_ms),
            Algorithm::Fixed => kv::fixed_window_hit(key, limit, window_ms),
        };
        match hit {
            Ok(w) => {
                // Queued now, set on the response (upstream's or the 429): no response phase.
                let mut buf = [0u8; 20];
                request::add_response_header("x-ratelimit-limit", decimal(limit, &mut buf));
                request::add_response_header(
                    "x-ratelimit-remaining",
                    decimal(w.remaining, &mut buf),
                );
                request::add_response_header(
                    "x-ratelimit-reset",
                    decimal(secs_ceil(w.reset_after_ms), &mut buf),
                );
                if w.allowed {
                    metrics::counter_add("allowed", 1);
                    Action::Continue
                } else {
                    metrics::counter_add("limited", 1);
                    let retry = secs_ceil(w.reset_after_ms).max(1);
                    let body = serde_json::json!({
                        "error": "rate_limited",
                        "message": format!("rate limit of {limit} requests per {window_ms} ms exceeded; retry in {retry} s"),
                        "request_id": request::request_id(),
                    });
                    Action::Respond(LocalResponse {
                        status: 429,
                        headers: vec![
                            Header {
                                name: "content-type".into(),
                                value: "application/json".into(),
                            },
                            Header {
                                name: "retry-after".into(),
                                value: retry.to_string(),
                            },
                        ],
                        body: body.to_string().into_bytes(),
                    })
                }
            }
            Err(e) => {
                metrics::counter_add("store_errors", 1);
                log::log(log::Level::Warn, &format!("rate limit not applied: {e:?}"));
                if self.s.fail_open {
                    Action::Continue
                } else {
                    Action::error(
                        503,
                        "rate_limit_unavailable",
                        "the rate limit cannot be checked right now",
                    )
                }
            }
        }
    }
}
