//! Example plugin: sets a header on every upstream request, and optionally on the response.
//! Config (JSON, or the manifest's `[config]`): `{"name": "x-added", "value": "yes",
//! "response_name": "x-seen-by"}`.
use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct AddHeader {
    #[serde(default = "default_name")]
    name: String,
    #[serde(default = "default_value")]
    value: String,
    response_name: Option<String>,
}

fn default_name() -> String {
    "x-added-by".into()
}

fn default_value() -> String {
    "wasmgate-add-header".into()
}

impl Plugin for AddHeader {
    fn new(config: Config) -> Result<Self, String> {
        config.parse()
    }

    fn info(&self) -> Info {
        let info = Info::new("add-header", "0.1.0").phase(Phase::RequestHeaders);
        if self.response_name.is_some() {
            info.phase(Phase::ResponseHeaders)
        } else {
            info
        }
    }

    fn on_request_headers(&mut self) -> Action {
        request::set_header(&self.name, &self.value);
        Action::Continue
    }

    fn on_response_headers(&mut self) -> Action {
        if let Some(name) = &self.response_name {
            request::set_response_header(name, &self.value);
        }
        Action::Continue
    }
}

export_plugin!(AddHeader);
