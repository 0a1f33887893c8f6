//! The wasmgate data plane.
//!
//! A [`Gateway`] holds the running configuration as an atomically swapped [`Snapshot`]
//! (routes and upstream pools); [`Gateway::reload`] builds a new one and swaps it, and
//! requests in flight finish on the snapshot they started with. [`Server`] accepts
//! HTTP/1.1 and HTTP/2 (ALPN under TLS, prior knowledge in cleartext) and runs each request
//! through [`handler`]: local `/gateway/*` endpoints, limits, route match, upstream call,
//! streaming both ways. Every error a client sees is made by [`error::error_response`].
#![deny(missing_docs)]

pub mod access;
mod admin;
pub mod body;
pub mod error;
mod forwarded;
pub mod genai;
pub mod handler;
pub mod headers;
pub mod jwks;
pub mod limit;
pub mod metrics;
pub mod otel;
mod plugin_body;
mod plugins;
mod routes;
mod server;
mod snapshot;
mod tls;
pub mod trace_context;
mod upstream;

pub use error::{ProxyError, Result};
pub use routes::RouteTable;
pub use server::{shutdown_signal, Server};
pub use snapshot::{BuildError, Gateway, Snapshot};
pub use upstream::{Target, Upstream, UpstreamClient};

/// The version reported by `/gateway/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
