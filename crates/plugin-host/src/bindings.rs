//! The one `bindgen!` of the `gateway-plugin` world. Key-value calls are async (the state
//! store may be Redis); every other import is a plain call. Exports are async so a guest can
//! wait on an async import and be interrupted by the epoch deadline.
wasmtime::component::bindgen!({
    path: "../../wit",
    world: "gateway-plugin",
    imports: {
        "wasmgate:plugin/kv": async,
        default: tracing,
    },
    exports: {
        default: async,
    },
});

pub use wasmgate::plugin::types::{Header, LocalResponse, Phase};
