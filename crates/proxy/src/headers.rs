//! Header hygiene: hop-by-hop removal (RFC 9110 §7.6.1), request ids, header size.
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Request-ID`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `X-Gateway-Identity`: who the caller is, as the gateway's auth established it.
pub const X_GATEWAY_IDENTITY: HeaderName = HeaderName::from_static("x-gateway-identity");

/// Removes what only the gateway may say about a request (`X-Gateway-Identity`), so a client
/// cannot claim an identity: only a plugin (auth) sets it again, upstreams can trust it.
pub fn remove_gateway_claims(headers: &mut HeaderMap) {
    headers.remove(X_GATEWAY_IDENTITY);
}

/// Headers that describe one connection and never cross the proxy (`Proxy-Connection` is not
/// hop-by-hop by name, but connection-specific in practice).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Removes `Connection`, every header it names, and the fixed hop-by-hop set.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names, comparisons without hashing,
    // costs a fraction of the nine removals (each hashes its name; together ~2 500
    // instructions a proxied request, both directions, docs/performance.md).
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// True for an incoming request id worth keeping: 1–128 characters of `[A-Za-z0-9._:-]`
/// (UUIDs and the usual trace-style ids pass; anything that could inject into logs does not).
pub fn is_valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The request's id: the incoming `X-Request-ID` when valid (shared, not copied), else a new
/// UUID v4.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(X_REQUEST_ID) {
        Some(v) if is_valid_request_id(v.as_bytes()) => v.clone(),
        _ => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            HeaderValue::from_str(s).expect("a UUID is a valid header value")
        }
    }
}

/// A request id as text (valid ids are ASCII by construction).
pub fn request_id_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("")
}

/// Sum of header name and value lengths, as a client would have sent them.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, X-Secret-Hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_stripped() {
        // The fast path skips the removals when no name is hop-by-hop: each one alone, among
        // ordinary headers, must still be found.
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "example".parse().unwrap());
            h.insert(name.clone(), "x".parse().unwrap());
            h.insert("x-keep", "yes".parse().unwrap());
            remove_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} kept: {h:?}");
            assert_eq!(h.len(), 2, "{h:?}");
        }
        // `Connection` alone names what goes with it.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        // Nothing hop-by-hop: nothing removed.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "example".parse().unwrap());
        h.append("x-many", "1".parse().unwrap());
        h.append("x-many", "2".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3, "{h:?}");
    }

    #[test]
    fn request_ids() {
        assert!(is_valid_request_id(b"550e8400-e29b-41d4-a716-446655440000"));
        assert!(is_valid_request_id(b"req_01:abc.def"));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(b"has space"));
        assert!(!is_valid_request_id(&[b'a'; 129]));
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "bad\tid".parse().unwrap());
        let id = request_id(&h);
        assert!(uuid::Uuid::parse_str(request_id_str(&id)).is_ok());
        h.insert(X_REQUEST_ID, "keep-me-1".parse().unwrap());
        assert_eq!(request_id(&h), "keep-me-1");
    }
}
