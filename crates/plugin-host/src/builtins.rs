//! The built-in plugins: guest components compiled into the binary (`guest-plugins/builtins/`),
//! each configured from its section of the gateway configuration (or the ACIP `.env` names)
//! and loaded like a folder plugin. A folder plugin with the same name replaces a built-in.
//!
//! Chain order (lower first; folder plugins default to 0): `rate-limit` -300.
use std::sync::Arc;

use serde_json::json;
use wasmgate_config::Config;

use crate::settings::{FailPolicy, PluginSettings};
use crate::{guests, LoadedPlugin, PluginRuntime, PluginSource};

/// Position of `rate-limit` in the chain.
pub const RATE_LIMIT_ORDER: i64 = -300;

fn wasm(name: &str) -> &'static [u8] {
    guests::BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, w)| *w)
        .unwrap_or_else(|| panic!("built-in `{name}` is not embedded (build.rs BUILTINS)"))
}

/// The built-ins `config` enables, with their settings.
pub fn enabled(config: &Config) -> Vec<(&'static str, PluginSettings)> {
    let mut out = Vec::new();
    let rl = &config.rate_limit;
    if rl.enabled {
        let init = json!({
            "max_requests": rl.max_requests,
            "window_ms": rl.window_ms,
            "algorithm": rl.algorithm,
            "fail_open": rl.fail_open,
            "routes": rl.routes,
            "tenants": rl.tenants,
        });
        out.push((
            "rate-limit",
            PluginSettings {
                grants: vec!["kv".into(), "metrics".into()],
                namespace: Some("ratelimit".into()),
                config_json: init.to_string(),
                order: RATE_LIMIT_ORDER,
                fail_policy: if rl.fail_open {
                    FailPolicy::FailOpen
                } else {
                    FailPolicy::FailClosed
                },
                ..Default::default()
            },
        ));
    }
    out
}

/// Whether two configurations configure the built-ins differently.
pub fn differ(a: &Config, b: &Config) -> bool {
    a.rate_limit != b.rate_limit
}

/// Loads the built-ins `config` enables and installs them in the running chain (replacing the
/// previous built-ins; folder plugins are kept). On error nothing changes.
pub async fn configure(runtime: &PluginRuntime, config: &Config) -> Result<(), String> {
    let mut loaded: Vec<Arc<LoadedPlugin>> = Vec::new();
    for (name, settings) in enabled(config) {
        let p = runtime
            .load(PluginSource::Builtin, wasm(name), settings)
            .await
            .map_err(|e| format!("built-in `{name}`: {e}"))?;
        loaded.push(p);
    }
    runtime.replace_builtins(loaded);
    Ok(())
}
