//! Test plugin: panics when the request has `x-trigger`.
use wasmgate_plugin_sdk::prelude::*;

struct Panicky;

impl Plugin for Panicky {
    fn new(_: Config) -> Result<Self, String> {
        Ok(Panicky)
    }
    fn info(&self) -> Info {
        Info::new("tp-panic", "0.1.0").phase(Phase::RequestHeaders)
    }
    fn on_request_headers(&mut self) -> Action {
        if request::get_header("x-trigger").is_some() {
            panic!("tp-panic was told to panic");
        }
        request::set_header("x-passed-tp-panic", "1");
        Action::Continue
    }
}

export_plugin!(Panicky);
