//! The `security-headers` built-in (docs/plugins/security-headers.md): the headers helmet sets
//! by default, on every response that does not already carry them. Config: `{"headers":
//! {"name": "value", ...}}` (the host fills in the defaults and the operator's overrides;
//! `Strict-Transport-Security` only when the gateway listens with TLS).
//!
//! The headers are queued in the request phase with `keep-existing` (one host call): the host
//! sets each one the response — the upstream's or a local answer — does not carry. No response
//! phase, so the instance is free again as soon as the request phase ends.
use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    headers: Vec<(String, String)>,
}

/// The plugin (a member of the built-in bundle, `guest-plugins/builtins/bundle`).
pub struct SecurityHeaders {
    headers: Vec<Header>,
}

impl Plugin for SecurityHeaders {
    fn new(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let headers = s
            .headers
            .into_iter()
            .map(|(name, value)| Header { name, value })
            .collect();
        Ok(SecurityHeaders { headers })
    }

    fn info(&self) -> Info {
        Info::new("security-headers", env!("CARGO_PKG_VERSION")).phase(Phase::RequestHeaders)
    }

    fn on_request_headers(&mut self) -> Action {
        request::add_response_headers(&self.headers, QueueMode::KeepExisting);
        Action::Continue
    }
}
