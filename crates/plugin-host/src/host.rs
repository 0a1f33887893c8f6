//! The per-instance host state (`Store` data) and the host side of every import.
//!
//! One instance serves one request at a time, so the request it is serving lives in the
//! store (moved in before a phase call and out after: headers are never copied), and the
//! `request` imports read and change it directly.
use std::collections::HashMap;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::wasmgate::plugin::{clock, crypto, kv, log, metrics, request, types, workers};
use crate::bindings::{GatewayPlugin, Header};
use crate::services::{HostServices, KvError as StoreKvError};

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
    pub properties: HashMap<String, String>,
    /// Response status, in response phases.
    pub response_status: Option<u16>,
    /// Response headers, in response phases.
    pub response_headers: HeaderMap,
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
    /// Prefix of every key this instance touches.
    pub kv_prefix: String,
}

impl Grants {
    /// Builds the grants and the key namespace: `<prefix><plugin>:` or
    /// `<prefix>t:<tenant>:<plugin>:`.
    pub fn new(plugin: &str, tenant: Option<&str>, key_prefix: &str, caps: &[String]) -> Grants {
        let has = |c: &str| caps.iter().any(|x| x == c);
        let kv_prefix = match tenant {
            Some(t) => format!("{key_prefix}t:{t}:{plugin}:"),
            None => format!("{key_prefix}{plugin}:"),
        };
        Grants {
            plugin: plugin.to_string(),
            tenant: tenant.map(str::to_string),
            kv: has("kv"),
            workers: has("workers"),
            metrics: has("metrics"),
            kv_prefix,
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
    GatewayPlugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

fn header_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.as_bytes()).ok()
}

fn get(map: &HeaderMap, name: &str) -> Option<String> {
    map.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn set(map: &mut HeaderMap, name: &str, value: &str) {
    if let (Some(n), Ok(v)) = (header_name(name), HeaderValue::from_str(value)) {
        map.insert(n, v);
    }
}

impl types::Host for HostState {}

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
        self.req
            .headers
            .iter()
            .filter_map(|(k, v)| {
                v.to_str().ok().map(|v| Header {
                    name: k.as_str().to_string(),
                    value: v.to_string(),
                })
            })
            .collect()
    }
    fn set_header(&mut self, name: String, value: String) {
        set(&mut self.req.headers, &name, &value);
    }
    fn remove_header(&mut self, name: String) {
        if let Some(n) = header_name(&name) {
            self.req.headers.remove(n);
        }
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
    fn set_response_header(&mut self, name: String, value: String) {
        set(&mut self.req.response_headers, &name, &value);
    }
    fn remove_response_header(&mut self, name: String) {
        if let Some(n) = header_name(&name) {
            self.req.response_headers.remove(n);
        }
    }
}

/// Longest key (relative) a plugin may use.
const MAX_KEY_LEN: usize = 512;

impl HostState {
    fn kv_key(&self, key: &str) -> Result<String, kv::KvError> {
        if !self.grants.kv {
            return Err(kv::KvError::Denied("capability `kv` not granted".into()));
        }
        if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
            return Err(kv::KvError::Denied(format!(
                "keys must be 1-{MAX_KEY_LEN} bytes without control characters"
            )));
        }
        Ok(format!("{}{key}", self.grants.kv_prefix))
    }
}

fn kv_err(e: StoreKvError) -> kv::KvError {
    match e {
        StoreKvError::Unavailable(m) => kv::KvError::Unavailable(m),
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        let key = self.kv_key(&key)?;
        self.services.kv.get(&key).await.map_err(kv_err)
    }
    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), kv::KvError> {
        let key = self.kv_key(&key)?;
        self.services
            .kv
            .set(&key, value, ttl_ms)
            .await
            .map_err(kv_err)
    }
    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, kv::KvError> {
        let key = self.kv_key(&key)?;
        self.services
            .kv
            .incr(&key, delta, ttl_ms)
            .await
            .map_err(kv_err)
    }
    async fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        let key = self.kv_key(&key)?;
        self.services.kv.delete(&key).await.map_err(kv_err)
    }
    async fn window_hit(
        &mut self,
        key: String,
        limit: u64,
        window_ms: u64,
    ) -> Result<kv::Window, kv::KvError> {
        let key = self.kv_key(&key)?;
        let w = self
            .services
            .kv
            .window_hit(&key, limit, window_ms)
            .await
            .map_err(kv_err)?;
        Ok(kv::Window {
            allowed: w.allowed,
            remaining: w.remaining,
            reset_after_ms: w.reset_after_ms,
        })
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
                id: w.id,
                status: w.status,
                region: w.region,
                gpu_json: w.gpu_json,
                heartbeat_age_ms: w.heartbeat_age_ms,
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
        if self.grants.metrics {
            self.services
                .metrics
                .counter_add(&self.grants.plugin, &name, value);
        }
    }
    fn histogram_observe(&mut self, name: String, value: f64) {
        if self.grants.metrics {
            self.services
                .metrics
                .observe(&self.grants.plugin, &name, value);
        }
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
