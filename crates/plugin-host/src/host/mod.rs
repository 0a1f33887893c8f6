//! The per-instance host state (`Store` data) and the host side of every import.
//!
//! One instance serves one request at a time, so the request it is serving lives in the
//! store (moved in before a phase call and out after: headers are never copied), and the
//! `request` imports read and change it directly (`request.rs`). The `kv` imports are in
//! `kv.rs`, the smaller ones (crypto, workers, upstream, log, metrics, clock) in
//! `imports.rs`.
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable, WasmList};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use crate::bindings::wasmgate::plugin::request::QueueMode;
use crate::bindings::wasmgate::plugin::types;
use crate::bindings::GatewayPlugin;
use crate::services::HostServices;

mod imports;
mod kv;
mod request;

pub use request::{Properties, QueuedHeader, RequestState, TargetRef, TargetView, UpstreamView};

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
    /// In a built-in bundle's instance: where a commit's effects are copied out of the
    /// instance's memory, reused from commit to commit.
    effects: Vec<u8>,
    /// In a built-in bundle's instance: the members' results of its last run, the vector
    /// reused by the next.
    pub(crate) spare_results: Vec<crate::bundle::MemberResult>,
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
            effects: Vec::new(),
            spare_results: Vec::new(),
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
    // `gateway-plugin` world does not have it, see `inspect`). `commit` is defined by hand,
    // not by bindgen, to read the effects where they lie in the instance's memory (a
    // `WasmList`) into a buffer the store keeps, instead of a new `Vec` every commit. The
    // version is the WIT package's (`wit/builtin-bundle.wit`).
    let mut bundle = linker.instance("wasmgate:plugin/bundle@0.1.0")?;
    bundle.func_wrap(
        "commit",
        |mut store: wasmtime::StoreContextMut<'_, HostState>,
         (member, effects): (u32, WasmList<u8>)| {
            let mut buf = std::mem::take(&mut store.data_mut().effects);
            buf.clear();
            buf.extend_from_slice(effects.as_le_slice(&store));
            let go_on = store.data_mut().commit(member, &buf);
            store.data_mut().effects = buf;
            Ok((go_on?,))
        },
    )
}

impl types::Host for HostState {}

impl HostState {
    /// `bundle.commit`: member `member` returned, having done `effects`.
    fn commit(&mut self, member: u32, effects: &[u8]) -> wasmtime::Result<bool> {
        match self.bundle.as_ref() {
            Some(run) if run.current == Some(member) => {}
            Some(run) => wasmtime::bail!(
                "bundle member {member} committed while member {:?} was running",
                run.current
            ),
            None => wasmtime::bail!("bundle commit outside a run"),
        }
        let done = crate::bundle::codec::apply_effects(self, effects)?;
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

    /// Scopes the store's grants (kv namespace, reads, log name, metrics) to bundle member
    /// `member`, which runs next.
    pub(crate) fn enter_member(&mut self, member: u32) {
        if let Some(g) = self.member_grants.get(member as usize) {
            self.grants = g.clone();
        }
    }
}
