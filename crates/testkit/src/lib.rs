//! Test fixtures for wasmgate, in the style of linkerd2-proxy's integration kit:
//!
//! ```ignore
//! let up = upstream().route("/", "ok").spawn().await;
//! let gw = gateway().upstream(&up).spawn().await;
//! let redis = RedisServer::start().await;
//! ```
//!
//! Everything listens on `127.0.0.1:0` and stops when dropped. [`sim`] is the inference
//! simulator (a stand-in for the FastAPI GPU server and its Python workers), also shipped as
//! the `wasmgate-sim` binary for the demo and the benchmarks.
#![deny(missing_docs)]

pub mod gateway;
pub mod load;
pub mod redis;
pub mod upstream;

pub use gateway::{gateway, GatewayBuilder, TestGateway};
pub use redis::{Monitor, RedisCluster, RedisSentinel, RedisServer};
pub use upstream::{upstream, Recorded, TestUpstream, UpstreamBuilder};
/// The inference simulator (its own crate, also used by `wasmgate demo`).
pub use wasmgate_sim as sim;

/// A free TCP port on 127.0.0.1 (bound and released; fine for child processes that need a
/// number up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A target where nothing listens, for as long as the guard lives: a socket bound to a port
/// on 127.0.0.1 that never listens, so a connect is refused at once, and no other test's
/// listener can be given the port meanwhile (as a released [`free_port`] can be, which turns
/// a dead target into a live one under parallel tests).
pub struct RefusingTarget {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl RefusingTarget {
    /// Binds it (no `SO_REUSEADDR`, so no other socket can share the port).
    pub fn bind() -> RefusingTarget {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind 127.0.0.1:0");
        let port = socket.local_addr().expect("bound address").port();
        RefusingTarget {
            _socket: socket,
            port,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Installs the ring crypto provider as the process default (idempotent), for rustls users
/// in tests such as reqwest built with `rustls-no-provider`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
