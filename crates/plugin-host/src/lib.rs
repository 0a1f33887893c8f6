//! The wasmgate plugin runtime.
//!
//! Plugins are WebAssembly components implementing the `gateway-plugin` world
//! (`wit/gateway-plugin.wit`). This crate compiles them (with an on-disk cache keyed by the
//! wasm's sha256 and the engine's compatibility hash), checks them against the world, keeps a
//! pool of live instances per (plugin, tenant), runs request phases under CPU and memory
//! budgets, and provides the host imports (`request`, `kv`, `crypto`, `workers`, `log`,
//! `metrics`, `clock`) scoped by the capabilities the operator granted. A trap, a blown
//! deadline or an out-of-memory costs the instance (it is replaced) and the request gets the
//! plugin's fail policy; repeated traps disable the plugin.
//!
//! Map: [`engine`] (wasmtime config, ticker, compile cache), [`host`] (store data, imports),
//! [`services`] (key-value, workers, metrics), [`pool`], [`plugin`] (a loaded plugin),
//! [`session`] (one request through a chain), [`runtime`] (the chain, the plugin folder),
//! [`settings`] (budgets, policies, manifests).
#![deny(missing_docs)]

#[allow(missing_docs)]
pub mod bindings;
pub mod engine;
pub mod folder;

/// The guest components built from `guest-plugins/`: embedded built-ins, and the paths of the
/// examples and test plugins.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}
pub mod builtins;
pub mod bundle;
pub mod host;
pub mod inspect;
pub mod plugin;
pub mod pool;
pub mod runtime;
pub mod services;
pub mod session;
pub mod settings;

pub use engine::{EngineOptions, PluginEngine};
pub use host::{
    Properties, QueueMode, QueuedHeader, RequestState, TargetRef, TargetView, UpstreamView,
};
pub use plugin::{CallFailure, LoadedPlugin, PluginSource, PluginState};
pub use runtime::{PluginChain, PluginRuntime, Refusal};
pub use services::HostServices;
pub use session::{CallTiming, Decision, Outcome, PluginFailure, PluginOutcomes, RequestSession};
pub use settings::{FailPolicy, PluginSettings};
pub use wasmgate_state::{self as state, MemoryStore, Store};

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The engine could not be built.
    #[error("plugin engine: {0}")]
    Engine(String),
    /// The file is not a valid component.
    #[error("does not compile: {0}")]
    Compile(String),
    /// The component does not implement the `gateway-plugin` world (or needs imports the
    /// host does not provide).
    #[error("does not implement the gateway-plugin world: {0}")]
    World(String),
    /// `init` failed or returned an error.
    #[error("init failed: {0}")]
    Init(String),
}

impl PluginError {
    pub(crate) fn engine(e: impl std::fmt::Display) -> Self {
        PluginError::Engine(e.to_string())
    }
    pub(crate) fn compile(e: wasmtime::Error) -> Self {
        PluginError::Compile(format!("{e:#}"))
    }
}

/// Result alias of the plugin runtime.
pub type Result<T> = std::result::Result<T, PluginError>;
