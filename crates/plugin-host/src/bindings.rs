//! The one `bindgen!` of the `gateway-plugin` world. Key-value calls are async (the state
//! store may be Redis); every other import is a plain call. Exports are async so a guest can
//! wait on an async import and be interrupted by the epoch deadline.
//!
//! The imports are not generated with bindgen's `tracing` option: it logs every argument and
//! result that is not a list at TRACE level, which includes the request headers a plugin reads
//! (`X-API-Key`, `Authorization`) and the properties it sets. Secrets never reach the log, at
//! any level; plugin calls are traced by the session (`CallTiming`) instead.
wasmtime::component::bindgen!({
    path: "../../wit",
    world: "gateway-plugin",
    imports: {
        "wasmgate:plugin/kv": async,
    },
    exports: {
        default: async,
    },
});

pub use wasmgate::plugin::types::{Header, LocalResponse, Phase};

/// The internal `builtin-bundle` world (`wit/builtin-bundle.wit`): the built-ins whose only
/// phase is `on-request-headers`, run as members of one component. Its imports are the
/// `gateway-plugin` world's (the same host implementations) plus `bundle`.
pub mod bundle {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "builtin-bundle",
        imports: {
            "wasmgate:plugin/bundle": trappable,
        },
        exports: {
            default: async,
        },
        with: {
            "wasmgate:plugin/types": super::wasmgate::plugin::types,
            "wasmgate:plugin/request": super::wasmgate::plugin::request,
            "wasmgate:plugin/kv": super::wasmgate::plugin::kv,
            "wasmgate:plugin/crypto": super::wasmgate::plugin::crypto,
            "wasmgate:plugin/workers": super::wasmgate::plugin::workers,
            "wasmgate:plugin/upstream": super::wasmgate::plugin::upstream,
            "wasmgate:plugin/log": super::wasmgate::plugin::log,
            "wasmgate:plugin/metrics": super::wasmgate::plugin::metrics,
            "wasmgate:plugin/clock": super::wasmgate::plugin::clock,
        },
    });
}
