//! Test bundle (`wit/builtin-bundle.wit`): `member-probe` as members named `tp-member-<tag>`
//! (the tag is the member's config's), for the host's bundle tests.
use wasmgate_plugin_sdk::bundle::{member, Member};
use wasmgate_plugin_sdk::Config;

fn make(plugin: &str, config: Config) -> Result<Box<dyn Member>, String> {
    if plugin.starts_with("tp-member-") {
        member::<member_probe::Probe>(config)
    } else {
        Err(format!("`{plugin}` is not a member of the probe bundle"))
    }
}

wasmgate_plugin_sdk::export_bundle!(wit: "../../../wit", make: make);
