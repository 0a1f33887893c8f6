//! Test plugin: a per-client window counter over the `kv` import, the shape of a rate limiter.
//! Config: `{"limit": 5, "window_ms": 60000, "fixed": false, "workers": false}`.
//! - request: one window hit keyed by the client address; over the limit answers `429`; when
//!   the store is unavailable it lets the request through (fail-open) and says so;
//! - response: `x-window` = `allowed`, `unavailable` or `error`, `x-window-remaining`, and, with
//!   `workers`, `x-workers` = the number of active workers the `workers` import reports.
use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct Window {
    limit: u64,
    window_ms: u64,
    #[serde(default)]
    fixed: bool,
    #[serde(default)]
    workers: bool,
    #[serde(skip)]
    outcome: String,
    #[serde(skip)]
    remaining: Option<u64>,
}

impl Plugin for Window {
    fn new(config: Config) -> Result<Self, String> {
        config.parse()
    }
    fn info(&self) -> Info {
        Info::new("tp-window", "0.1.0")
            .phase(Phase::RequestHeaders)
            .phase(Phase::ResponseHeaders)
            .capability("kv")
            .capability("workers")
    }
    fn on_request_headers(&mut self) -> Action {
        self.remaining = None;
        let key = format!("client:{}", request::client_addr());
        let hit = if self.fixed {
            kv::fixed_window_hit(&key, self.limit, self.window_ms)
        } else {
            kv::window_hit(&key, self.limit, self.window_ms)
        };
        match hit {
            Ok(w) if w.allowed => {
                self.outcome = "allowed".into();
                self.remaining = Some(w.remaining);
                Action::Continue
            }
            Ok(w) => Action::error(
                429,
                "rate_limited",
                &format!("retry in {} ms", w.reset_after_ms),
            ),
            Err(kv::KvError::Unavailable(_)) => {
                self.outcome = "unavailable".into();
                Action::Continue
            }
            Err(e) => {
                self.outcome = format!("error: {e:?}");
                Action::Continue
            }
        }
    }
    fn on_response_headers(&mut self) -> Action {
        request::set_response_header("x-window", &self.outcome);
        if let Some(r) = self.remaining {
            request::set_response_header("x-window-remaining", &r.to_string());
        }
        if self.workers {
            request::set_response_header("x-workers", &workers::active().len().to_string());
        }
        Action::Continue
    }
}

export_plugin!(Window);
