//! `wasmgate plugin inspect`: what a component imports and exports, and whether it fits the
//! `gateway-plugin` world (it compiles, links against the host, and `init` succeeds).
use std::sync::Arc;

use wasmtime::component::types::ComponentItem;

use crate::plugin::{LoadedPlugin, PluginSource};
use crate::runtime::PluginRuntime;
use crate::settings::PluginSettings;

/// The result of an inspection.
#[derive(Debug, serde::Serialize)]
pub struct Inspection {
    /// sha256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: usize,
    /// Imports: (name, kind).
    pub imports: Vec<(String, String)>,
    /// Exports: (name, kind).
    pub exports: Vec<(String, String)>,
    /// `None` when it fits the world, else why not.
    pub error: Option<String>,
    /// Name, version, phases, capabilities from `init` (when it fits).
    pub plugin: Option<serde_json::Value>,
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::CoreFunc(_) => "core func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

/// Inspects `wasm` with `config_json` passed to `init`.
pub async fn inspect(runtime: &PluginRuntime, wasm: &[u8], config_json: &str) -> Inspection {
    let engine = runtime.engine();
    let mut out = Inspection {
        sha256: crate::engine::sha256_hex(wasm),
        size: wasm.len(),
        imports: Vec::new(),
        exports: Vec::new(),
        error: None,
        plugin: None,
    };
    let component = match engine.compile(wasm) {
        Ok((c, _)) => c,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let ty = component.component_type();
    out.imports = ty
        .imports(engine.engine())
        .map(|(n, i)| (n.to_string(), kind(&i.ty).to_string()))
        .collect();
    out.exports = ty
        .exports(engine.engine())
        .map(|(n, i)| (n.to_string(), kind(&i.ty).to_string()))
        .collect();
    let settings = PluginSettings {
        config_json: config_json.to_string(),
        grants: vec!["kv".into(), "workers".into(), "metrics".into()],
        ..Default::default()
    };
    match LoadedPlugin::load(
        engine,
        Arc::clone(runtime.services()),
        PluginSource::Builtin,
        wasm,
        settings,
    )
    .await
    {
        Ok(p) => {
            out.plugin = Some(serde_json::json!({
                "name": p.name,
                "version": p.version,
                "phases": p.phases.names(),
                "capabilities": p.granted,
            }))
        }
        Err(e) => out.error = Some(e.to_string()),
    }
    out
}
