//! Test plugin: tries to write and read outside its key-value namespace (every write function,
//! with keys that look absolute or climb out, and the read-only `shared-*` functions on keys
//! granted and not), and reports what the host let it do as a JSON answer.
use wasmgate_plugin_sdk::prelude::*;

struct Escape;

fn outcome<T: std::fmt::Debug>(r: Result<T, kv::KvError>) -> String {
    match r {
        Ok(v) => format!("ok:{v:?}"),
        Err(kv::KvError::Denied(m)) => format!("denied:{m}"),
        Err(kv::KvError::Unavailable(m)) => format!("unavailable:{m}"),
        Err(kv::KvError::Refused(m)) => format!("refused:{m}"),
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
            "window": outcome(kv::window_hit("queue:stats", 5, 60_000).map(|w| w.allowed)),
            "fixed": outcome(kv::fixed_window_hit("../worker:1:gpu", 5, 60_000).map(|w| w.allowed)),
            "set_add": outcome(kv::set_add("queue:job:1", "x")),
            "put_indexed": outcome(kv::put_indexed("worker:keys", "../../worker:1:heartbeat", b"pwned", 60_000, 10)),
            "delete": outcome(kv::delete("worker:1:status")),
            "shared_worker": outcome(kv::shared_get("worker:1:status").map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))),
            "shared_queue": outcome(kv::shared_get("queue:stats").map(|v| v.is_some())),
            "shared_gateway": outcome(kv::shared_get("gateway:auth:keys").map(|v| v.is_some())),
            "shared_set": outcome(kv::shared_set_contains("worker:tokens", "t")),
        });
        Action::json(200, &report)
    }
}

export_plugin!(Escape);
