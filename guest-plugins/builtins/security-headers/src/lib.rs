//! The `security-headers` built-in (docs/plugins/security-headers.md): the headers helmet sets
//! by default, on every response that does not already carry them. Config: `{"headers":
//! {"name": "value", ...}}` (the host fills in the defaults and the operator's overrides;
//! `Strict-Transport-Security` only when the gateway listens with TLS).
use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecurityHeaders {
    headers: Vec<(String, String)>,
}

impl Plugin for SecurityHeaders {
    fn new(config: Config) -> Result<Self, String> {
        config.parse()
    }

    fn info(&self) -> Info {
        Info::new("security-headers", env!("CARGO_PKG_VERSION")).phase(Phase::ResponseHeaders)
    }

    fn on_response_headers(&mut self) -> Action {
        for (name, value) in &self.headers {
            if request::get_response_header(name).is_none() {
                request::set_response_header(name, value);
            }
        }
        Action::Continue
    }
}

export_plugin!(SecurityHeaders);
