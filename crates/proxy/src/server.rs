//! The listener: HTTP/1.1 and HTTP/2 (ALPN under TLS, prior knowledge in cleartext), optional
//! TLS, slow-client protection, graceful shutdown.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{self, ConnInfo};
use crate::Gateway;

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    gateway: Gateway,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<Tasks>,
    tasks: Tasks,
    handshake_timeout: Duration,
    grace: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `server.host:server.port` and loads TLS material if configured.
    pub async fn bind(gateway: &Gateway) -> std::io::Result<Server> {
        let snap = gateway.snapshot();
        let cfg = &snap.config.server;
        let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot bind {}:{}: {e}", cfg.host, cfg.port),
                )
            })?;
        let tls = match &cfg.tls {
            Some(t) => Some(crate::tls::acceptor(t, cfg.http2)?),
            None => None,
        };
        let header_timeout = Duration::from_millis(cfg.header_read_timeout_ms);
        let tasks = Tasks::default();
        let mut builder = auto::Builder::new(tasks.clone());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true)
            // Larger than the configured header limit so the handler, not hyper, answers
            // oversize heads with the JSON 431.
            .max_buf_size((cfg.max_header_bytes * 2).max(16 * 1024) + 8 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.max_header_bytes * 2).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let builder = if cfg.http2 {
            builder
        } else {
            builder.http1_only()
        };
        Ok(Server {
            listener,
            gateway: gateway.clone(),
            tls,
            builder,
            tasks,
            handshake_timeout: header_timeout,
            grace: Duration::from_millis(cfg.shutdown_grace_ms),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets connections finish
    /// their in-flight requests for up to `server.shutdown_grace_ms`. Connections still open
    /// then are cut, and `run` returns once their tasks have ended: what ends with a request
    /// (its access line, its spans) has run by then, marked `response_end = "shutdown"`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => self.spawn_connection(stream, peer, &graceful),
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = &mut shutdown => break,
            }
        }
        drop(self.listener);
        tracing::info!(
            grace_ms = self.grace.as_millis() as u64,
            "shutting down: draining connections"
        );
        match tokio::time::timeout(self.grace, graceful.shutdown()).await {
            Ok(()) => tracing::info!("all connections drained"),
            Err(_) => {
                tracing::warn!(
                    tasks = self.tasks.tracker.len(),
                    "shutdown grace period over: cutting remaining connections"
                );
                self.tasks.cut.cancel();
            }
        }
        // Wait until every connection task and every HTTP/2 stream task has ended (dropping a
        // response runs its end: the access line is batched before the caller flushes).
        self.tasks.tracker.close();
        self.tasks.tracker.wait().await;
    }

    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr, graceful: &GracefulShutdown) {
        let _ = stream.set_nodelay(true);
        let gateway = self.gateway.clone();
        let builder = self.builder.clone();
        let tls = self.tls.clone();
        let handshake_timeout = self.handshake_timeout;
        let watcher = graceful.watcher();
        let cut = self.tasks.cut.clone();
        self.tasks.spawn(async move {
            let conn = Arc::new(ConnInfo {
                peer,
                tls: tls.is_some(),
                cut,
            });
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                let conn = conn.clone();
                async move { Ok::<_, Infallible>(handler::handle(&gateway, req, &conn).await) }
            });
            let result =
                match tls {
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// The server's tasks: one per connection, and one per HTTP/2 stream (hyper spawns those
/// through this executor, outside their connection's task). Tracked so that shutdown can wait
/// for them, and dropped when `cut` is cancelled at the end of the grace period (dropping a
/// response runs its end).
#[derive(Clone, Default)]
struct Tasks {
    tracker: TaskTracker,
    cut: CancellationToken,
}

impl Tasks {
    fn spawn<F>(&self, fut: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let cut = self.cut.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = cut.cancelled() => {}
            }
        });
    }
}

impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.spawn(fut);
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
