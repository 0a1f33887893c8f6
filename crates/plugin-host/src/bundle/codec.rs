//! The packed request head the host passes to a bundle run, and the packed effects each member
//! commits (the guest side is `guest-plugins/sdk/src/bundle.rs`). Little-endian; `str` is a
//! u32 length and UTF-8 bytes.
//!
//! The effects are applied with the same functions as the `request` and `metrics` imports, so
//! a member changes a request exactly as the same plugin run alone would.
use wasmtime::format_err;

use crate::bindings::wasmgate::plugin::types::{Header, LocalResponse};
use crate::bindings::Action;
use crate::host::{HostState, QueueMode, RequestState};

/// Op codes of the effects (`guest-plugins/sdk/src/bundle.rs`, `op`).
mod op {
    pub const SET_HEADER: u8 = 1;
    pub const REMOVE_HEADER: u8 = 2;
    pub const SET_PROPERTY: u8 = 3;
    pub const QUEUE_RESPONSE_HEADER: u8 = 4;
    pub const SKIP_RESPONSE_BODY: u8 = 5;
    pub const COUNTER_ADD: u8 = 6;
    pub const HISTOGRAM_OBSERVE: u8 = 7;
    pub const CONTINUE: u8 = 16;
    pub const CONTINUE_TO: u8 = 17;
    pub const RESPOND: u8 = 18;
}

/// The length that marks a header value plugins do not see (not visible ASCII).
const HIDDEN: u32 = u32::MAX;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Packs what the `request` import would tell a plugin about `state` in a request phase:
/// `str method, str path, u8 has_query [str query], u8 ip (0, 4, 6) [octets], str route,
/// str request_id, u32 n {str name, str value | u32::MAX}, u32 n {str key, str value}, u8
/// has_upstream [u32 n {str address, u8 healthy, u32 in_flight, u8 has_region [str region],
/// u32 n {str worker}}]`. `out` is cleared first; its capacity, kept from run to run in the
/// instance, is reused.
pub fn encode_head(state: &RequestState, out: &mut Vec<u8>) {
    out.clear();
    put_str(out, state.method.as_str());
    put_str(out, state.uri.path());
    match state.uri.query() {
        Some(q) => {
            out.push(1);
            put_str(out, q);
        }
        None => out.push(0),
    }
    match state.client_addr {
        None => out.push(0),
        Some(std::net::IpAddr::V4(ip)) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        Some(std::net::IpAddr::V6(ip)) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    put_str(out, &state.route);
    put_str(
        out,
        state
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    );
    out.extend_from_slice(&(state.headers.len() as u32).to_le_bytes());
    for (name, value) in &state.headers {
        put_str(out, name.as_str());
        match value.to_str() {
            Ok(v) => put_str(out, v),
            Err(_) => out.extend_from_slice(&HIDDEN.to_le_bytes()),
        }
    }
    out.extend_from_slice(&(state.properties.len() as u32).to_le_bytes());
    for (k, v) in &state.properties {
        put_str(out, k);
        put_str(out, v);
    }
    // The route's targets, as the `upstream` import reports them (a router member reads them
    // from here: no host call, no list lowered into the instance).
    let Some(upstream) = &state.upstream else {
        out.push(0);
        return;
    };
    out.push(1);
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut n = 0u32;
    upstream.each_target(&mut |t| {
        n += 1;
        put_str(out, t.address);
        out.push(t.healthy as u8);
        out.extend_from_slice(&t.in_flight.to_le_bytes());
        match t.region {
            Some(r) => {
                out.push(1);
                put_str(out, r);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(t.workers.len() as u32).to_le_bytes());
        for w in t.workers {
            put_str(out, w);
        }
    });
    out[count_at..count_at + 4].copy_from_slice(&n.to_le_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> wasmtime::Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(format_err!("bundle effects end early"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> wasmtime::Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> wasmtime::Result<u16> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into()?))
    }
    fn u32(&mut self) -> wasmtime::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into()?))
    }
    fn u64(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into()?))
    }
    /// A `str` as bytes: header names and values (which `http` checks itself) and metric
    /// names (checked against `[a-z0-9_]`) need no UTF-8 check first.
    fn raw(&mut self) -> wasmtime::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.bytes(n)
    }
    fn str(&mut self) -> wasmtime::Result<&'a str> {
        std::str::from_utf8(self.raw()?).map_err(|_| format_err!("bundle effects: not UTF-8"))
    }
}

/// What a member's effects ended with.
pub(crate) struct Committed {
    pub action: Action,
    pub skip_response_body: bool,
}

/// Applies a member's `effects` to the request in `host` (its grants are the member's), as the
/// `request` and `metrics` imports would, and returns its action. Malformed effects are a bug
/// of the bundle: an error (the call traps).
pub(crate) fn apply_effects(host: &mut HostState, effects: &[u8]) -> wasmtime::Result<Committed> {
    let mut r = Reader { buf: effects };
    let mut skip_response_body = false;
    loop {
        match r.u8()? {
            op::SET_HEADER => {
                let (name, value) = (r.raw()?, r.raw()?);
                host.set_request_header(name, value);
            }
            op::REMOVE_HEADER => host.remove_request_header(r.raw()?),
            op::SET_PROPERTY => {
                let (k, v) = (r.str()?, r.str()?);
                host.req.properties.insert(k.to_string(), v.to_string());
            }
            op::QUEUE_RESPONSE_HEADER => {
                let mode = match r.u8()? {
                    0 => QueueMode::Replace,
                    1 => QueueMode::KeepExisting,
                    2 => QueueMode::Append,
                    m => return Err(format_err!("bundle effects: queue mode {m}")),
                };
                let (name, value) = (r.raw()?, r.raw()?);
                host.queue_response_header(name, value, mode);
            }
            op::SKIP_RESPONSE_BODY => skip_response_body = true,
            op::COUNTER_ADD => {
                let name = r.raw()?;
                let value = r.u64()?;
                host.counter_add(name, value);
            }
            op::HISTOGRAM_OBSERVE => {
                let name = r.str()?;
                let value = f64::from_bits(r.u64()?);
                host.histogram_observe(name, value);
            }
            op::CONTINUE => break finish(r, Action::Continue, skip_response_body),
            op::CONTINUE_TO => {
                let target = r.str()?.to_string();
                break finish(r, Action::ContinueTo(target), skip_response_body);
            }
            op::RESPOND => {
                let status = r.u16()?;
                let n = r.u32()? as usize;
                let mut headers = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    let (name, value) = (r.str()?, r.str()?);
                    headers.push(Header {
                        name: name.to_string(),
                        value: value.to_string(),
                    });
                }
                let len = r.u32()? as usize;
                let body = r.bytes(len)?.to_vec();
                let action = Action::Respond(LocalResponse {
                    status,
                    headers,
                    body,
                });
                break finish(r, action, skip_response_body);
            }
            other => return Err(format_err!("bundle effects: unknown op {other}")),
        }
    }
}

fn finish(r: Reader<'_>, action: Action, skip: bool) -> wasmtime::Result<Committed> {
    if !r.buf.is_empty() {
        return Err(format_err!("bundle effects: bytes after the action"));
    }
    Ok(Committed {
        action,
        skip_response_body: skip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(out: &mut Vec<u8>, s: &str) {
        put_str(out, s)
    }

    fn host() -> HostState {
        let (services, _) = crate::HostServices::in_memory("gateway:");
        let grants = std::sync::Arc::new(crate::host::Grants::new(
            "m",
            None,
            &services,
            &["metrics".to_string()],
            &crate::PluginSettings::default(),
        ));
        HostState::new(grants, services, 1 << 20)
    }

    #[test]
    fn effects_are_applied_as_the_imports_would() {
        let mut h = host();
        let mut e = vec![op::SET_HEADER];
        put(&mut e, "X-Set");
        put(&mut e, "v");
        e.push(op::SET_HEADER);
        put(&mut e, "bad name");
        put(&mut e, "ignored");
        e.push(op::SET_PROPERTY);
        put(&mut e, "identity");
        put(&mut e, "key:1");
        e.extend([op::QUEUE_RESPONSE_HEADER, 2]);
        put(&mut e, "vary");
        put(&mut e, "Origin");
        e.push(op::COUNTER_ADD);
        put(&mut e, "hits");
        e.extend(3u64.to_le_bytes());
        e.push(op::SKIP_RESPONSE_BODY);
        e.push(op::CONTINUE_TO);
        put(&mut e, "10.0.0.1:80");
        let done = apply_effects(&mut h, &e).unwrap();
        assert_eq!(h.req.headers["x-set"], "v");
        assert_eq!(h.req.headers.len(), 1);
        assert_eq!(h.req.properties["identity"], "key:1");
        assert_eq!(h.req.queued_response_headers[0].mode, QueueMode::Append);
        assert_eq!(h.grants.series.counter("hits"), 3);
        assert!(done.skip_response_body);
        assert!(matches!(done.action, Action::ContinueTo(t) if t == "10.0.0.1:80"));
    }

    #[test]
    fn malformed_effects_are_an_error() {
        let mut h = host();
        for bad in [
            vec![],                           // no action
            vec![op::CONTINUE, 0],            // bytes after the action
            vec![99],                         // an unknown op
            vec![op::SET_HEADER, 9, 0, 0, 0], // a string past the end
            vec![
                op::QUEUE_RESPONSE_HEADER,
                7,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                op::CONTINUE,
            ],
        ] {
            assert!(apply_effects(&mut h, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_head_holds_what_the_request_import_tells() {
        let mut state = RequestState {
            method: http::Method::PUT,
            uri: "/a?b=c".parse().unwrap(),
            route: "r".into(),
            client_addr: Some([192, 0, 2, 1].into()),
            ..Default::default()
        };
        state.headers.insert("x-a", "1".parse().unwrap());
        state.headers.insert(
            "x-bin",
            http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        state.properties.insert("tenant".into(), "t".into());
        let mut out = Vec::new();
        encode_head(&state, &mut out);
        let mut expected = Vec::new();
        put(&mut expected, "PUT");
        put(&mut expected, "/a");
        expected.push(1);
        put(&mut expected, "b=c");
        expected.extend([4, 192, 0, 2, 1]);
        put(&mut expected, "r");
        put(&mut expected, "");
        expected.extend(2u32.to_le_bytes());
        put(&mut expected, "x-a");
        put(&mut expected, "1");
        put(&mut expected, "x-bin");
        expected.extend(HIDDEN.to_le_bytes());
        expected.extend(1u32.to_le_bytes());
        put(&mut expected, "tenant");
        put(&mut expected, "t");
        expected.push(0);
        assert_eq!(out, expected);
    }
}
