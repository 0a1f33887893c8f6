//! The `request-signing` built-in (docs/plugins/request-signing.md): every upstream request
//! carries `X-Timestamp` (unix seconds) and
//! `X-Signature = hex(HMAC-SHA256(secret, "{METHOD}:{path}:{sha256_hex(body)}:{timestamp}"))`,
//! the Distributed GPU Inference backend's `RequestSigner` format, so the backend can tell a
//! request came through the gateway.
//!
//! The body is hashed as it streams through `on-request-body`; the plugin asks for
//! `buffer-request-body`, so the host sends the request (with the headers set here) only once
//! the whole body was seen. `path` is the path the upstream receives (`upstream-path`: after
//! `strip_prefix`, with the target's base path), without the query.
use sha2::{Digest, Sha256};
use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    secret: String,
}

struct Signer {
    secret: Vec<u8>,
    body: Option<Sha256>,
}

impl Plugin for Signer {
    fn new(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.secret.is_empty() {
            return Err("secret must not be empty".into());
        }
        Ok(Signer {
            secret: s.secret.into_bytes(),
            body: None,
        })
    }

    fn info(&self) -> Info {
        Info::new("request-signing", env!("CARGO_PKG_VERSION"))
            .phase(Phase::RequestHeaders)
            .phase(Phase::RequestBody)
            .capability("buffer-request-body")
    }

    fn on_request_headers(&mut self) -> Action {
        // A request cut off mid-body leaves its hash behind in this (reused) instance.
        self.body = None;
        Action::Continue
    }

    fn on_request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        self.body.get_or_insert_with(Sha256::new).update(chunk);
        if end_of_stream {
            let digest = self.body.take().unwrap_or_default().finalize();
            let timestamp = (clock::now_ms() / 1000).to_string();
            let path = request::get_property("upstream-path").unwrap_or_else(request::path);
            let message = format!(
                "{}:{}:{}:{}",
                request::method(),
                path,
                hex::encode(digest),
                timestamp
            );
            let signature = hex::encode(crypto::hmac_sha256(&self.secret, message.as_bytes()));
            request::set_header("x-timestamp", &timestamp);
            request::set_header("x-signature", &signature);
        }
        Action::Continue
    }
}

export_plugin!(Signer);
