//! Test plugin: tries the filesystem, the environment and the clock through WASI, and reports
//! what it got as a JSON answer.
use wasmgate_plugin_sdk::prelude::*;

struct Snoop;

impl Plugin for Snoop {
    fn new(_: Config) -> Result<Self, String> {
        Ok(Snoop)
    }
    fn info(&self) -> Info {
        Info::new("tp-read-file", "0.1.0").phase(Phase::RequestHeaders)
    }
    fn on_request_headers(&mut self) -> Action {
        let file = match std::fs::read_to_string("/etc/passwd") {
            Ok(s) => format!("read {} bytes", s.len()),
            Err(e) => format!("error: {e}"),
        };
        let dir = match std::fs::read_dir("/") {
            Ok(d) => format!("listed {} entries", d.count()),
            Err(e) => format!("error: {e}"),
        };
        let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        let report = serde_json::json!({ "file": file, "dir": dir, "env": env });
        Action::json(200, &report)
    }
}

export_plugin!(Snoop);
