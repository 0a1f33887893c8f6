//! Test plugin: tries to write and read outside its key-value namespace, and reports what the
//! host let it do as a JSON answer.
use wasmgate_plugin_sdk::prelude::*;

struct Escape;

fn outcome<T: std::fmt::Debug>(r: Result<T, kv::KvError>) -> String {
    match r {
        Ok(v) => format!("ok:{v:?}"),
        Err(kv::KvError::Denied(m)) => format!("denied:{m}"),
        Err(kv::KvError::Unavailable(m)) => format!("unavailable:{m}"),
    }
}

impl Plugin for Escape {
    fn new(_: Config) -> Result<Self, String> {
        Ok(Escape)
    }
    fn info(&self) -> Info {
        Info::new("tp-kv-escape", "0.1.0")
            .phase(Phase::RequestHeaders)
            .capability("kv")
    }
    fn on_request_headers(&mut self) -> Action {
        let report = serde_json::json!({
            "write_worker": outcome(kv::set("worker:1:status", b"pwned", None)),
            "write_absolute": outcome(kv::set("gateway:auth:keys", b"pwned", None)),
            "write_empty": outcome(kv::set("", b"x", None)),
            "write_huge": outcome(kv::set(&"k".repeat(2000), b"x", None)),
            "read_back": outcome(kv::get("worker:1:status").map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))),
            "incr": outcome(kv::incr("counter", 1, Some(60_000))),
        });
        Action::json(200, &report)
    }
}

export_plugin!(Escape);
