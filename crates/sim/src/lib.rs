//! The inference simulator: a stand-in for the FastAPI GPU job server and an
//! OpenAI-compatible LLM server, with simulated Python GPU workers heartbeating into Redis in
//! the seeds' layout (`worker:{id}:status`, `worker:{id}:gpu`, `worker:{id}:heartbeat`).
//!
//! Endpoints: `POST /api/v1/jobs`, `GET /api/v1/jobs/{id}`, `GET /api/v1/queue/stats` (the
//! seeds' path) and `GET /api/v1/jobs/stats/queue` (the real backend's), `POST
//! /v1/chat/completions` (JSON or SSE with a `usage` block), `GET /v1/models`, `GET /health`.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod api;
mod workers;

pub use workers::{prefixed_worker_ids, worker_ids};

/// How the simulator behaves.
#[derive(Clone)]
pub struct SimOptions {
    /// Address to bind; port 0 picks one.
    pub bind: SocketAddr,
    /// Redis to heartbeat into (as a Python worker would).
    pub redis_url: Option<String>,
    /// Or a store in this process to heartbeat into (`wasmgate demo` on memory state). With
    /// neither, there are no simulated workers.
    pub store: Option<std::sync::Arc<dyn wasmgate_state::Store>>,
    /// Worker ids are `{worker_prefix}{i}`.
    pub worker_prefix: String,
    /// Number of simulated GPU workers.
    pub workers: usize,
    /// Regions assigned to workers in turn.
    pub regions: Vec<String>,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Delay between streamed tokens, and before a stream's first event (the prefill).
    pub token_delay: Duration,
    /// Time a job takes from submission to completion.
    pub job_duration: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            redis_url: None,
            store: None,
            worker_prefix: "sim-worker-".into(),
            workers: 2,
            regions: vec!["us-east".into(), "eu-west".into()],
            heartbeat_interval: Duration::from_secs(1),
            token_delay: Duration::from_millis(10),
            job_duration: Duration::from_millis(500),
        }
    }
}

/// A running simulator; stops when dropped.
pub struct Simulator {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Simulator {
    /// Binds, starts serving and (with a Redis URL) starts the worker heartbeats.
    pub async fn spawn(opts: SimOptions) -> anyhow::Result<Simulator> {
        let listener = TcpListener::bind(opts.bind).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let state = Arc::new(api::SimState::new(&opts));
        let writer = match (&opts.redis_url, &opts.store) {
            (Some(url), _) => Some(workers::Writer::connect(url).await?),
            (None, Some(store)) => Some(workers::Writer::Store(store.clone())),
            (None, None) => None,
        };
        if let Some(writer) = writer {
            workers::spawn(writer, &opts, stop_rx.clone()).await?;
        }
        let mut stop_accept = stop_rx;
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = stop_accept.changed() => return,
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Simulator { addr, stop })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
