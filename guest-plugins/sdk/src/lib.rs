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
pub use bindings::wasmgate::plugin::{clock, crypto, kv, log, metrics, request, upstream, workers};

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
        Ok(bindings::wasmgate::plugin::types::PluginInfo {
            name: info.name,
            version: info.version,
            phases: info.phases,
            capabilities: info.capabilities,
        })
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
