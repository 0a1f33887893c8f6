//! The worker list endpoint: a local route the plugins run on.
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response};

use super::phases::{local_answer, request_phase, RequestPhase, Session};
use super::ConnInfo;
use crate::body::ProxyBody;
use crate::error::{ProxyError, Result};
use crate::headers::{self, remove_hop_by_hop};
use crate::limit::InFlightPermit;
use crate::{Gateway, Snapshot};

/// The route name plugins see on the worker list endpoint.
pub const WORKERS_ROUTE: &str = "workers";

/// The worker list's body: `{"total": n, "workers": [...]}`.
#[derive(serde::Serialize)]
struct WorkerList<'a> {
    total: usize,
    workers: &'a [wasmgate_plugin_host::state::Worker],
}

pub(super) static WORKERS_ROUTE_NAME: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from(WORKERS_ROUTE));

/// `GET` the worker list (`workers.endpoint`, `/api/v1/workers` by default): the active GPU
/// workers from the registry. It is a local route named `workers`: the plugins of every route
/// (auth, rate limits) run on it as on any other, then the gateway answers instead of an
/// upstream.
pub(super) async fn workers_endpoint<B>(
    gw: &Gateway,
    snap: &Snapshot,
    req: Request<B>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    permit: Option<InFlightPermit>,
    mut record: Option<&mut wasmgate_plugin_host::PluginOutcomes>,
) -> Result<Response<ProxyBody>> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return Err(ProxyError::MethodNotAllowed);
    }
    let (mut parts, _body) = req.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    headers::remove_gateway_claims(&mut parts.headers);
    let route = &*WORKERS_ROUTE_NAME;
    let rec = record.as_deref_mut();
    let phase = request_phase(gw, snap, conn, &mut parts, (route, None), request_id, rec).await?;
    let session = match phase {
        RequestPhase::Answered(s, local) => {
            let s = Some(Session::Owned(s));
            return local_answer(s, local, request_id, (permit, None), record).await;
        }
        RequestPhase::Continue(s, _) => Some(Session::Owned(s)),
        RequestPhase::NoPlugins => None,
    };
    let workers = gw.services().workers.active();
    // Serialized from the registry's structs, with no `serde_json::Value` tree in between.
    let list = WorkerList {
        total: workers.len(),
        workers: &workers,
    };
    // A struct of strings, numbers and a JSON value: serializing it cannot fail.
    let body = serde_json::to_vec(&list).unwrap_or_default();
    let local = wasmgate_plugin_host::bindings::LocalResponse {
        status: 200,
        headers: vec![
            wasmgate_plugin_host::bindings::Header {
                name: "content-type".into(),
                value: "application/json".into(),
            },
            wasmgate_plugin_host::bindings::Header {
                name: "cache-control".into(),
                value: "no-store".into(),
            },
        ],
        body,
    };
    local_answer(session, local, request_id, (permit, None), record).await
}
