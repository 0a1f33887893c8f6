//! Glue between the request path and the plugin runtime: what plugins see of a request, and
//! how their local answers become responses.
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use wasmgate_plugin_host::bindings::LocalResponse;
use wasmgate_plugin_host::RequestState;

use crate::body::{full, ProxyBody};

/// Builds what plugins see of a request: cheap clones (no formatting), and the headers are
/// moved, not copied.
pub(crate) fn request_state(
    parts: &mut http::request::Parts,
    route: &std::sync::Arc<str>,
    client_addr: std::net::IpAddr,
    request_id: &HeaderValue,
    upstream: Option<&std::sync::Arc<crate::upstream::Upstream>>,
) -> RequestState {
    RequestState {
        upstream: upstream
            .map(|u| u.clone() as std::sync::Arc<dyn wasmgate_plugin_host::UpstreamView>),
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        client_addr: Some(client_addr),
        route: route.clone(),
        request_id: Some(request_id.clone()),
        headers: std::mem::take(&mut parts.headers),
        ..Default::default()
    }
}

/// A plugin's local answer as a response (invalid header names or values are dropped; an
/// invalid status becomes 500).
pub(crate) fn local_response(r: LocalResponse) -> Response<ProxyBody> {
    let mut headers = HeaderMap::new();
    for h in r.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            headers.append(n, v);
        }
    }
    let mut resp = Response::new(full(r.body));
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *resp.headers_mut() = headers;
    resp
}
