//! Test bundle (`wit/builtin-bundle.wit`): `member-probe` as members named `tp-member-<tag>`
//! (the tag is the member's config's), for the host's bundle tests.
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

fn make(plugin: &str, config: Config) -> Result<Box<dyn Member>, String> {
    if plugin.starts_with("tp-member-") {
        member::<member_probe::Probe>(config)
    } else {
        Err(format!("`{plugin}` is not a member of the probe bundle"))
    }
}

struct ProbeBundle;

impl Guest for ProbeBundle {
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

export!(ProbeBundle);
