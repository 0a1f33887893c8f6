//! The plugins' phases around the proxying: the request head, a buffered request body, and
//! the response phase of the answers the gateway makes itself (local answers, errors).
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::Response;
use http_body::Body;
use http_body_util::BodyExt;

use super::{AccessInfo, ConnInfo};
use crate::body::{BoxError, ProxyBody, ResponseBody};
use crate::error::{error_response, ProxyError, Result};
use crate::headers::{self, X_REQUEST_ID};
use crate::limit::InFlightPermit;
use crate::plugin_body::SharedSession;
use crate::plugins;
use crate::{Gateway, Snapshot};
use wasmgate_plugin_host::{Decision, RequestSession};

/// What the request-headers phase decided.
pub(super) enum RequestPhase {
    /// No active plugin on the route.
    NoPlugins,
    /// Go on to the upstream, to the hinted target if a plugin named one.
    Continue(RequestSession, Option<String>),
    /// A plugin answered.
    Answered(
        RequestSession,
        wasmgate_plugin_host::bindings::LocalResponse,
    ),
}

/// Runs the route's plugins (of `route`, in front of `upstream`) on the request head
/// (`parts.headers` get their changes); a fail-closed failure is the request's error. `record`
/// gets what each plugin did when the access log is on.
pub(super) async fn request_phase(
    gw: &Gateway,
    snap: &Snapshot,
    conn: &ConnInfo,
    parts: &mut http::request::Parts,
    (route, upstream): (&Arc<str>, Option<&Arc<crate::upstream::Upstream>>),
    request_id: &HeaderValue,
    record: Option<&mut wasmgate_plugin_host::PluginOutcomes>,
) -> Result<RequestPhase> {
    let Some(runtime) = gw.plugins() else {
        return Ok(RequestPhase::NoPlugins);
    };
    let client = snap.client_ip(conn.peer.ip(), &parts.headers);
    let Some(mut s) = runtime.session(route, || {
        plugins::request_state(parts, route, client, request_id, upstream)
    }) else {
        return Ok(RequestPhase::NoPlugins);
    };
    if record.as_ref().is_some_and(|r| r.timed) {
        s.time_calls();
    }
    let decision = s.request_headers().await;
    parts.headers = std::mem::take(&mut s.state.headers);
    if let Some(r) = record {
        s.record_outcomes(r);
    }
    match decision {
        Err(f) => {
            let rid = headers::request_id_str(request_id);
            tracing::warn!(plugin = %f.plugin, failure = %f.failure, request_id = rid, "plugin failed (fail-closed)");
            Err(ProxyError::Plugin(f.plugin))
        }
        Ok(Decision::Respond(local)) => Ok(RequestPhase::Answered(s, local)),
        Ok(Decision::Continue { upstream_hint }) => Ok(RequestPhase::Continue(s, upstream_hint)),
    }
}

/// Reads the whole request body (at most `max` bytes) through the plugins' `on-request-body`
/// — once per chunk, then once empty at the end — for plugins that need all of it before the
/// upstream request. `Ok(Err(local))` is a plugin's answer.
pub(super) async fn buffered_body_phase<B>(
    s: &mut RequestSession,
    body: B,
    max: u64,
) -> Result<std::result::Result<Bytes, wasmgate_plugin_host::bindings::LocalResponse>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut buf = bytes::BytesMut::new();
    let plugin_failed = |f: wasmgate_plugin_host::PluginFailure| ProxyError::Plugin(f.plugin);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ProxyError::BadRequest(format!("reading the request body: {}", e.into()))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() as u64 + data.len() as u64 > max {
            return Err(ProxyError::PayloadTooLarge(max));
        }
        if let Some(local) = s.request_body(&data, false).await.map_err(plugin_failed)? {
            return Ok(Err(local));
        }
        buf.extend_from_slice(&data);
    }
    if let Some(local) = s.request_body(&[], true).await.map_err(plugin_failed)? {
        return Ok(Err(local));
    }
    Ok(Ok(buf.freeze()))
}

/// A request's plugin session: owned by the request path, or shared with the body wrappers
/// when a plugin implements a body phase.
pub(super) enum Session {
    Owned(RequestSession),
    Shared(SharedSession),
}

impl Session {
    /// Whether a plugin still wants this response's body (a busy shared session: assume so).
    pub(super) fn wants_response_body(&self) -> bool {
        match self {
            Session::Owned(s) => s.wants_response_body(),
            Session::Shared(s) => s.try_lock().map_or(true, |s| s.wants_response_body()),
        }
    }

    /// The empty end-of-stream `on-response-body` call of a response without a body.
    pub(super) async fn end_of_response_body(
        &mut self,
    ) -> std::result::Result<(), wasmgate_plugin_host::PluginFailure> {
        match self {
            Session::Owned(s) => s.response_body(Vec::new(), true).await.map(drop),
            Session::Shared(s) => s
                .lock()
                .await
                .response_body(Vec::new(), true)
                .await
                .map(drop),
        }
    }

    /// The response-headers phase; `record` gets what each plugin did (for the access log).
    pub(super) async fn response_headers(
        &mut self,
        status: u16,
        headers: &mut http::HeaderMap,
        record: Option<&mut wasmgate_plugin_host::PluginOutcomes>,
    ) -> std::result::Result<(), wasmgate_plugin_host::PluginFailure> {
        let run = async |s: &mut RequestSession| {
            let r = s.response_headers(status, headers).await;
            if let Some(rec) = record {
                s.record_outcomes(rec);
            }
            r
        };
        match self {
            Session::Owned(s) => run(s).await,
            Session::Shared(s) => run(&mut *s.lock().await).await,
        }
    }
}

/// The gateway's own error for a request the plugins already saw (the upstream failed or timed
/// out, the body was too large): its response goes through their response phase like any
/// other, so CORS, security and rate-limit headers are on it too, as Envoy's local replies pass
/// its encoder filters. A plugin's own failure, or no session, gives the plain error.
pub(super) async fn error_answer(
    session: Option<Session>,
    e: ProxyError,
    request_id: &HeaderValue,
    permits: (Option<InFlightPermit>, Option<InFlightPermit>),
    info: &mut AccessInfo,
    snap: &Snapshot,
) -> Result<Response<ProxyBody>> {
    let Some(session) = session.filter(|_| !matches!(e, ProxyError::Plugin(_))) else {
        return Err(e);
    };
    info.error = Some(e.code());
    let resp = error_response(&e, headers::request_id_str(request_id));
    answer(Some(session), resp, request_id, permits, info.record(snap)).await
}

/// A local answer (a plugin's, or the gateway's own on a local route): run the response phase
/// on it, then send it.
pub(super) async fn local_answer(
    session: Option<Session>,
    local: wasmgate_plugin_host::bindings::LocalResponse,
    request_id: &HeaderValue,
    permits: (Option<InFlightPermit>, Option<InFlightPermit>),
    record: Option<&mut wasmgate_plugin_host::PluginOutcomes>,
) -> Result<Response<ProxyBody>> {
    let resp = plugins::local_response(local);
    answer(session, resp, request_id, permits, record).await
}

/// Sends a response the gateway made (a local answer or an error) through the plugins'
/// response phase; the session and permits live until its body is sent.
async fn answer(
    mut session: Option<Session>,
    resp: Response<ProxyBody>,
    request_id: &HeaderValue,
    permits: (Option<InFlightPermit>, Option<InFlightPermit>),
    record: Option<&mut wasmgate_plugin_host::PluginOutcomes>,
) -> Result<Response<ProxyBody>> {
    let (mut parts, body) = resp.into_parts();
    if let Some(session) = session.as_mut() {
        session
            .response_headers(parts.status.as_u16(), &mut parts.headers, record)
            .await
            .map_err(|f| ProxyError::Plugin(f.plugin))?;
    }
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    let guard = (permits.0, permits.1, session);
    let body = ResponseBody::new(body, None, guard).boxed_unsync();
    Ok(Response::from_parts(parts, body))
}
