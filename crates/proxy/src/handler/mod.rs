//! The request pipeline, in order:
//! 1. request id (kept or made), local `/gateway/*` endpoints;
//! 2. limits: global in-flight cap, header size, declared body size;
//! 3. route match (longest prefix), upstream in-flight cap;
//! 4. hop-by-hop removal and `remove_headers`, then the route's plugins (`on-request-headers`:
//!    they may change headers, set properties, answer locally or hint a target);
//! 5. target choice (a plugin's hint, else round-robin), then `X-Forwarded-*`, `Host`,
//!    `inject_headers`, `X-Request-ID`, `traceparent`; the body streams through a size limit;
//! 6. response: hop-by-hop removal, plugins (`on-response-headers`, reverse order),
//!    `X-Request-ID`; the body streams back under the request deadline (not for
//!    `text/event-stream`), holding the in-flight permits and the plugin session until it
//!    ends, when `on-log` runs.
//!
//! Here the pipeline itself; in `phases` the plugins' phases around it, in `trace` the
//! request's spans, in `workers` the worker list endpoint.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::body::{empty, full, BoxError, LimitedBody, ProxyBody, ResponseBody, UnsentBody};
use crate::error::{error_response, ProxyError, Result};
use crate::headers::{self, remove_hop_by_hop, X_REQUEST_ID};
use crate::plugin_body::{BodyVerdict, PluginRequestBody, PluginResponseBody, VerdictSlot};
use crate::trace_context::TraceParent;
use crate::{Gateway, Snapshot};

mod phases;
mod trace;
mod workers;

use phases::{
    buffered_body_phase, error_answer, local_answer, request_phase, RequestPhase, Session,
};
use trace::{finish_trace, start_trace};
pub use workers::WORKERS_ROUTE;
use workers::{workers_endpoint, WORKERS_ROUTE_NAME};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// What the handler knows about the downstream connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Cancelled when the server cuts its remaining connections at the end of the shutdown
    /// grace period (shared by all of a server's connections).
    pub cut: tokio_util::sync::CancellationToken,
}

/// Handles one request; never fails: errors become JSON responses.
pub async fn handle<B>(gw: &Gateway, req: Request<B>, conn: &ConnInfo) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let request_id = headers::request_id(req.headers());
    let started = Instant::now();
    let _in_flight = gw.inner.metrics.start();
    // One snapshot for the whole request: its configuration says what is recorded.
    let snap = gw.snapshot();
    let metrics = snap.config.metrics.enabled.then_some(&*gw.inner.metrics);
    let method = req.method().clone();
    let mut info = AccessInfo::default();
    if let Some(otel) = &gw.inner.otel {
        start_trace(otel, req.headers(), &method, started.into_std(), &mut info);
    }
    // The path (never the query) for the access line and the trace: one copy for both.
    let access_log = snap.config.log.access_log;
    let traced = info.trace.is_some();
    let path = (access_log || traced).then(|| req.uri().path().to_owned());
    // An OpenAI-style call: its response is read for the token usage (metrics, trace), and a
    // traced one's request body for its model on the way up.
    let genai = (traced || metrics.is_some())
        .then(|| crate::genai::operation(req.uri().path()))
        .flatten()
        .map(|op| (op, crate::genai::SharedFacts::default()));
    let tap = genai.as_ref().filter(|_| traced).map(|g| g.1.clone());
    let req = req.map(|b| crate::genai::RequestTap::new(b, tap));
    let resp = match proxy(gw, &snap, metrics, req, conn, &request_id, &mut info).await {
        Ok(resp) => resp,
        Err(e) => {
            info.error = Some(e.code());
            error_response(&e, headers::request_id_str(&request_id))
        }
    };
    let error = info.error;
    let took = started.elapsed();
    let status = resp.status().as_u16();
    if let Some(m) = metrics {
        m.answered(info.route.as_ref(), &method, status, took);
    }
    let spans = match (&gw.inner.otel, &path) {
        (Some(otel), Some(path)) => {
            finish_trace(otel, &mut info, &method, path, status, error, genai.clone())
        }
        _ => None,
    };
    let path = path.filter(|_| access_log);
    // On GenAI paths the response body is read on its way for the model and token usage.
    let scan = genai.as_ref().and_then(|(_, facts)| {
        let scan = crate::genai::ResponseScan::for_response(resp.headers())?;
        Some((scan, facts.clone()))
    });
    if spans.is_none() && path.is_none() && scan.is_none() {
        return resp;
    }
    // The access line, the spans and the token count wait for the end of the response body:
    // a streamed completion's duration is the stream's, and its usage comes last.
    let stream = scan.as_ref().is_some_and(|(s, _)| s.is_stream());
    let counter = metrics.filter(|_| scan.is_some()).map(|m| m.genai());
    let client = conn.peer.ip();
    let on_end: crate::body::OnEnd = Box::new(move |ended| {
        let crate::body::Ended { how, bytes, .. } = ended;
        if let Some(spans) = spans {
            spans.end(how);
        }
        if let (Some(counter), Some((op, facts)), Some(route)) = (counter, genai, &info.route) {
            // A stream's first event, from the request's start: time to first token.
            let ttft = ended
                .first_byte
                .filter(|_| stream && status == 200)
                .map(|at| at.duration_since(started));
            let facts = facts.lock().unwrap_or_else(|p| p.into_inner());
            counter.add(route, op, &facts, ttft);
        }
        if let Some(path) = path {
            crate::access::Line {
                request_id: headers::request_id_str(&request_id),
                trace_id: info.trace_id,
                client,
                method: method.as_str(),
                path: &path,
                route: info.route.as_deref().unwrap_or(""),
                status,
                duration: started.elapsed(),
                ttfb: took,
                bytes_sent: bytes,
                response_end: how,
                upstream: info.upstream.as_ref().map_or("", |u| &*u.name),
                upstream_target: info.target.as_ref().map_or("", |t| t.as_str()),
                attempts: info.attempts,
                upstream_time: info.upstream_time,
                plugin_time: info.plugin_time,
                answered_by_plugin: info.answered_by_plugin,
                plugins: &info.plugins,
                error: error.unwrap_or(""),
            }
            .emit();
        }
    });
    let cut = conn.cut.clone();
    resp.map(|b| crate::body::EndBody::new(b, scan, on_end, cut).boxed_unsync())
}

/// What metrics and the access log say about a request, filled in as it goes (cheap clones:
/// shared names, the parsed authority).
#[derive(Default)]
pub(crate) struct AccessInfo {
    route: Option<Arc<str>>,
    upstream: Option<Arc<crate::upstream::Upstream>>,
    target: Option<http::uri::Authority>,
    attempts: u32,
    upstream_time: Option<std::time::Duration>,
    plugin_time: Option<std::time::Duration>,
    answered_by_plugin: bool,
    /// The gateway's error code, for an error answered through the plugins (`error_answer`).
    error: Option<&'static str>,
    trace_id: Option<u128>,
    /// Each plugin's outcome (and, when traced, each call), recorded only while the access
    /// log is on or the request is traced.
    plugins: wasmgate_plugin_host::PluginOutcomes,
    /// The request's server span and the clock pair its times are read with, when sampled.
    trace: Option<(
        opentelemetry::Context,
        (std::time::Instant, std::time::SystemTime),
    )>,
    /// The upstream call's client span.
    upstream_trace: Option<opentelemetry::Context>,
}

impl AccessInfo {
    /// Where a session records what its plugins did: `None` (no work) with the log off and
    /// the request not traced.
    fn record<'a>(
        &'a mut self,
        snap: &Snapshot,
    ) -> Option<&'a mut wasmgate_plugin_host::PluginOutcomes> {
        (snap.config.log.access_log || self.trace.is_some()).then_some(&mut self.plugins)
    }
}

static GATEWAY_ROUTE: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("gateway"));

async fn proxy<B>(
    gw: &Gateway,
    snap: &Snapshot,
    metrics: Option<&crate::metrics::Metrics>,
    req: Request<B>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    info: &mut AccessInfo,
) -> Result<Response<ProxyBody>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if let Some(resp) = crate::admin::local(gw, &req, request_id).await {
        info.route = Some(GATEWAY_ROUTE.clone());
        return Ok(resp);
    }
    let global_permit = match &gw.inner.in_flight {
        Some(limit) => Some(
            limit
                .try_acquire()
                .ok_or(ProxyError::DownstreamConcurrency)?,
        ),
        None => None,
    };
    let limits = &snap.config.server;
    if headers::header_bytes(req.headers()) > limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge(limits.max_header_bytes));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(ProxyError::PayloadTooLarge(limits.max_body_bytes));
    }

    let path = req.uri().path();
    let workers_path = snap.config.workers.endpoint.as_str();
    if !workers_path.is_empty() && path == workers_path {
        info.route = Some(WORKERS_ROUTE_NAME.clone());
        let record = info.record(snap);
        return workers_endpoint(gw, snap, req, conn, request_id, global_permit, record).await;
    }
    let (route, upstream) = snap.route(path).ok_or(ProxyError::RouteNotFound)?;
    info.route = Some(route.name.clone());
    info.upstream = Some(upstream.clone());
    let upstream_permit = match &upstream.limit {
        Some(limit) => Some(
            limit
                .try_acquire()
                .ok_or_else(|| ProxyError::UpstreamConcurrency(upstream.name.to_string()))?,
        ),
        None => None,
    };
    let (mut parts, body) = req.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    remove_hop_by_hop(&mut parts.headers);
    headers::remove_gateway_claims(&mut parts.headers);
    for name in &upstream.remove {
        parts.headers.remove(name);
    }

    // Plugins see the cleaned request; what they answer or hint decides what happens next.
    let plugins_started = Instant::now();
    let phase = request_phase(
        gw,
        snap,
        conn,
        &mut parts,
        (&route.name, Some(upstream)),
        request_id,
        info.record(snap),
    )
    .await;
    if gw.plugins().is_some() {
        info.plugin_time = Some(plugins_started.elapsed());
    }
    let (mut session, mut hint) = match phase? {
        RequestPhase::Answered(s, local) => {
            info.answered_by_plugin = true;
            let permits = (global_permit, upstream_permit);
            let record = info.record(snap);
            return local_answer(Some(Session::Owned(s)), local, request_id, permits, record).await;
        }
        RequestPhase::Continue(s, hint) => (Some(s), hint),
        RequestPhase::NoPlugins => (None, None),
    };
    // A plugin that signs (or otherwise needs) the whole body sees it before the upstream
    // request: read it here, through every body plugin, then send it in one piece to the
    // target chosen now (the `upstream-path` property tells the plugins its path).
    let mut body = Some(body);
    let mut buffered: Option<Bytes> = None;
    if let Some(s) = session.as_mut().filter(|s| s.buffers_request_body()) {
        let first = upstream.choose(hint.as_deref(), &[]).unwrap_or(0);
        let target = &upstream.targets[first];
        let path = format!(
            "{}{}",
            target.base_path,
            route.upstream_path(parts.uri.path())
        );
        s.state.properties.insert("upstream-path".into(), path);
        hint = Some(target.authority.to_string());
        s.state.headers = std::mem::take(&mut parts.headers);
        let read = buffered_body_phase(s, body.take().expect("body"), limits.max_body_bytes).await;
        parts.headers = std::mem::take(&mut s.state.headers);
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                let permits = (global_permit, upstream_permit);
                let s = session.take().map(Session::Owned);
                return error_answer(s, e, request_id, permits, info, snap).await;
            }
        };
        match read {
            Ok(bytes) => buffered = Some(bytes),
            Err(local) => {
                let permits = (global_permit, upstream_permit);
                let s = session.take().map(Session::Owned);
                return local_answer(s, local, request_id, permits, info.record(snap)).await;
            }
        }
    }
    let wants_request_body =
        buffered.is_none() && session.as_ref().is_some_and(|s| s.wants_request_body());
    let wants_response_body = session.as_ref().is_some_and(|s| s.wants_response_body());
    let mut session = session.map(|s| {
        if wants_request_body || wants_response_body {
            Session::Shared(Arc::new(tokio::sync::Mutex::new(s)))
        } else {
            Session::Owned(s)
        }
    });
    // The gateway's own error from here on goes through the plugins' response phase.
    macro_rules! fail {
        ($e:expr) => {{
            let permits = (global_permit, upstream_permit);
            return error_answer(session.take(), $e, request_id, permits, info, snap).await;
        }};
    }

    let h = &mut parts.headers;
    snap.forwarded
        .apply(h, conn.peer.ip(), conn.tls, original_host.clone());
    let keep_host = match (upstream.preserve_host, original_host) {
        (true, Some(host)) => {
            h.insert(header::HOST, host);
            true
        }
        _ => false,
    };
    for (name, value) in &upstream.inject {
        h.insert(name.clone(), value.clone());
    }
    h.insert(X_REQUEST_ID, request_id.clone());
    // Traced: the backend's parent is the upstream call's client span.
    let trace = match (&gw.inner.otel, &info.trace) {
        (Some(otel), Some((cx, _))) => {
            let up = otel.upstream_span(cx, parts.method.as_str());
            let tp = crate::otel::traceparent_of(&up);
            info.upstream_trace = Some(up);
            tp
        }
        (otel, _) => {
            let mut tp =
                TraceParent::continue_or_start(h.get(&TRACEPARENT).and_then(|v| v.to_str().ok()));
            if otel.is_some() {
                // Tracing decided not to sample it: say so downstream.
                tp.flags &= !0x01;
            }
            tp
        }
    };
    h.insert(TRACEPARENT, trace.header_value());
    info.trace_id = Some(trace.trace_id);
    let client_uri = std::mem::take(&mut parts.uri);
    let upstream_path = route.upstream_path(client_uri.path());
    let query = client_uri.query();
    parts.version = if upstream.client_is_http2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    // Bodiless requests (most GETs) skip the limiter: no flag, no allocation.
    let mut verdict: Option<VerdictSlot> = None;
    let (body, tripped) = if let Some(bytes) = buffered {
        (full(bytes), None)
    } else if let Some(body) = body.take().filter(|b| !b.is_end_stream()) {
        let tripped = Arc::new(AtomicBool::new(false));
        let limited = LimitedBody::new(body, limits.max_body_bytes, tripped.clone());
        let body = match (&session, wants_request_body) {
            (Some(Session::Shared(shared)), true) => {
                let slot = VerdictSlot::default();
                verdict = Some(slot.clone());
                PluginRequestBody::new(limited, shared.clone(), slot).boxed_unsync()
            }
            _ => limited.boxed_unsync(),
        };
        (body, Some(tripped))
    } else {
        (empty(), None)
    };

    // Attempts: the first target, then (on a failure before any response) untried ones. A
    // retry needs the request head again (kept only when retries are on) and the body unsent.
    let retry_head = (upstream.retries > 0 && upstream.targets.len() > 1)
        .then(|| (parts.method.clone(), parts.headers.clone()));
    let idempotent = parts.method.is_idempotent();
    let head_request = parts.method == http::Method::HEAD;
    let mut body = Some(UnsentBody::wrap(body, retry_head.is_some()));
    let mut head = Some(parts);
    let mut tried: Vec<usize> = Vec::new();
    let deadline = Instant::now() + upstream.request_timeout;
    let (resp, target_guard) = loop {
        let attempt = tried.len();
        // Retries stop before every target was tried, so a target is always left.
        let i = upstream.choose(hint.as_deref(), &tried).unwrap_or(0);
        let target = &upstream.targets[i];
        info.target = Some(target.authority.clone());
        info.attempts += 1;
        let mut parts = match head.take() {
            Some(p) => p,
            None => {
                let (method, headers) = retry_head.clone().expect("retries kept the head");
                let mut p = Request::new(()).into_parts().0;
                p.method = method;
                p.headers = headers;
                p.version = if upstream.client_is_http2() {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                };
                p
            }
        };
        parts.uri = match target.uri(&upstream_path, query) {
            Ok(uri) => uri,
            Err(e) => fail!(ProxyError::BadRequest(format!(
                "cannot build upstream URI: {e}"
            ))),
        };
        if !keep_host {
            parts
                .headers
                .insert(header::HOST, target.host_header.clone());
        }
        let (this_body, resend) = body.take().expect("a body per attempt").split();
        let guard = upstream.track(i);
        let attempt_started = Instant::now();
        let sent = tokio::time::timeout_at(
            deadline,
            upstream
                .client
                .request(Request::from_parts(parts, this_body)),
        )
        .await;
        let e = match sent {
            Ok(Ok(resp)) => {
                upstream.record(i, true, "request");
                let took = attempt_started.elapsed();
                info.upstream_time = Some(took);
                if let Some(m) = metrics {
                    m.upstream_ok(&upstream.name, &target.authority, took);
                }
                break (resp, guard);
            }
            Err(_elapsed) => {
                if let Some(m) = metrics {
                    m.upstream_error(&upstream.name, &target.authority, "timeout");
                }
                fail!(ProxyError::UpstreamTimeout {
                    upstream: upstream.name.to_string(),
                    target: target.authority.to_string(),
                    timeout_ms: upstream.request_timeout_ms,
                });
            }
            Ok(Err(e)) => e,
        };
        drop(guard);
        if e.is_connect() {
            upstream.record(i, false, "request");
        }
        let kind = if e.is_connect() { "connect" } else { "error" };
        if let Some(m) = metrics {
            m.upstream_error(&upstream.name, &target.authority, kind);
        }
        // A body plugin may have stopped the request: its answer wins over the upstream error.
        if let Some(v) = verdict.as_ref().and_then(|v| v.lock().unwrap().take()) {
            return match (v, session) {
                (BodyVerdict::Respond(local), Some(s)) => {
                    let permits = (global_permit, upstream_permit);
                    local_answer(Some(s), local, request_id, permits, info.record(snap)).await
                }
                (BodyVerdict::Failed(f), _) => Err(ProxyError::Plugin(f.plugin)),
                (BodyVerdict::Respond(_), None) => Err(ProxyError::Plugin("(unknown)".into())),
            };
        }
        if tripped.as_ref().is_some_and(|t| t.load(Ordering::Acquire)) {
            fail!(ProxyError::PayloadTooLarge(limits.max_body_bytes));
        }
        tried.push(i);
        let unsent = resend.and_then(|r| r.reclaim());
        let retry = attempt < upstream.retries as usize
            && tried.len() < upstream.targets.len().max(1)
            && unsent.is_some()
            && (e.is_connect() || idempotent);
        if retry {
            let backoff = upstream.retry_backoff * 2u32.saturating_pow(attempt as u32);
            tracing::debug!(upstream = %upstream.name, target = %target.authority, attempt, error = %error_chain(&e), "retrying on another target");
            if Instant::now() + backoff >= deadline {
                fail!(upstream_error(upstream, target, &e));
            }
            tokio::time::sleep(backoff).await;
            if let Some(m) = metrics {
                m.retried(&upstream.name);
            }
            body = unsent;
            continue;
        }
        fail!(upstream_error(upstream, target, &e));
    };

    let (mut rparts, rbody) = resp.into_parts();
    remove_hop_by_hop(&mut rparts.headers);
    if let Some(s) = session.as_mut() {
        s.response_headers(
            rparts.status.as_u16(),
            &mut rparts.headers,
            info.record(snap),
        )
        .await
        .map_err(|f| ProxyError::Plugin(f.plugin))?;
    }
    rparts.headers.insert(X_REQUEST_ID, request_id.clone());
    let streaming = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    let body_deadline = (!streaming).then_some(deadline);
    // Asked again: a plugin may have skipped this body in its response-headers phase.
    let mut wants_response_body =
        wants_response_body && session.as_ref().is_some_and(Session::wants_response_body);
    let bodiless = head_request
        || rparts.status == http::StatusCode::NO_CONTENT
        || rparts.status == http::StatusCode::NOT_MODIFIED
        || rbody.is_end_stream();
    if let (true, true, Some(s)) = (wants_response_body, bodiless, session.as_mut()) {
        // The server never polls a body that cannot exist: the end-of-stream call the
        // contract promises is made here.
        s.end_of_response_body()
            .await
            .map_err(|f| ProxyError::Plugin(f.plugin))?;
        wants_response_body = false;
    }
    let body = match (&session, wants_response_body) {
        (Some(Session::Shared(shared)), true) => {
            let transformed = PluginResponseBody::new(rbody, shared.clone());
            // The length may change: let the server frame the body.
            rparts.headers.remove(header::CONTENT_LENGTH);
            let guard = (global_permit, upstream_permit, session, target_guard);
            ResponseBody::new(transformed, body_deadline, guard).boxed_unsync()
        }
        _ => {
            let guard = (global_permit, upstream_permit, session, target_guard);
            ResponseBody::new(rbody, body_deadline, guard).boxed_unsync()
        }
    };
    Ok(Response::from_parts(rparts, body))
}

/// The error for a failed attempt on `target`.
fn upstream_error(
    upstream: &crate::upstream::Upstream,
    target: &crate::upstream::Target,
    e: &hyper_util::client::legacy::Error,
) -> ProxyError {
    if e.is_connect() {
        ProxyError::UpstreamConnect {
            upstream: upstream.name.to_string(),
            target: target.authority.to_string(),
            cause: error_chain(e),
        }
    } else {
        ProxyError::Upstream {
            upstream: upstream.name.to_string(),
            target: target.authority.to_string(),
            cause: error_chain(e),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
