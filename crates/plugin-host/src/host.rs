//! The per-instance host state (`Store` data) and the host side of every import.
//!
//! One instance serves one request at a time, so the request it is serving lives in the
//! store (moved in before a phase call and out after: headers are never copied), and the
//! `request` imports read and change it directly.
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use crate::bindings::wasmgate::plugin::request::QueueMode;
use crate::bindings::wasmgate::plugin::{
    clock, crypto, kv, log, metrics, request, types, upstream, workers,
};
use crate::bindings::{GatewayPlugin, Header};
use crate::services::HostServices;
use std::time::Duration;
use wasmgate_state::{Store, StoreError, WindowKind};

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

/// Who an instance belongs to and what it may do.
#[derive(Debug, Clone)]
pub struct Grants {
    /// Plugin name.
    pub plugin: String,
    /// Tenant the instance serves (`None` = no tenant).
    pub tenant: Option<String>,
    /// `kv` granted.
    pub kv: bool,
    /// `workers` granted.
    pub workers: bool,
    /// `metrics` granted.
    pub metrics: bool,
    /// Prefix of every key this instance writes (its namespace).
    pub kv_prefix: String,
    /// Absolute keys outside the namespace it may read (`kv_read` patterns).
    pub kv_read: Vec<String>,
    /// The plugin's metrics.
    pub series: Arc<crate::services::PluginSeries>,
}

impl Grants {
    /// Builds the grants and the key namespace: `<prefix><namespace>:` or
    /// `<prefix>t:<tenant>:<namespace>:` (the namespace is the plugin's name unless its
    /// manifest sets one).
    pub fn new(
        plugin: &str,
        tenant: Option<&str>,
        services: &HostServices,
        caps: &[String],
        settings: &crate::PluginSettings,
    ) -> Grants {
        let key_prefix = &services.key_prefix;
        let has = |c: &str| caps.iter().any(|x| x == c);
        let ns = settings.namespace.as_deref().unwrap_or(plugin);
        let kv_prefix = match tenant {
            Some(t) => format!("{key_prefix}t:{t}:{ns}:"),
            None => format!("{key_prefix}{ns}:"),
        };
        Grants {
            plugin: plugin.to_string(),
            tenant: tenant.map(str::to_string),
            kv: has("kv"),
            workers: has("workers"),
            metrics: has("metrics"),
            kv_prefix,
            kv_read: settings.kv_read.clone(),
            series: services.metrics.series(plugin),
        }
    }
}

/// Tracks linear memory growth against the plugin's cap and remembers the high-water mark.
pub struct MemoryLimiter {
    limits: StoreLimits,
    /// Largest memory size reached, in bytes.
    pub peak_bytes: usize,
    /// Set when a growth was refused (an out-of-memory kill).
    pub refused: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.limits.memory_growing(current, desired, maximum)?;
        if ok {
            self.peak_bytes = self.peak_bytes.max(desired);
        } else {
            self.refused = true;
        }
        Ok(ok)
    }
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
    fn instances(&self) -> usize {
        self.limits.instances()
    }
    fn tables(&self) -> usize {
        self.limits.tables()
    }
    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The data of every plugin `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory cap and high-water mark.
    pub limiter: MemoryLimiter,
    /// Identity and capabilities.
    pub grants: Arc<Grants>,
    /// The request being served (empty between requests).
    pub req: Box<RequestState>,
    services: Arc<HostServices>,
    /// Time spent waiting on the state store since the call began: it does not count
    /// against the CPU budget (the epoch deadline is extended by it).
    pub io_wait: std::time::Duration,
    /// In a built-in bundle's instance: each member's grants (`grants` is the running
    /// member's).
    pub(crate) member_grants: Vec<Arc<Grants>>,
    /// The bundle run in progress.
    pub(crate) bundle: Option<crate::bundle::BundleRun>,
    /// In a built-in bundle's instance: the packed request head of its last run, the buffer
    /// reused by the next (an instance serves one request at a time).
    pub(crate) head: Vec<u8>,
}

impl HostState {
    /// State for a new instance: a virtual WASI with nothing in it (no environment, no
    /// arguments, no preopened directories, no sockets, no name lookups), and the memory cap.
    pub fn new(grants: Arc<Grants>, services: Arc<HostServices>, memory_bytes: usize) -> HostState {
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(memory_bytes)
                    .instances(256)
                    .tables(256)
                    .memories(64)
                    .build(),
                peak_bytes: 0,
                refused: false,
            },
            grants,
            req: Box::default(),
            services,
            io_wait: std::time::Duration::ZERO,
            member_grants: Vec::new(),
            bundle: None,
            head: Vec::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Adds every import to the linker: the virtual WASI (what Rust std and Python guests import)
/// and the `gateway-plugin` world's capabilities.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    GatewayPlugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    // What only the built-in bundle imports (a plugin that imports it is refused: the
    // `gateway-plugin` world does not have it, see `inspect`).
    crate::bindings::bundle::wasmgate::plugin::bundle::add_to_linker::<HostState, HasSelf<HostState>>(
        linker,
        |s| s,
    )
}

/// A header name from a plugin. The names plugins use are few and used on every request
/// (`x-gateway-identity`, `x-ratelimit-limit`...), and a name that is not a standard one costs
/// an allocation to parse: the names parsed on this thread are kept (up to 256), and a kept
/// one is a reference-count increment.
fn header_name(name: &str) -> Option<HeaderName> {
    thread_local! {
        static NAMES: std::cell::RefCell<std::collections::HashMap<Box<str>, HeaderName, foldhash::fast::RandomState>> =
            std::cell::RefCell::new(Default::default());
    }
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some(n) = names.get(name) {
            return Some(n.clone());
        }
        let n = HeaderName::from_bytes(name.as_bytes()).ok()?;
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

fn set(map: &mut HeaderMap, name: &str, value: &str) {
    if let (Some(n), Ok(v)) = (header_name(name), HeaderValue::from_str(value)) {
        map.insert(n, v);
    }
}

impl types::Host for HostState {}

impl HostState {
    /// Queues a response header (invalid names or values are ignored).
    pub(crate) fn queue_response_header(&mut self, name: &str, value: &str, mode: QueueMode) {
        if let (Some(name), Ok(value)) = (header_name(name), HeaderValue::from_str(value)) {
            self.req
                .queued_response_headers
                .push(QueuedHeader { name, value, mode });
        }
    }

    /// Sets a request header, replacing any value (invalid names or values are ignored).
    pub(crate) fn set_request_header(&mut self, name: &str, value: &str) {
        set(&mut self.req.headers, name, value);
    }

    /// Removes a request header (an invalid name removes nothing).
    pub(crate) fn remove_request_header(&mut self, name: &str) {
        self.req.headers.remove(name);
    }

    /// Adds to one of the plugin's counters, when `metrics` is granted.
    pub(crate) fn counter_add(&mut self, name: &str, value: u64) {
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

impl crate::bindings::bundle::wasmgate::plugin::bundle::Host for HostState {
    fn commit(&mut self, member: u32, effects: Vec<u8>) -> wasmtime::Result<bool> {
        match self.bundle.as_ref() {
            Some(run) if run.current == Some(member) => {}
            Some(run) => wasmtime::bail!(
                "bundle member {member} committed while member {:?} was running",
                run.current
            ),
            None => wasmtime::bail!("bundle commit outside a run"),
        }
        let done = crate::bundle::codec::apply_effects(self, &effects)?;
        let answered = matches!(done.action, crate::bindings::Action::Respond(_));
        let tenant_changed = {
            let run = self.bundle.as_ref().expect("checked above");
            run.tenant.as_deref() != self.req.tenant()
        };
        let run = self.bundle.as_mut().expect("checked above");
        run.results.push(crate::bundle::MemberResult {
            member,
            action: done.action,
            skip_response_body: done.skip_response_body,
            at: std::time::Instant::now(),
        });
        run.current = crate::bundle::next_member(run.run, Some(member));
        let next = run.current;
        if let Some(n) = next {
            self.enter_member(n);
        }
        Ok(next.is_some() && !answered && !tenant_changed)
    }
}

impl HostState {
    /// Scopes the store's grants (kv namespace, reads, log name, metrics) to bundle member
    /// `member`, which runs next.
    pub(crate) fn enter_member(&mut self, member: u32) {
        if let Some(g) = self.member_grants.get(member as usize) {
            self.grants = g.clone();
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
        self.set_request_header(&name, &value);
    }
    fn remove_header(&mut self, name: String) {
        self.remove_request_header(&name);
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
        set(&mut self.req.response_headers, &name, &value);
    }
    fn skip_response_body(&mut self) {
        self.req.skip_response_body = true;
    }
    fn add_response_header(&mut self, name: String, value: String) {
        self.queue_response_header(&name, &value, QueueMode::Replace);
    }
    fn add_response_headers(&mut self, headers: Vec<Header>, mode: QueueMode) {
        for h in &headers {
            self.queue_response_header(&h.name, &h.value, mode);
        }
    }
    fn remove_response_header(&mut self, name: String) {
        self.req.response_headers.remove(name.as_str());
    }
}

/// Longest key (relative) a plugin may use.
const MAX_KEY_LEN: usize = 512;

fn check_key(key: &str) -> Result<(), kv::KvError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(kv::KvError::Denied(format!(
            "keys must be 1-{MAX_KEY_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

impl HostState {
    fn kv_granted(&self) -> Result<(), kv::KvError> {
        if self.grants.kv {
            Ok(())
        } else {
            Err(kv::KvError::Denied("capability `kv` not granted".into()))
        }
    }

    /// The namespaced key.
    fn kv_key(&self, key: &str) -> Result<String, kv::KvError> {
        self.kv_granted()?;
        check_key(key)?;
        let prefix = &self.grants.kv_prefix;
        let mut k = String::with_capacity(prefix.len() + key.len());
        k.push_str(prefix);
        k.push_str(key);
        Ok(k)
    }

    /// An absolute key outside the namespace, for reading only.
    fn shared_key<'k>(&self, key: &'k str) -> Result<&'k str, kv::KvError> {
        self.kv_granted()?;
        check_key(key)?;
        if crate::settings::read_allowed(&self.grants.kv_read, key) {
            Ok(key)
        } else {
            Err(kv::KvError::Denied(format!(
                "reading `{key}` is not granted (the manifest's kv_read)"
            )))
        }
    }

    /// The store (a cheap clone, so a call's future does not borrow the state).
    fn kv_store(&self) -> Arc<dyn Store> {
        self.services.store.clone()
    }

    /// Awaits a store call, crediting the wait to the CPU budget. A call that completes when
    /// first polled (the memory store's) waited for nothing: the clock is only read for one
    /// that does not.
    async fn timed<T>(
        &mut self,
        call: impl std::future::Future<Output = wasmgate_state::StoreResult<T>>,
    ) -> Result<T, kv::KvError> {
        let mut call = std::pin::pin!(call);
        let mut waiting_since = None;
        let r = std::future::poll_fn(|cx| {
            let p = call.as_mut().poll(cx);
            if p.is_pending() {
                waiting_since.get_or_insert_with(std::time::Instant::now);
            }
            p
        })
        .await;
        if let Some(since) = waiting_since {
            self.io_wait += since.elapsed();
        }
        r.map_err(|e| match e {
            StoreError::Unavailable(m) => kv::KvError::Unavailable(m),
            StoreError::Refused(m) => kv::KvError::Refused(m),
        })
    }
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

impl HostState {
    /// One window hit in the plugin's namespace (both `kv` window imports).
    async fn hit(
        &mut self,
        key: &str,
        limit: u64,
        window_ms: u64,
        kind: WindowKind,
    ) -> Result<kv::Window, kv::KvError> {
        let (key, s) = (self.kv_key(key)?, self.kv_store());
        let window = Duration::from_millis(window_ms.max(1));
        let w = self.timed(s.window_hit(&key, limit, window, kind)).await?;
        Ok(kv::Window {
            allowed: w.allowed,
            remaining: w.remaining,
            reset_after_ms: w.reset_after_ms,
        })
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.get(&key)).await
    }
    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set(&key, value, ttl(ttl_ms))).await
    }
    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.incr(&key, delta, ttl(ttl_ms))).await
    }
    async fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.delete(&key)).await
    }
    async fn window_hit(
        &mut self,
        key: String,
        limit: u64,
        window_ms: u64,
    ) -> Result<kv::Window, kv::KvError> {
        self.hit(&key, limit, window_ms, WindowKind::Sliding).await
    }
    async fn fixed_window_hit(
        &mut self,
        key: String,
        limit: u64,
        window_ms: u64,
    ) -> Result<kv::Window, kv::KvError> {
        self.hit(&key, limit, window_ms, WindowKind::Fixed).await
    }
    async fn set_add(&mut self, key: String, member: String) -> Result<bool, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set_add(&key, &member)).await
    }
    async fn set_remove(&mut self, key: String, member: String) -> Result<bool, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set_remove(&key, &member)).await
    }
    async fn set_members(&mut self, key: String) -> Result<Vec<String>, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set_members(&key)).await
    }
    async fn set_card(&mut self, key: String) -> Result<u64, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set_card(&key)).await
    }
    async fn set_contains(&mut self, key: String, member: String) -> Result<bool, kv::KvError> {
        let (key, s) = (self.kv_key(&key)?, self.kv_store());
        self.timed(s.set_contains(&key, &member)).await
    }
    async fn put_indexed(
        &mut self,
        index: String,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
        max_entries: u64,
    ) -> Result<u64, kv::KvError> {
        let (index, s) = (self.kv_key(&index)?, self.kv_store());
        check_key(&key)?;
        let prefix = self.grants.kv_prefix.clone();
        let ttl = Duration::from_millis(ttl_ms.max(1));
        self.timed(s.put_indexed(&index, &prefix, &key, value, ttl, max_entries))
            .await
    }
    async fn shared_get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        let s = self.kv_store();
        let key = self.shared_key(&key)?;
        self.timed(s.get(key)).await
    }
    async fn shared_set_contains(
        &mut self,
        key: String,
        member: String,
    ) -> Result<bool, kv::KvError> {
        let s = self.kv_store();
        let key = self.shared_key(&key)?;
        self.timed(s.set_contains(key, &member)).await
    }
}

impl crypto::Host for HostState {
    fn sha256(&mut self, data: Vec<u8>) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(&data).to_vec()
    }
    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        use hmac::Mac;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(&data);
        mac.finalize().into_bytes().to_vec()
    }
    fn constant_time_eq(&mut self, a: Vec<u8>, b: Vec<u8>) -> bool {
        use subtle::ConstantTimeEq;
        a.len() == b.len() && bool::from(a.ct_eq(&b))
    }
    fn rsa_pkcs1_sha256_verify(
        &mut self,
        modulus: Vec<u8>,
        exponent: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        let key = ring::signature::RsaPublicKeyComponents {
            n: &modulus,
            e: &exponent,
        };
        key.verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &message,
            &signature,
        )
        .is_ok()
    }
    fn ecdsa_p256_sha256_verify(
        &mut self,
        x: Vec<u8>,
        y: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> bool {
        if x.len() != 32 || y.len() != 32 {
            return false;
        }
        // The uncompressed SEC1 point: 0x04, x, y.
        let mut point = Vec::with_capacity(65);
        point.push(4);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
            .verify(&message, &signature)
            .is_ok()
    }
    fn random_bytes(&mut self, len: u32) -> Vec<u8> {
        let mut v = vec![0u8; len.min(1024) as usize];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut v);
        v
    }
}

impl workers::Host for HostState {
    fn active(&mut self) -> Vec<workers::Worker> {
        if !self.grants.workers {
            return Vec::new();
        }
        self.services
            .workers
            .active()
            .into_iter()
            .map(|w| workers::Worker {
                gpu_utilization: w.gpu_utilization(),
                gpu_json: w.gpu.as_ref().map(|g| g.to_string()),
                id: w.id,
                status: w.status,
                region: w.region,
                queue_depth: w.queue_depth,
                heartbeat_age_ms: w.heartbeat_age_ms,
            })
            .collect()
    }
}

impl upstream::Host for HostState {
    fn targets(&mut self) -> Vec<upstream::Target> {
        let Some(u) = &self.req.upstream else {
            return Vec::new();
        };
        u.targets()
            .into_iter()
            .map(|t| upstream::Target {
                address: t.address,
                healthy: t.healthy,
                in_flight: t.in_flight,
                region: t.region,
                workers: t.workers,
            })
            .collect()
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = self.grants.plugin.as_str();
        let request_id = self
            .req
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match level {
            log::Level::Trace => tracing::trace!(plugin, request_id, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, request_id, "{message}"),
            log::Level::Info => tracing::info!(plugin, request_id, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, request_id, "{message}"),
            log::Level::Error => tracing::error!(plugin, request_id, "{message}"),
        }
    }
}

impl metrics::Host for HostState {
    fn counter_add(&mut self, name: String, value: u64) {
        HostState::counter_add(self, &name, value);
    }
    fn histogram_observe(&mut self, name: String, value: f64) {
        HostState::histogram_observe(self, &name, value);
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
    fn monotonic_ns(&mut self) -> u64 {
        crate::services::monotonic_ns()
    }
}
