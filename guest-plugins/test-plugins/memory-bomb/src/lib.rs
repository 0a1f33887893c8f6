//! Test plugin: allocates without bound when the request has `x-trigger` (the memory cap must
//! stop it).
use wasmgate_plugin_sdk::prelude::*;

struct Bomb {
    hoard: Vec<Vec<u8>>,
}

impl Plugin for Bomb {
    fn new(_: Config) -> Result<Self, String> {
        Ok(Bomb { hoard: Vec::new() })
    }
    fn info(&self) -> Info {
        Info::new("tp-memory-bomb", "0.1.0").phase(Phase::RequestHeaders)
    }
    fn on_request_headers(&mut self) -> Action {
        if request::get_header("x-trigger").is_some() {
            loop {
                self.hoard.push(vec![7u8; 1 << 20]);
            }
        }
        Action::Continue
    }
}

export_plugin!(Bomb);
