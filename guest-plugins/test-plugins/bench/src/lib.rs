//! Benchmark plugin: a request phase that reads one header (`{"read": "one"}`), copies all
//! headers (`{"read": "all"}`) or reads nothing (`{"read": "none"}`), and continues. `name`
//! (default `tp-bench`) lets one chain load it several times.
use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct Bench {
    read: String,
    #[serde(default = "default_name")]
    name: String,
}

fn default_name() -> String {
    "tp-bench".into()
}

impl Plugin for Bench {
    fn new(config: Config) -> Result<Self, String> {
        config.parse()
    }
    fn info(&self) -> Info {
        Info::new(&self.name, "0.1.0").phase(Phase::RequestHeaders)
    }
    fn on_request_headers(&mut self) -> Action {
        match self.read.as_str() {
            "one" => {
                std::hint::black_box(request::get_header("x-one"));
            }
            "all" => {
                std::hint::black_box(request::get_headers());
            }
            _ => {}
        }
        Action::Continue
    }
}

export_plugin!(Bench);
