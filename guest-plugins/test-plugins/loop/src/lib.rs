//! Test plugin: spins forever when the request has `x-trigger` (the CPU budget must stop it).
use wasmgate_plugin_sdk::prelude::*;

struct Spin;

impl Plugin for Spin {
    fn new(_: Config) -> Result<Self, String> {
        Ok(Spin)
    }
    fn info(&self) -> Info {
        Info::new("tp-loop", "0.1.0").phase(Phase::RequestHeaders)
    }
    fn on_request_headers(&mut self) -> Action {
        if request::get_header("x-trigger").is_some() {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Action::Continue
    }
}

export_plugin!(Spin);
