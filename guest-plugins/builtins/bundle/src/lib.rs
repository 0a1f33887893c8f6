//! wasmgate's built-in bundle (`wit/builtin-bundle.wit`): the built-ins whose only phase is
//! `on-request-headers`, in one component. The host runs a route's consecutive built-ins with
//! one `run-request-headers` call; each member is still its own plugin to the operator (see
//! docs/architecture.md, "The built-in bundle").
use wasmgate_plugin_sdk::bundle::{member, Member};
use wasmgate_plugin_sdk::Config;

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

wasmgate_plugin_sdk::export_bundle!(wit: "../../../wit", make: make);
