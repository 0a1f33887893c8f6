//! The Rust SDK for wasmgate plugins.
//!
//! ```ignore
//! use wasmgate_plugin_sdk::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct AddHeader { name: String, value: String }
//!
//! impl Plugin for AddHeader {
//!     fn new(config: Config) -> Result<Self, String> { config.parse() }
//!     fn info(&self) -> Info { Info::new("add-header", "0.1.0").phase(Phase::RequestHeaders) }
//!     fn on_request_headers(&mut self) -> Action {
//!         request::set_header(&self.name, &self.value);
//!         Action::Continue
//!     }
//! }
//! export_plugin!(AddHeader);
//! ```
//!
//! Every phase method has a default that does nothing; the host calls only the phases listed
//! in [`Info`]. Host capabilities are the generated modules re-exported here: [`request`],
//! [`kv`], [`crypto`], [`workers`], [`log`], [`metrics`], [`clock`].
#![deny(missing_docs)]

#[allow(missing_docs)]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "gateway-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_gateway_plugin",
        default_bindings_module: "wasmgate_plugin_sdk::bindings",
    });
}

pub use bindings::wasmgate::plugin::request::QueueMode;
pub use bindings::wasmgate::plugin::types::{Header, LocalResponse, Phase};
pub use bindings::wasmgate::plugin::{clock, crypto, kv, log, workers};

#[doc(hidden)]
pub mod bundle;

/// The current request (and, in response phases, its response): the `request` import.
///
/// Inside wasmgate's built-in bundle these answer from the request head the host passed and
/// record changes for the host, with no host call each; everywhere else each is the host call
/// of the same name. Plugins see no difference.
pub mod request {
    use crate::bindings::wasmgate::plugin::request as host;
    use crate::bundle::with_local;
    pub use crate::Header;
    pub use host::QueueMode;

    /// The method, e.g. `GET`.
    pub fn method() -> String {
        with_local(|l| l.method()).unwrap_or_else(host::method)
    }
    /// The path as the client sent it, without the query.
    pub fn path() -> String {
        with_local(|l| l.path()).unwrap_or_else(host::path)
    }
    /// The raw query string, without `?`.
    pub fn query() -> Option<String> {
        with_local(|l| l.query()).unwrap_or_else(host::query)
    }
    /// The client's IP address.
    pub fn client_addr() -> String {
        with_local(|l| l.client_addr()).unwrap_or_else(host::client_addr)
    }
    /// The matched route's name.
    pub fn route() -> String {
        with_local(|l| l.route()).unwrap_or_else(host::route)
    }
    /// The tenant, once a plugin has set the `tenant` property.
    pub fn tenant() -> Option<String> {
        with_local(|l| l.get_property("tenant")).unwrap_or_else(host::tenant)
    }
    /// The request id (`X-Request-ID`).
    pub fn request_id() -> String {
        with_local(|l| l.request_id()).unwrap_or_else(host::request_id)
    }
    /// One request header (the first value when repeated), in request phases.
    pub fn get_header(name: &str) -> Option<String> {
        with_local(|l| l.get_header(name)).unwrap_or_else(|| host::get_header(name))
    }
    /// Runs `f` on one request header (the first value when repeated), in request phases:
    /// [`get_header`] without a new `String` per call when the plugin runs in wasmgate's
    /// built-in bundle. `f` may call the other SDK functions.
    pub fn with_header<R>(name: &str, f: impl FnOnce(Option<&str>) -> R) -> R {
        crate::bundle::with_text(crate::bundle::Lookup::Header(name), f)
            .unwrap_or_else(|f| f(host::get_header(name).as_deref()))
    }
    /// Every request header (copies them all: prefer [`get_header`]).
    pub fn get_headers() -> Vec<Header> {
        with_local(|l| l.get_headers()).unwrap_or_else(host::get_headers)
    }
    /// Sets a request header, replacing any value. Invalid names or values are ignored.
    pub fn set_header(name: &str, value: &str) {
        if with_local(|l| l.set_header(name, value)).is_none() {
            host::set_header(name, value)
        }
    }
    /// Removes a request header.
    pub fn remove_header(name: &str) {
        if with_local(|l| l.remove_header(name)).is_none() {
            host::remove_header(name)
        }
    }
    /// A request property set by this or an earlier plugin.
    pub fn get_property(key: &str) -> Option<String> {
        with_local(|l| l.get_property(key)).unwrap_or_else(|| host::get_property(key))
    }
    /// Runs `f` on a request property: [`get_property`] without a new `String` per call when
    /// the plugin runs in wasmgate's built-in bundle. `f` may call the other SDK functions.
    pub fn with_property<R>(key: &str, f: impl FnOnce(Option<&str>) -> R) -> R {
        crate::bundle::with_text(crate::bundle::Lookup::Property(key), f)
            .unwrap_or_else(|f| f(host::get_property(key).as_deref()))
    }
    /// Sets a request property that later plugins (and phases) see.
    pub fn set_property(key: &str, value: &str) {
        if with_local(|l| l.set_property(key, value)).is_none() {
            host::set_property(key, value)
        }
    }
    /// The response status, in response phases.
    pub fn response_status() -> Option<u16> {
        with_local(|_| None).unwrap_or_else(host::response_status)
    }
    /// One response header, in response phases.
    pub fn get_response_header(name: &str) -> Option<String> {
        with_local(|_| None).unwrap_or_else(|| host::get_response_header(name))
    }
    /// Every response header, in response phases.
    pub fn get_response_headers() -> Vec<Header> {
        with_local(|_| Vec::new()).unwrap_or_else(host::get_response_headers)
    }
    /// Sets a response header, in response phases (a request phase has no response yet:
    /// queue with [`add_response_header`]).
    pub fn set_response_header(name: &str, value: &str) {
        if with_local(|_| ()).is_none() {
            host::set_response_header(name, value)
        }
    }
    /// Removes a response header, in response phases.
    pub fn remove_response_header(name: &str) {
        if with_local(|_| ()).is_none() {
            host::remove_response_header(name)
        }
    }
    /// This request's response body needs nothing from this plugin.
    pub fn skip_response_body() {
        if with_local(|l| l.skip_response_body()).is_none() {
            host::skip_response_body()
        }
    }
    /// Queues a header for the response (replacing any value), from any phase.
    pub fn add_response_header(name: &str, value: &str) {
        if with_local(|l| l.queue_response_header(name, value, QueueMode::Replace)).is_none() {
            host::add_response_header(name, value)
        }
    }
    /// Queues several response headers in one call; `mode` says what each does to a header of
    /// that name the response already carries.
    pub fn add_response_headers(headers: &[Header], mode: QueueMode) {
        let local = with_local(|l| {
            for h in headers {
                l.queue_response_header(&h.name, &h.value, mode);
            }
        });
        if local.is_none() {
            host::add_response_headers(headers, mode)
        }
    }
}

/// The current route's upstream targets (always available, read only): what a router plugin
/// chooses from with `continue-to`.
pub mod upstream {
    use crate::bindings::wasmgate::plugin::upstream as host;
    pub use host::Target;

    /// The route's targets, in configuration order (empty outside a routed request).
    pub fn targets() -> Vec<Target> {
        crate::bundle::with_targets(|t| t.iter().map(TargetRef::to_target).collect())
            .unwrap_or_else(|_| host::targets())
    }

    /// Runs `f` on the route's targets, in configuration order (empty outside a routed
    /// request), borrowed: what [`targets`] gives, without a `String` per address, region and
    /// worker when the plugin runs in wasmgate's built-in bundle. `f` may call the other SDK
    /// functions.
    pub fn with_targets<R>(f: impl FnOnce(&[TargetRef<'_>]) -> R) -> R {
        crate::bundle::with_targets(f).unwrap_or_else(|f| {
            let all = host::targets();
            let refs: Vec<TargetRef<'_>> = all.iter().map(TargetRef::from).collect();
            f(&refs)
        })
    }

    /// A target as [`with_targets`] shows it.
    #[derive(Clone, Copy, Debug)]
    pub struct TargetRef<'a> {
        /// `host:port`: what `continue-to` takes.
        pub address: &'a str,
        /// Not ejected by health checks.
        pub healthy: bool,
        /// Requests in flight to it from this gateway.
        pub in_flight: u32,
        /// Its region tag, if any.
        pub region: Option<&'a str>,
        pub(crate) workers: Workers<'a>,
    }

    /// A target's worker ids, as the host or the bundle's head holds them.
    #[derive(Clone, Copy, Debug)]
    pub(crate) enum Workers<'a> {
        Owned(&'a [String]),
        Packed(&'a [u8], u32),
    }

    impl<'a> TargetRef<'a> {
        /// The GPU workers behind it (ids in the worker registry).
        pub fn workers(&self) -> impl Iterator<Item = &'a str> + 'a {
            let (owned, packed) = match self.workers {
                Workers::Owned(w) => (Some(w.iter().map(String::as_str)), None),
                Workers::Packed(buf, n) => (None, Some(crate::bundle::packed_workers(buf, n))),
            };
            owned
                .into_iter()
                .flatten()
                .chain(packed.into_iter().flatten())
        }

        /// The target as [`targets`] gives it.
        pub fn to_target(&self) -> Target {
            Target {
                address: self.address.to_owned(),
                healthy: self.healthy,
                in_flight: self.in_flight,
                region: self.region.map(str::to_owned),
                workers: self.workers().map(str::to_owned).collect(),
            }
        }
    }

    impl<'a> From<&'a Target> for TargetRef<'a> {
        fn from(t: &'a Target) -> Self {
            TargetRef {
                address: &t.address,
                healthy: t.healthy,
                in_flight: t.in_flight,
                region: t.region.as_deref(),
                workers: Workers::Owned(&t.workers),
            }
        }
    }
}

/// The plugin's own metrics (capability `metrics`), exported under `wasmgate_plugin_<name>_`.
pub mod metrics {
    use crate::bindings::wasmgate::plugin::metrics as host;
    use crate::bundle::with_local;

    /// Adds `value` to counter `name`.
    pub fn counter_add(name: &str, value: u64) {
        if with_local(|l| l.counter_add(name, value)).is_none() {
            host::counter_add(name, value)
        }
    }
    /// Records `value` in histogram `name`.
    pub fn histogram_observe(name: &str, value: f64) {
        if with_local(|l| l.histogram_observe(name, value)).is_none() {
            host::histogram_observe(name, value)
        }
    }
}

/// What a phase tells the host to do next.
pub type Action = bindings::wasmgate::plugin::types::Action;

/// Everything a plugin needs, in one `use`.
pub mod prelude {
    pub use crate::{
        clock, crypto, export_plugin, kv, log, metrics, request, upstream, workers, Action, Config,
        Header, Info, LocalResponse, Phase, Plugin, QueueMode,
    };
}

/// The plugin's configuration: the JSON document the host passes to `init`.
#[derive(Debug, Clone)]
pub struct Config(pub String);

impl Config {
    /// Deserializes the configuration into `T` (missing config is `{}`).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let text = if self.0.trim().is_empty() {
            "{}"
        } else {
            &self.0
        };
        serde_json::from_str(text).map_err(|e| format!("invalid plugin config: {e}"))
    }

    /// The configuration as a JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

/// What a plugin declares: name, version, phases, wanted capabilities.
#[derive(Debug, Clone)]
pub struct Info {
    name: String,
    version: String,
    phases: Vec<Phase>,
    capabilities: Vec<String>,
}

impl Info {
    /// What `init` returns to the host.
    #[doc(hidden)]
    pub fn into_wit(self) -> bindings::wasmgate::plugin::types::PluginInfo {
        bindings::wasmgate::plugin::types::PluginInfo {
            name: self.name,
            version: self.version,
            phases: self.phases,
            capabilities: self.capabilities,
        }
    }

    /// A plugin with no phases and no capabilities yet.
    pub fn new(name: &str, version: &str) -> Self {
        Info {
            name: name.into(),
            version: version.into(),
            phases: Vec::new(),
            capabilities: Vec::new(),
        }
    }

    /// Adds a phase the plugin implements.
    pub fn phase(mut self, p: Phase) -> Self {
        self.phases.push(p);
        self
    }

    /// Asks for a capability (`kv`, `workers`, `metrics`).
    pub fn capability(mut self, c: &str) -> Self {
        self.capabilities.push(c.into());
        self
    }
}

impl Action {
    /// A local JSON answer in the gateway's error shape:
    /// `{"error": code, "message": message, "request_id": ...}`.
    pub fn error(status: u16, code: &str, message: &str) -> Action {
        let body = serde_json::json!({
            "error": code,
            "message": message,
            "request_id": request::request_id(),
        });
        Action::json(status, &body)
    }

    /// A local JSON answer.
    pub fn json(status: u16, body: &serde_json::Value) -> Action {
        Action::Respond(LocalResponse {
            status,
            headers: vec![Header {
                name: "content-type".into(),
                value: "application/json".into(),
            }],
            body: body.to_string().into_bytes(),
        })
    }
}

/// A wasmgate plugin. Implement the phases you declared in [`Plugin::info`].
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its configuration (once per instance).
    fn new(config: Config) -> Result<Self, String>;
    /// Name, version, phases and capabilities.
    fn info(&self) -> Info;
    /// The request head arrived.
    fn on_request_headers(&mut self) -> Action {
        Action::Continue
    }
    /// A request body chunk.
    fn on_request_body(&mut self, _chunk: &[u8], _end_of_stream: bool) -> Action {
        Action::Continue
    }
    /// The response head is known.
    fn on_response_headers(&mut self) -> Action {
        Action::Continue
    }
    /// A response body chunk: return what to send on.
    fn on_response_body(&mut self, chunk: Vec<u8>, _end_of_stream: bool) -> Vec<u8> {
        chunk
    }
    /// The response is complete.
    fn on_log(&mut self) {}
}

#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;

    use super::*;

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
    }

    pub fn init<P: Plugin>(
        config: String,
    ) -> Result<bindings::wasmgate::plugin::types::PluginInfo, String> {
        let plugin = P::new(Config(config))?;
        let info = plugin.info();
        INSTANCE.with(|i| *i.borrow_mut() = Some(Box::new(plugin)));
        Ok(info.into_wit())
    }

    pub fn with<P: Plugin, R>(f: impl FnOnce(&mut P) -> R) -> R {
        INSTANCE.with(|i| {
            let mut slot = i.borrow_mut();
            let plugin = slot
                .as_mut()
                .and_then(|b| b.downcast_mut::<P>())
                .expect("wasmgate called a phase before init");
            f(plugin)
        })
    }
}

/// Exports a built-in bundle (`wit/builtin-bundle.wit`, internal to wasmgate): its WIT
/// bindings, generated from the folder `wit` (relative to the bundle crate, as
/// `wit_bindgen::generate!` reads it) over the SDK's own for the shared interfaces, and the
/// world's two exports, over [`bundle::init_members`] with `make` and [`bundle::run`].
#[doc(hidden)]
#[macro_export]
macro_rules! export_bundle {
    (wit: $wit:literal, make: $make:path) => {
        wit_bindgen::generate!({
            path: $wit,
            world: "builtin-bundle",
            with: {
                "wasmgate:plugin/types@0.1.0": wasmgate_plugin_sdk::bindings::wasmgate::plugin::types,
                "wasmgate:plugin/request@0.1.0": wasmgate_plugin_sdk::bindings::wasmgate::plugin::request,
                "wasmgate:plugin/kv@0.1.0": wasmgate_plugin_sdk::bindings::wasmgate::plugin::kv,
                "wasmgate:plugin/crypto@0.1.0": wasmgate_plugin_sdk::bindings::wasmgate::plugin::crypto,
                "wasmgate:plugin/workers@0.1.0": wasmgate_plugin_sdk::bindings::wasmgate::plugin::workers,
                "wasmgate:plugin/upstream@0.1.0": wasmgate_plugin_sdk::bindings::wasmgate::plugin::upstream,
                "wasmgate:plugin/log@0.1.0": wasmgate_plugin_sdk::bindings::wasmgate::plugin::log,
                "wasmgate:plugin/metrics@0.1.0": wasmgate_plugin_sdk::bindings::wasmgate::plugin::metrics,
                "wasmgate:plugin/clock@0.1.0": wasmgate_plugin_sdk::bindings::wasmgate::plugin::clock,
            },
        });

        struct __WasmgateBundleExport;

        impl Guest for __WasmgateBundleExport {
            fn init_members(
                members: Vec<MemberInit>,
            ) -> Result<Vec<$crate::bindings::wasmgate::plugin::types::PluginInfo>, String> {
                $crate::bundle::init_members(members.into_iter().map(|m| (m.plugin, m.config)), $make)
            }

            fn run_request_headers(run: u64, head: Vec<u8>) {
                $crate::bundle::run(run, head, wasmgate::plugin::bundle::commit)
            }
        }

        export!(__WasmgateBundleExport);
    };
}

/// Exports a [`Plugin`] implementation as the component's `gateway-plugin` world.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        struct __WasmgatePluginExport;

        impl $crate::bindings::Guest for __WasmgatePluginExport {
            fn init(
                config: String,
            ) -> Result<$crate::bindings::wasmgate::plugin::types::PluginInfo, String> {
                $crate::__private::init::<$ty>(config)
            }
            fn on_request_headers() -> $crate::Action {
                $crate::__private::with::<$ty, _>(|p| <$ty as $crate::Plugin>::on_request_headers(p))
            }
            fn on_request_body(chunk: Vec<u8>, end_of_stream: bool) -> $crate::Action {
                $crate::__private::with::<$ty, _>(|p| {
                    <$ty as $crate::Plugin>::on_request_body(p, &chunk, end_of_stream)
                })
            }
            fn on_response_headers() -> $crate::Action {
                $crate::__private::with::<$ty, _>(|p| <$ty as $crate::Plugin>::on_response_headers(p))
            }
            fn on_response_body(chunk: Vec<u8>, end_of_stream: bool) -> Vec<u8> {
                $crate::__private::with::<$ty, _>(|p| {
                    <$ty as $crate::Plugin>::on_response_body(p, chunk, end_of_stream)
                })
            }
            fn on_log() {
                $crate::__private::with::<$ty, _>(|p| <$ty as $crate::Plugin>::on_log(p))
            }
        }

        $crate::bindings::__export_gateway_plugin!(__WasmgatePluginExport with_types_in $crate::bindings);
    };
}
