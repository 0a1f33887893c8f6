//! wasmgate's built-in bundle (`wit/builtin-bundle.wit`): the built-ins whose only phase is
//! `on-request-headers`, in one component. The host runs a route's consecutive built-ins with
//! one `run-request-headers` call; each member is still its own plugin to the operator (see
//! docs/architecture.md, "The built-in bundle").
use wasmgate_plugin_sdk::bundle::{self, member, Member};
use wasmgate_plugin_sdk::Config;

wit_bindgen::generate!({
    path: "../../../wit",
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

/// The members this bundle can run, by built-in name.
fn make(plugin: &str, config: Config) -> Result<Box<dyn Member>, String> {
    match plugin {
        "auth" => member::<auth::Auth>(config),
        "rate-limit" => member::<rate_limit::RateLimit>(config),
        "router" => member::<router::Router>(config),
        "cors" => member::<cors::Cors>(config),
        "security-headers" => member::<security_headers::SecurityHeaders>(config),
        other => Err(format!("`{other}` is not a member of the built-in bundle")),
    }
}

struct Bundle;

impl Guest for Bundle {
    fn init_members(
        members: Vec<MemberInit>,
    ) -> Result<Vec<wasmgate_plugin_sdk::bindings::wasmgate::plugin::types::PluginInfo>, String>
    {
        bundle::init_members(members.into_iter().map(|m| (m.plugin, m.config)), make)
    }

    fn run_request_headers(run: u64, head: Vec<u8>) {
        bundle::run(run, head, wasmgate::plugin::bundle::commit)
    }
}

export!(Bundle);
