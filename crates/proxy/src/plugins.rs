//! Glue between the request path and the plugin runtime: what plugins see of a request, and
//! how their local answers become responses.
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use wasmgate_plugin_host::bindings::LocalResponse;
use wasmgate_plugin_host::RequestState;

use crate::body::{full, ProxyBody};

/// Builds what plugins see of a request. `headers` are moved, not copied.
pub(crate) fn request_state(
    parts: &mut http::request::Parts,
    route: &str,
    client_addr: std::net::IpAddr,
    request_id: &str,
) -> RequestState {
    RequestState {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        client_addr: client_addr.to_string(),
        route: route.to_string(),
        request_id: request_id.to_string(),
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
