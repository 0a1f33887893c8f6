//! The one error type of the data plane and the one function that turns it into a response.
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};
use crate::headers::X_REQUEST_ID;

/// Everything that makes the gateway answer a request itself with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route prefix matches the path.
    #[error("no route matches the request path")]
    RouteNotFound,
    /// The global in-flight cap is reached.
    #[error("too many requests in flight at the gateway")]
    DownstreamConcurrency,
    /// The upstream's in-flight cap is reached.
    #[error("too many requests in flight to upstream `{0}`")]
    UpstreamConcurrency(String),
    /// The connection to the target could not be opened.
    #[error("cannot connect to upstream `{upstream}` target {target}: {cause}")]
    UpstreamConnect {
        /// Upstream name.
        upstream: String,
        /// Target authority.
        target: String,
        /// Underlying error.
        cause: String,
    },
    /// The upstream failed after the connection was open (reset, malformed response).
    #[error("upstream `{upstream}` target {target} failed: {cause}")]
    Upstream {
        /// Upstream name.
        upstream: String,
        /// Target authority.
        target: String,
        /// Underlying error.
        cause: String,
    },
    /// No response headers before the request timeout.
    #[error("upstream `{upstream}` target {target} did not answer within {timeout_ms} ms")]
    UpstreamTimeout {
        /// Upstream name.
        upstream: String,
        /// Target authority.
        target: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The request body is larger than `server.max_body_bytes`.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(u64),
    /// The request headers are larger than `server.max_header_bytes`.
    #[error("request headers larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A credential is missing or wrong (the auth plugin).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is over its rate limit.
    #[error("{0}")]
    RateLimited(String),
    /// A plugin failed and its policy is fail-closed.
    #[error("plugin `{0}` failed")]
    Plugin(String),
    /// An admin endpoint is off (no admin token configured).
    #[error("{0}")]
    Forbidden(String),
    /// An admin resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The method is not supported on this endpoint.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The state store could not serve an admin operation.
    #[error("the state store is unavailable: {0}")]
    StateUnavailable(String),
}

/// Result alias of the data plane.
pub type Result<T> = std::result::Result<T, ProxyError>;

impl ProxyError {
    /// The stable error code clients match on (docs/api.md).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::RouteNotFound => "route_not_found",
            ProxyError::DownstreamConcurrency => "downstream_concurrency_exceeded",
            ProxyError::UpstreamConcurrency(_) => "upstream_concurrency_exceeded",
            ProxyError::UpstreamConnect { .. } => "upstream_connect_error",
            ProxyError::Upstream { .. } => "upstream_error",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::PayloadTooLarge(_) => "payload_too_large",
            ProxyError::HeadersTooLarge(_) => "request_header_fields_too_large",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::Plugin(_) => "plugin_error",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::NotFound(_) => "not_found",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::StateUnavailable(_) => "state_unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::RouteNotFound => StatusCode::NOT_FOUND,
            ProxyError::DownstreamConcurrency | ProxyError::UpstreamConcurrency(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamConnect { .. } | ProxyError::Upstream { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Plugin(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::NotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::StateUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What the client is told: never addresses, causes or secrets.
    fn public_message(&self) -> String {
        match self {
            ProxyError::UpstreamConnect { upstream, .. } => {
                format!("cannot connect to upstream `{upstream}`")
            }
            ProxyError::Upstream { upstream, .. } => {
                format!("upstream `{upstream}` failed to answer")
            }
            ProxyError::UpstreamTimeout {
                upstream,
                timeout_ms,
                ..
            } => format!("upstream `{upstream}` did not answer within {timeout_ms} ms"),
            other => other.to_string(),
        }
    }
}

/// The one place an error becomes a response: `{"error","message","request_id"}` as JSON,
/// with `X-Request-ID`. The cause is logged here, once; the client gets the safe message.
pub fn error_response(err: &ProxyError, request_id: &str) -> Response<ProxyBody> {
    let status = err.status();
    if status.is_server_error() {
        tracing::warn!(request_id, code = err.code(), cause = %err, "request failed");
    } else {
        tracing::debug!(request_id, code = err.code(), cause = %err, "request refused");
    }
    let body = serde_json::json!({
        "error": err.code(),
        "message": err.public_message(),
        "request_id": request_id,
    });
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    if let ProxyError::Unauthorized(_) = err {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_shape_is_json_with_code_and_request_id() {
        let err = ProxyError::UpstreamConnect {
            upstream: "llm".into(),
            target: "10.0.0.7:8000".into(),
            cause: "refused".into(),
        };
        let resp = error_response(&err, "rid-1");
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-request-id"], "rid-1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "upstream_connect_error");
        assert_eq!(v["request_id"], "rid-1");
        assert!(
            !v["message"].as_str().unwrap().contains("10.0.0.7"),
            "no addresses leak"
        );
    }
}
