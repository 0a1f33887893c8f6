//! The load harness shared by the end-to-end benchmarks: a fast fixed-response upstream, a
//! minimal hyper reverse proxy (the baseline the gateway is held to), and a closed-loop load
//! generator over keep-alive HTTP/1.1 connections. Each server runs on its own runtime with a
//! chosen number of worker threads, so comparisons are like for like.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The body every benchmark upstream returns (a small JSON document).
pub const UPSTREAM_BODY: &str =
    r#"{"id":"job-1","status":"completed","result":{"output":"a small inference result"}}"#;

/// Runs `f` (which binds and returns its address, then serves forever) on a dedicated
/// multi-thread runtime with `workers` threads named `name` (so profilers can tell them apart),
/// in a background OS thread.
pub fn on_runtime<F, Fut>(name: &str, workers: usize, f: F) -> SocketAddr
where
    F: FnOnce(std::sync::mpsc::Sender<SocketAddr>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let name = name.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f(tx));
    });
    rx.recv().expect("server started")
}

/// The gateway as the binary runs it (state from `config.redis`, the plugin folder `plugins_dir`
/// if any, the built-ins `config` enables) on its own one-thread runtime named `name`.
/// Returns its address and how many plugins its chain has.
pub fn serve_gateway(
    name: &str,
    config: wasmgate_config::Config,
    plugins_dir: Option<std::path::PathBuf>,
) -> (SocketAddr, usize) {
    let (count_tx, count_rx) = std::sync::mpsc::channel();
    let addr = on_runtime(name, 1, move |tx| async move {
        let state = wasmgate_state::open_state(&config).await.expect("state");
        let services =
            wasmgate_plugin_host::HostServices::from_state(&state, &config.redis.key_prefix);
        let runtime = wasmgate_plugin_host::folder::start_gateway_plugins(
            &config,
            plugins_dir.as_deref(),
            None,
            services.clone(),
        )
        .await
        .expect("plugins start");
        let plugins = runtime.as_ref().map_or(0, |rt| rt.chain().plugins.len());
        count_tx.send(plugins).unwrap();
        let gw = wasmgate_proxy::Gateway::with_state(config, runtime, services).unwrap();
        let server = wasmgate_proxy::Server::bind(&gw).await.unwrap();
        tx.send(server.local_addr()).unwrap();
        server.run(std::future::pending()).await;
    });
    (addr, count_rx.recv().expect("gateway started"))
}

/// A fixed-response HTTP/1.1 upstream on `workers` threads.
pub fn fast_upstream(workers: usize) -> SocketAddr {
    slow_upstream(workers, std::time::Duration::ZERO)
}

/// [`fast_upstream`] answering each request after `delay` (a backend's latency; zero: at once).
pub fn slow_upstream(workers: usize, delay: std::time::Duration) -> SocketAddr {
    on_runtime("bench-upstream", workers, move |tx| async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        tx.send(listener.local_addr().unwrap()).unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(UPSTREAM_BODY.as_bytes())))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// The baseline: the smallest sensible hyper reverse proxy (pooled client, streaming bodies,
/// URI rewrite, nothing else) on `workers` threads, forwarding to `upstream`.
pub fn minimal_proxy(workers: usize, upstream: SocketAddr) -> SocketAddr {
    on_runtime("bench-minimal", workers, move |tx| async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        tx.send(listener.local_addr().unwrap()).unwrap();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(connector);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let client = client.clone();
                    async move {
                        let pq = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str())
                            .unwrap_or("/");
                        *req.uri_mut() = Uri::try_from(format!("http://{upstream}{pq}")).unwrap();
                        let resp = match client.request(req).await {
                            Ok(r) => r.map(|b| b.boxed_unsync()),
                            Err(_) => Response::builder()
                                .status(502)
                                .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
                                .unwrap(),
                        };
                        Ok::<Response<UnsyncBoxBody<Bytes, hyper::Error>>, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// A gateway configuration for benchmarks: `127.0.0.1:0`, one worker, one route `/` to
/// `upstream`.
pub fn single_route_config(upstream: SocketAddr) -> wasmgate_config::Config {
    let mut c = wasmgate_config::Config::default();
    c.server.host = "127.0.0.1".into();
    c.server.port = 0;
    c.server.workers = 1;
    c.upstreams.insert(
        "bench".into(),
        wasmgate_config::UpstreamConfig {
            targets: vec![format!("http://{upstream}")],
            ..Default::default()
        },
    );
    c.routes.push(wasmgate_config::RouteConfig {
        name: None,
        prefix: "/".into(),
        upstream: "bench".into(),
        strip_prefix: false,
    });
    c
}

/// A benchmark knob from the environment (`BENCH_SECONDS`, ...), or its default.
pub fn env_knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The load benchmarks' knobs: (`BENCH_SECONDS` per round, default 3; `BENCH_ROUNDS`,
/// default 9; `BENCH_CONNECTIONS`, default 32).
pub fn knobs() -> (u64, usize, usize) {
    (
        env_knob("BENCH_SECONDS", 3),
        env_knob("BENCH_ROUNDS", 9) as usize,
        env_knob("BENCH_CONNECTIONS", 32) as usize,
    )
}

/// What a load run measured.
#[derive(Debug, Clone, Copy)]
pub struct LoadResult {
    /// Completed requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Requests that failed or returned a non-2xx status.
    pub errors: u64,
    /// Requests that completed (2xx).
    pub requests: u64,
}

/// Runs `load` (a load run against the gateway whose threads are named `name`) and returns
/// its result with the gateway's CPU time per request, in µs ([`thread_cpu`]).
pub fn with_cpu_per_request(name: &str, load: impl FnOnce() -> LoadResult) -> (LoadResult, f64) {
    let before = thread_cpu(name).unwrap_or_default();
    let r = load();
    let cpu = thread_cpu(name).unwrap_or_default().saturating_sub(before);
    let served = (r.requests + r.errors).max(1) as f64;
    (r, cpu.as_secs_f64() * 1e6 / served)
}

/// The median of `values` (sorted in place; the upper one of an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// CPU time (user and system) used so far by this process's threads named `name` — a
/// gateway's runtime threads, as [`serve_gateway`] names them — from
/// `/proc/self/task/*/schedstat` (nanoseconds). Divided by the requests served, it is the
/// gateway's own cost per request: unlike throughput, it does not depend on how busy the
/// machine's other cores are. `None` off Linux.
pub fn thread_cpu(name: &str) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        // The kernel keeps 15 bytes of a thread's name.
        let short = &name[..name.len().min(15)];
        if comm.trim_end() != short {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(Duration::from_nanos(total))
}

/// Drives `connections` keep-alive connections to `addr`, each sending `GET path` back to back,
/// for `duration`, on the caller's runtime. Stops by itself.
pub async fn run_load(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> LoadResult {
    run_load_with(addr, path, &[], connections, duration).await
}

/// [`run_load`] with extra request headers (a credential, say).
pub async fn run_load_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&'static str, &'static str)],
    connections: usize,
    duration: Duration,
) -> LoadResult {
    let headers = headers.to_vec();
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let path = path.to_string();
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut errors = 0u64;
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                return (lat, 1);
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut send, conn)) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
            else {
                return (lat, 1);
            };
            tokio::spawn(conn);
            while Instant::now() < end {
                let mut req = Request::get(path.as_str())
                    .header("host", addr.to_string())
                    .header("user-agent", "wasmgate-load");
                for (name, value) in &headers {
                    req = req.header(*name, *value);
                }
                let req = req.body(Empty::new()).unwrap();
                let t = Instant::now();
                match send.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let body = resp.into_body().collect().await;
                        if ok && body.is_ok() {
                            lat.push(t.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap_or_default();
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            Duration::ZERO
        } else {
            all[((all.len() as f64 * p) as usize).min(all.len() - 1)]
        }
    };
    LoadResult {
        rps: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
        requests: all.len() as u64,
    }
}

/// The guest's cpuidle halt-poll window, for the load benchmarks on a virtual machine:
/// `/sys/module/haltpoll/parameters/guest_halt_poll_ns`, how long an idle vCPU polls before
/// it halts (the kernel's default is 200 000 ns; this machine boots with 0). A halted vCPU
/// costs whoever wakes it an IPI, a VM exit; `builtins_load` runs its rounds with both windows
/// side by side to show whether that moves a ratio (docs/performance.md, "Built-in chain end
/// to end"). [`HaltPoll::open`] remembers the window it finds and puts it back when dropped,
/// unwinding included.
pub struct HaltPoll {
    booted: u64,
}

impl HaltPoll {
    const PATH: &'static str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

    /// The window as found, if this is a haltpoll guest and the file can be written (root:
    /// writing the value back is the check).
    pub fn open() -> Option<Self> {
        let booted = std::fs::read_to_string(Self::PATH)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let me = Self { booted };
        me.set(booted).ok()?;
        Some(me)
    }

    /// The window found when opened, in ns.
    pub fn booted(&self) -> u64 {
        self.booted
    }

    /// Sets the window, in ns.
    pub fn set(&self, ns: u64) -> std::io::Result<()> {
        std::fs::write(Self::PATH, ns.to_string())
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        if let Err(e) = self.set(self.booted) {
            eprintln!("could not restore {} to {}: {e}", Self::PATH, self.booted);
        }
    }
}
