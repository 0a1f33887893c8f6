//! Test plugin: `member-probe` as a plugin of its own (see that crate).
wasmgate_plugin_sdk::export_plugin!(member_probe::Probe);
