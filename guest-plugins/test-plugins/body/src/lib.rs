//! Test plugin for the body phases:
//! - request body: counts bytes; a chunk containing `BLOCK` is answered with 403 `blocked`;
//! - response body: upper-cases every chunk, and at the end of the stream appends
//!   `|req=<request bytes>|chunks=<response chunks>`.
use wasmgate_plugin_sdk::prelude::*;

#[derive(Default)]
struct BodyProbe {
    request_bytes: usize,
    response_chunks: usize,
}

impl Plugin for BodyProbe {
    fn new(_: Config) -> Result<Self, String> {
        Ok(BodyProbe::default())
    }
    fn info(&self) -> Info {
        Info::new("tp-body", "0.1.0")
            .phase(Phase::RequestHeaders)
            .phase(Phase::RequestBody)
            .phase(Phase::ResponseBody)
    }
    fn on_request_headers(&mut self) -> Action {
        // Instances are reused: reset per-request state here.
        *self = BodyProbe::default();
        Action::Continue
    }
    fn on_request_body(&mut self, chunk: &[u8], _end_of_stream: bool) -> Action {
        self.request_bytes += chunk.len();
        if chunk.windows(5).any(|w| w == b"BLOCK") {
            return Action::error(403, "blocked", "the request body contains a blocked word");
        }
        Action::Continue
    }
    fn on_response_body(&mut self, chunk: Vec<u8>, end_of_stream: bool) -> Vec<u8> {
        if end_of_stream {
            return format!(
                "|req={}|chunks={}",
                self.request_bytes, self.response_chunks
            )
            .into_bytes();
        }
        self.response_chunks += 1;
        chunk.to_ascii_uppercase()
    }
}

export_plugin!(BodyProbe);
