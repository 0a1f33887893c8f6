//! The request pipeline, in order:
//! 1. request id (kept or made), local `/gateway/*` endpoints;
//! 2. limits: global in-flight cap, header size, declared body size;
//! 3. route match (longest prefix), upstream in-flight cap, target choice (round-robin);
//! 4. upstream request: hop-by-hop removal, `remove_headers`, `X-Forwarded-*`, `Host`,
//!    `inject_headers`, `X-Request-ID`, `traceparent`; the body streams through a size limit;
//! 5. response: hop-by-hop removal, `X-Request-ID`; the body streams back under the request
//!    deadline (not for `text/event-stream`), holding the in-flight permits until it ends.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::body::{empty, full, BoxError, LimitedBody, ProxyBody, ResponseBody};
use crate::error::{error_response, ProxyError, Result};
use crate::headers::{self, remove_hop_by_hop, X_REQUEST_ID};
use crate::trace_context::TraceParent;
use crate::{Gateway, VERSION};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The health endpoint, answered before routing and before the in-flight cap.
pub const HEALTH_PATH: &str = "/gateway/health";

/// What the handler knows about the downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Handles one request; never fails: errors become JSON responses.
pub async fn handle<B>(gw: &Gateway, req: Request<B>, conn: &ConnInfo) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let request_id = headers::request_id(req.headers());
    match proxy(gw, req, conn, &request_id).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e, headers::request_id_str(&request_id)),
    }
}

async fn proxy<B>(
    gw: &Gateway,
    req: Request<B>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
) -> Result<Response<ProxyBody>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if req.uri().path() == HEALTH_PATH {
        return Ok(health(gw, request_id));
    }
    let global_permit = match &gw.inner.in_flight {
        Some(limit) => Some(
            limit
                .try_acquire()
                .ok_or(ProxyError::DownstreamConcurrency)?,
        ),
        None => None,
    };
    let snap = gw.snapshot();
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
    let (route, upstream) = snap.route(path).ok_or(ProxyError::RouteNotFound)?;
    let upstream_permit = match &upstream.limit {
        Some(limit) => Some(
            limit
                .try_acquire()
                .ok_or_else(|| ProxyError::UpstreamConcurrency(upstream.name.clone()))?,
        ),
        None => None,
    };
    let target = upstream.next_target();
    let uri = target
        .uri(&route.upstream_path(path), req.uri().query())
        .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URI: {e}")))?;

    let (mut parts, body) = req.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let h = &mut parts.headers;
    remove_hop_by_hop(h);
    for name in &upstream.remove {
        h.remove(name);
    }
    snap.forwarded
        .apply(h, conn.peer.ip(), conn.tls, original_host.clone());
    match (upstream.preserve_host, original_host) {
        (true, Some(host)) => h.insert(header::HOST, host),
        _ => h.insert(header::HOST, target.host_header.clone()),
    };
    for (name, value) in &upstream.inject {
        h.insert(name.clone(), value.clone());
    }
    h.insert(X_REQUEST_ID, request_id.clone());
    let trace = TraceParent::continue_or_start(h.get(&TRACEPARENT).and_then(|v| v.to_str().ok()));
    h.insert(TRACEPARENT, trace.header_value());
    parts.uri = uri;
    parts.version = if upstream.client_is_http2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    // Bodiless requests (most GETs) skip the limiter: no flag, no allocation.
    let (body, tripped) = if body.is_end_stream() {
        (empty(), None)
    } else {
        let tripped = Arc::new(AtomicBool::new(false));
        let limited = LimitedBody::new(body, limits.max_body_bytes, tripped.clone());
        (limited.boxed_unsync(), Some(tripped))
    };
    let deadline = Instant::now() + upstream.request_timeout;
    let sent = tokio::time::timeout_at(
        deadline,
        upstream.client.request(Request::from_parts(parts, body)),
    )
    .await;
    let resp = match sent {
        Err(_elapsed) => {
            return Err(ProxyError::UpstreamTimeout {
                upstream: upstream.name.clone(),
                target: target.authority.to_string(),
                timeout_ms: upstream.request_timeout_ms,
            })
        }
        Ok(Err(_)) if tripped.is_some_and(|t| t.load(Ordering::Acquire)) => {
            return Err(ProxyError::PayloadTooLarge(limits.max_body_bytes))
        }
        Ok(Err(e)) if e.is_connect() => {
            return Err(ProxyError::UpstreamConnect {
                upstream: upstream.name.clone(),
                target: target.authority.to_string(),
                cause: error_chain(&e),
            })
        }
        Ok(Err(e)) => {
            return Err(ProxyError::Upstream {
                upstream: upstream.name.clone(),
                target: target.authority.to_string(),
                cause: error_chain(&e),
            })
        }
        Ok(Ok(resp)) => resp,
    };

    let (mut rparts, rbody) = resp.into_parts();
    remove_hop_by_hop(&mut rparts.headers);
    rparts.headers.insert(X_REQUEST_ID, request_id.clone());
    let streaming = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    let body_deadline = (!streaming).then_some(deadline);
    let guard = (global_permit, upstream_permit);
    let body = ResponseBody::new(rbody, body_deadline, guard).boxed_unsync();
    Ok(Response::from_parts(rparts, body))
}

fn health(gw: &Gateway, request_id: &HeaderValue) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "status": "healthy",
        "version": VERSION,
        "uptime_s": gw.uptime_secs(),
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_REQUEST_ID, request_id.clone());
    resp
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
