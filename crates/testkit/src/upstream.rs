//! A scriptable upstream on `127.0.0.1:0`: fixed routes, an echo of what it received, slow
//! headers, slow bodies, SSE streams, streams paced by the test, and a request log.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// The whole body (empty for routes that do not read it).
    pub body: Bytes,
    /// HTTP version.
    pub version: http::Version,
}

#[derive(Clone)]
enum Behavior {
    Fixed(StatusCode, &'static str, Bytes),
    Echo,
    Delay(Duration, Box<Behavior>),
    SlowBody(Bytes, Duration, Bytes),
    Sse(Vec<String>, Duration),
    /// Sends one chunk each time the test sends on the channel; ends when it is dropped.
    Paced(
        Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>>,
        &'static str,
    ),
    /// Reads the body chunk by chunk, reporting each chunk to the test as it arrives.
    ChunkReporter(mpsc::UnboundedSender<Bytes>),
    /// `200` while the switch is on, `503` while it is off (a health endpoint).
    Switch(Arc<std::sync::atomic::AtomicBool>),
    /// Another behavior, with headers added to its response.
    WithHeaders(Vec<(&'static str, &'static str)>, Box<Behavior>),
    /// `200` with the document the test set last (a JWKS it rotates), `503` while it is empty.
    Document(Arc<std::sync::Mutex<Bytes>>),
}

/// Builds a [`TestUpstream`].
#[derive(Default)]
pub struct UpstreamBuilder {
    routes: Vec<(String, Behavior)>,
    http2_only: bool,
}

/// Starts building an upstream. Unrouted paths get the echo.
pub fn upstream() -> UpstreamBuilder {
    UpstreamBuilder::default()
}

impl UpstreamBuilder {
    fn add(mut self, prefix: &str, b: Behavior) -> Self {
        self.routes.push((prefix.to_string(), b));
        self
    }

    /// `200 text/plain` with `body` for paths starting with `prefix`.
    pub fn route(self, prefix: &str, body: &'static str) -> Self {
        self.add(
            prefix,
            Behavior::Fixed(
                StatusCode::OK,
                "text/plain",
                Bytes::from_static(body.as_bytes()),
            ),
        )
    }

    /// A fixed status, content type and body.
    pub fn respond(
        self,
        prefix: &str,
        status: u16,
        content_type: &'static str,
        body: &'static str,
    ) -> Self {
        let status = StatusCode::from_u16(status).expect("valid status");
        self.add(
            prefix,
            Behavior::Fixed(status, content_type, Bytes::from_static(body.as_bytes())),
        )
    }

    /// A health endpoint the test turns on and off: `200 {"status":"ok"}` while the returned
    /// switch is `true` (it starts on), `503` while it is `false`.
    pub fn health_switch(self, prefix: &str) -> (Self, Arc<std::sync::atomic::AtomicBool>) {
        let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
        (self.add(prefix, Behavior::Switch(on.clone())), on)
    }

    /// A JSON document the test changes while the upstream runs (through the returned cell):
    /// `200` with the current document, `503` while it is empty.
    pub fn document(self, prefix: &str, initial: &str) -> (Self, Arc<std::sync::Mutex<Bytes>>) {
        let doc = Arc::new(std::sync::Mutex::new(Bytes::copy_from_slice(
            initial.as_bytes(),
        )));
        (self.add(prefix, Behavior::Document(doc.clone())), doc)
    }

    /// The echo, with `headers` added to its response (e.g. `Cache-Control`, `Vary`).
    pub fn echo_with(self, prefix: &str, headers: &[(&'static str, &'static str)]) -> Self {
        self.add(
            prefix,
            Behavior::WithHeaders(headers.to_vec(), Box::new(Behavior::Echo)),
        )
    }

    /// Waits `delay` before sending the echo's headers.
    pub fn slow(self, prefix: &str, delay: Duration) -> Self {
        self.add(prefix, Behavior::Delay(delay, Box::new(Behavior::Echo)))
    }

    /// Sends headers and `first` at once, then `rest` after `delay`.
    pub fn slow_body(
        self,
        prefix: &str,
        first: &'static str,
        delay: Duration,
        rest: &'static str,
    ) -> Self {
        self.add(
            prefix,
            Behavior::SlowBody(
                Bytes::from_static(first.as_bytes()),
                delay,
                Bytes::from_static(rest.as_bytes()),
            ),
        )
    }

    /// A `text/event-stream` of `data: <event>` frames, one every `interval`.
    pub fn sse(self, prefix: &str, events: &[&str], interval: Duration) -> Self {
        self.add(
            prefix,
            Behavior::Sse(events.iter().map(|e| e.to_string()).collect(), interval),
        )
    }

    /// A response whose chunks the test sends one at a time through the returned sender.
    pub fn paced(
        self,
        prefix: &str,
        content_type: &'static str,
    ) -> (Self, mpsc::UnboundedSender<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            self.add(
                prefix,
                Behavior::Paced(Arc::new(tokio::sync::Mutex::new(rx)), content_type),
            ),
            tx,
        )
    }

    /// Reports each request body chunk to the returned receiver the moment it arrives.
    pub fn chunk_reporter(self, prefix: &str) -> (Self, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (self.add(prefix, Behavior::ChunkReporter(tx)), rx)
    }

    /// Serve HTTP/2 only (prior knowledge).
    pub fn http2_only(mut self) -> Self {
        self.http2_only = true;
        self
    }

    /// Starts serving on `127.0.0.1:0`.
    pub async fn spawn(self) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            routes: self.routes,
            log: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            arrived: Notify::new(),
        });
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let st = state.clone();
        let http2_only = self.http2_only;
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = &mut stop_rx => return,
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(st.serve(req).await) }
                    });
                    let mut b = auto::Builder::new(TokioExecutor::new());
                    if http2_only {
                        b = b.http2_only();
                    }
                    let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        TestUpstream {
            addr,
            state,
            _stop: stop_tx,
        }
    }
}

struct State {
    routes: Vec<(String, Behavior)>,
    log: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    arrived: Notify,
}

struct InFlight<'a>(&'a State);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

fn stream_body(rx: mpsc::UnboundedReceiver<Bytes>) -> Body {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    StreamBody::new(s).boxed_unsync()
}

impl State {
    async fn serve(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(n, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        let _g = InFlight(&self);
        let path = req.uri().path().to_string();
        let behavior = self
            .routes
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(_, b)| b.clone())
            .unwrap_or(Behavior::Echo);
        self.run(behavior, req).await
    }

    fn record(&self, parts: &http::request::Parts, body: Bytes) -> Recorded {
        let r = Recorded {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts.headers.clone(),
            body,
            version: parts.version,
        };
        self.log.lock().unwrap().push(r.clone());
        self.arrived.notify_waiters();
        r
    }

    fn run(
        self: &Arc<Self>,
        behavior: Behavior,
        req: Request<Incoming>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send + '_>> {
        Box::pin(async move {
            match behavior {
                Behavior::Fixed(status, ct, body) => {
                    let (parts, _) = req.into_parts();
                    self.record(&parts, Bytes::new());
                    Response::builder()
                        .status(status)
                        .header("content-type", ct)
                        .body(full(body))
                        .unwrap()
                }
                Behavior::WithHeaders(headers, inner) => {
                    let mut resp = self.run(*inner, req).await;
                    for (name, value) in headers {
                        resp.headers_mut()
                            .append(name, http::HeaderValue::from_static(value));
                    }
                    resp
                }
                Behavior::Document(doc) => {
                    let (parts, _) = req.into_parts();
                    self.record(&parts, Bytes::new());
                    let body = doc.lock().unwrap().clone();
                    let status = if body.is_empty() {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(full(body))
                        .unwrap()
                }
                Behavior::Switch(on) => {
                    let (parts, _) = req.into_parts();
                    self.record(&parts, Bytes::new());
                    let (status, body) = if on.load(Ordering::SeqCst) {
                        (StatusCode::OK, r#"{"status":"ok"}"#)
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"down"}"#)
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(full(body))
                        .unwrap()
                }
                Behavior::Echo => {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let r = self.record(&parts, body);
                    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
                    for (k, v) in &r.headers {
                        headers
                            .entry(k.to_string())
                            .or_default()
                            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                    }
                    let json = serde_json::json!({
                        "method": r.method,
                        "uri": r.uri,
                        "version": format!("{:?}", r.version),
                        "headers": headers,
                        "body": String::from_utf8_lossy(&r.body),
                        "body_len": r.body.len(),
                    });
                    Response::builder()
                        .header("content-type", "application/json")
                        .header("connection", "x-upstream-hop")
                        .header("x-upstream-hop", "must-not-reach-client")
                        .header("keep-alive", "timeout=5")
                        .body(full(json.to_string()))
                        .unwrap()
                }
                Behavior::Delay(d, inner) => {
                    tokio::time::sleep(d).await;
                    self.run(*inner, req).await
                }
                Behavior::SlowBody(first, delay, rest) => {
                    let (parts, _) = req.into_parts();
                    self.record(&parts, Bytes::new());
                    let (tx, rx) = mpsc::unbounded_channel();
                    let _ = tx.send(first);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(rest);
                    });
                    Response::builder()
                        .header("content-type", "text/plain")
                        .body(stream_body(rx))
                        .unwrap()
                }
                Behavior::Sse(events, interval) => {
                    let (parts, _) = req.into_parts();
                    self.record(&parts, Bytes::new());
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        for (i, e) in events.into_iter().enumerate() {
                            if i > 0 {
                                tokio::time::sleep(interval).await;
                            }
                            if tx.send(Bytes::from(format!("data: {e}\n\n"))).is_err() {
                                return;
                            }
                        }
                    });
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .header("cache-control", "no-cache")
                        .body(stream_body(rx))
                        .unwrap()
                }
                Behavior::Paced(source, ct) => {
                    let (parts, _) = req.into_parts();
                    self.record(&parts, Bytes::new());
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        let mut source = source.lock().await;
                        while let Some(chunk) = source.recv().await {
                            if tx.send(chunk).is_err() {
                                return;
                            }
                        }
                    });
                    Response::builder()
                        .header("content-type", ct)
                        .body(stream_body(rx))
                        .unwrap()
                }
                Behavior::ChunkReporter(report) => {
                    let (parts, mut body) = req.into_parts();
                    let mut all = Vec::new();
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Ok(data) = frame.into_data() {
                            all.extend_from_slice(&data);
                            let _ = report.send(data);
                        }
                    }
                    self.record(&parts, Bytes::from(all.clone()));
                    Response::builder()
                        .header("content-type", "text/plain")
                        .body(full(format!("received {} bytes", all.len())))
                        .unwrap()
                }
            }
        })
    }
}

/// A running upstream; stops accepting when dropped.
pub struct TestUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: oneshot::Sender<()>,
}

impl TestUpstream {
    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    /// Requests received so far on paths starting with `prefix` (health checks on other
    /// paths left out).
    pub fn requests_to(&self, prefix: &str) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.uri.starts_with(prefix))
            .count()
    }

    /// Requests received so far.
    pub fn request_count(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The most requests it ever had in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have been recorded.
    pub async fn wait_for_requests(&self, n: usize) {
        loop {
            let notified = self.state.arrived.notified();
            if self.state.log.lock().unwrap().len() >= n {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}
