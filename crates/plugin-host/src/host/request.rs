//! The request an instance is serving ([`RequestState`]), what a plugin sees of the route's
//! upstream, and the `request` imports that read and change them.
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::{HostState, QueueMode};
use crate::bindings::wasmgate::plugin::request;
use crate::bindings::Header;

/// The request (and response) an instance is serving. Fields are cheap clones of what the
/// proxy already has (no formatting, no copies); the `request` imports format on demand.
#[derive(Debug, Default)]
pub struct RequestState {
    /// Method.
    pub method: http::Method,
    /// Path and query as the client sent them.
    pub uri: http::Uri,
    /// Client IP.
    pub client_addr: Option<std::net::IpAddr>,
    /// Route name.
    pub route: Arc<str>,
    /// Request id.
    pub request_id: Option<HeaderValue>,
    /// Request headers (moved in and out, not copied).
    pub headers: HeaderMap,
    /// Properties shared between plugins (`identity`, `tenant`, ...).
    pub properties: Properties,
    /// Response status, in response phases.
    pub response_status: Option<u16>,
    /// Response headers, in response phases.
    pub response_headers: HeaderMap,
    /// Headers queued for the response by `add-response-header(s)`.
    pub queued_response_headers: Vec<QueuedHeader>,
    /// The route's upstream, for the `upstream` import (router plugins).
    pub upstream: Option<Arc<dyn UpstreamView>>,
    /// Set by `skip-response-body` during a call; the session moves it to the plugin's slot.
    pub skip_response_body: bool,
}

/// A request's properties: a few keys (`identity`, `tenant`...) searched in order, which costs
/// less than hashing them on every lookup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Properties(Vec<(String, String)>);

impl Properties {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.0.push((key, value));
                None
            }
        }
    }

    /// How many keys are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every key and value, in the order they were first set.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl std::ops::Index<&str> for Properties {
    type Output = String;
    fn index(&self, key: &str) -> &String {
        self.get(key)
            .unwrap_or_else(|| panic!("no property `{key}`"))
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// A response header queued by `add-response-header(s)`, set when the response head is known.
#[derive(Debug, Clone)]
pub struct QueuedHeader {
    /// Name.
    pub name: HeaderName,
    /// Value.
    pub value: HeaderValue,
    /// What it does to a header of that name already on the response.
    pub mode: QueueMode,
}

impl QueuedHeader {
    /// Applies the header to a response's headers.
    pub fn apply(self, headers: &mut HeaderMap) {
        match self.mode {
            QueueMode::Replace => {
                headers.insert(self.name, self.value);
            }
            QueueMode::KeepExisting => {
                if !headers.contains_key(&self.name) {
                    headers.insert(self.name, self.value);
                }
            }
            QueueMode::Append => {
                headers.append(self.name, self.value);
            }
        }
    }
}

/// What the `upstream` import reports of a route's upstream: implemented by the proxy's
/// upstreams (live health and in-flight counts).
pub trait UpstreamView: Send + Sync + std::fmt::Debug {
    /// The targets, in configuration order.
    fn targets(&self) -> Vec<TargetView>;

    /// Calls `f` with each target, in configuration order, without copying them (what a
    /// bundle run packs into the request head).
    fn each_target(&self, f: &mut dyn FnMut(TargetRef<'_>)) {
        for t in self.targets() {
            f(TargetRef {
                address: &t.address,
                healthy: t.healthy,
                in_flight: t.in_flight,
                region: t.region.as_deref(),
                workers: &t.workers,
            });
        }
    }
}

/// One upstream target, borrowed ([`UpstreamView::each_target`]).
#[derive(Debug, Clone, Copy)]
pub struct TargetRef<'a> {
    /// `host:port`.
    pub address: &'a str,
    /// Not ejected.
    pub healthy: bool,
    /// Requests in flight to it.
    pub in_flight: u32,
    /// Region tag.
    pub region: Option<&'a str>,
    /// GPU worker ids behind it.
    pub workers: &'a [String],
}

/// One upstream target as a router plugin sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetView {
    /// `host:port`.
    pub address: String,
    /// Not ejected.
    pub healthy: bool,
    /// Requests in flight to it.
    pub in_flight: u32,
    /// Region tag.
    pub region: Option<String>,
    /// GPU worker ids behind it.
    pub workers: Vec<String>,
}

impl RequestState {
    /// The tenant property, if set.
    pub fn tenant(&self) -> Option<&str> {
        self.properties.get("tenant").map(String::as_str)
    }
}

/// A header name from a plugin. The names plugins use are few and used on every request
/// (`x-gateway-identity`, `x-ratelimit-limit`...), and a name that is not a standard one costs
/// an allocation to parse: the names parsed on this thread are kept (up to 256), and a kept
/// one is a reference-count increment. Names are bytes: a bundle member's come straight from
/// its packed effects, and `HeaderName` checks them itself (no UTF-8 check first).
fn header_name(name: &[u8]) -> Option<HeaderName> {
    thread_local! {
        static NAMES: std::cell::RefCell<std::collections::HashMap<Box<[u8]>, HeaderName, foldhash::fast::RandomState>> =
            std::cell::RefCell::new(Default::default());
    }
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some(n) = names.get(name) {
            return Some(n.clone());
        }
        let n = HeaderName::from_bytes(name).ok()?;
        if names.len() >= 256 {
            names.clear();
        }
        names.insert(name.into(), n.clone());
        Some(n)
    })
}

fn get(map: &HeaderMap, name: &str) -> Option<String> {
    map.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Every header with a UTF-8 value, repeated ones included.
fn all(map: &HeaderMap) -> Vec<Header> {
    map.iter()
        .filter_map(|(k, v)| {
            v.to_str().ok().map(|v| Header {
                name: k.as_str().to_string(),
                value: v.to_string(),
            })
        })
        .collect()
}

/// Sets a header (invalid names or values are ignored). `HeaderValue::from_bytes` accepts
/// exactly the bytes `from_str` does.
fn set(map: &mut HeaderMap, name: &[u8], value: &[u8]) {
    if let (Some(n), Ok(v)) = (header_name(name), HeaderValue::from_bytes(value)) {
        map.insert(n, v);
    }
}

impl HostState {
    /// Queues a response header (invalid names or values are ignored).
    pub(crate) fn queue_response_header(&mut self, name: &[u8], value: &[u8], mode: QueueMode) {
        if let (Some(name), Ok(value)) = (header_name(name), HeaderValue::from_bytes(value)) {
            self.req
                .queued_response_headers
                .push(QueuedHeader { name, value, mode });
        }
    }

    /// Sets a request header, replacing any value (invalid names or values are ignored).
    pub(crate) fn set_request_header(&mut self, name: &[u8], value: &[u8]) {
        set(&mut self.req.headers, name, value);
    }

    /// Removes a request header (an invalid name removes nothing). `HeaderMap` parses a `&str`
    /// name on the stack: no interning (a name only removed need not be kept), one hash.
    pub(crate) fn remove_request_header(&mut self, name: &[u8]) {
        if let Ok(name) = std::str::from_utf8(name) {
            self.req.headers.remove(name);
        }
    }

    /// Adds to one of the plugin's counters, when `metrics` is granted.
    pub(crate) fn counter_add(&mut self, name: &[u8], value: u64) {
        if self.grants.metrics {
            self.grants.series.counter_add(name, value);
        }
    }

    /// Records in one of the plugin's histograms, when `metrics` is granted.
    pub(crate) fn histogram_observe(&mut self, name: &str, value: f64) {
        if self.grants.metrics {
            self.grants.series.observe(name, value);
        }
    }
}

impl request::Host for HostState {
    fn method(&mut self) -> String {
        self.req.method.as_str().to_string()
    }
    fn path(&mut self) -> String {
        self.req.uri.path().to_string()
    }
    fn query(&mut self) -> Option<String> {
        self.req.uri.query().map(str::to_string)
    }
    fn client_addr(&mut self) -> String {
        self.req
            .client_addr
            .map(|a| a.to_string())
            .unwrap_or_default()
    }
    fn route(&mut self) -> String {
        self.req.route.to_string()
    }
    fn tenant(&mut self) -> Option<String> {
        self.req.tenant().map(str::to_string)
    }
    fn request_id(&mut self) -> String {
        self.req
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
    fn get_header(&mut self, name: String) -> Option<String> {
        get(&self.req.headers, &name)
    }
    fn get_headers(&mut self) -> Vec<Header> {
        all(&self.req.headers)
    }
    fn set_header(&mut self, name: String, value: String) {
        self.set_request_header(name.as_bytes(), value.as_bytes());
    }
    fn remove_header(&mut self, name: String) {
        self.remove_request_header(name.as_bytes());
    }
    fn get_property(&mut self, key: String) -> Option<String> {
        self.req.properties.get(&key).cloned()
    }
    fn set_property(&mut self, key: String, value: String) {
        self.req.properties.insert(key, value);
    }
    fn response_status(&mut self) -> Option<u16> {
        self.req.response_status
    }
    fn get_response_header(&mut self, name: String) -> Option<String> {
        get(&self.req.response_headers, &name)
    }
    fn get_response_headers(&mut self) -> Vec<Header> {
        all(&self.req.response_headers)
    }
    fn set_response_header(&mut self, name: String, value: String) {
        set(
            &mut self.req.response_headers,
            name.as_bytes(),
            value.as_bytes(),
        );
    }
    fn skip_response_body(&mut self) {
        self.req.skip_response_body = true;
    }
    fn add_response_header(&mut self, name: String, value: String) {
        self.queue_response_header(name.as_bytes(), value.as_bytes(), QueueMode::Replace);
    }
    fn add_response_headers(&mut self, headers: Vec<Header>, mode: QueueMode) {
        for h in &headers {
            self.queue_response_header(h.name.as_bytes(), h.value.as_bytes(), mode);
        }
    }
    fn remove_response_header(&mut self, name: String) {
        self.req.response_headers.remove(name.as_str());
    }
}
