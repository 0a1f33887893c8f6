//! The plugin runtime the gateway holds: the engine, the host services, and the current
//! plugin chain (swapped atomically when the plugin folder changes; requests in flight keep
//! the chain they started with).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::engine::{EngineOptions, PluginEngine};
use crate::host::RequestState;
use crate::plugin::{LoadedPlugin, PluginSource, PluginState};
use crate::services::HostServices;
use crate::session::RequestSession;
use crate::settings::{parse_manifest, PluginSettings};
use crate::Result;

/// A plugin file that could not be loaded, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    /// The file.
    pub path: PathBuf,
    /// The reason.
    pub error: String,
}

/// Plugins in chain order, shared by the requests that use them.
pub type PluginList = Arc<[Arc<LoadedPlugin>]>;

/// The plugins in effect, in chain order, and the files refused when it was built.
#[derive(Debug, Default)]
pub struct PluginChain {
    /// Active and inactive plugins, in order (lower `order` first, then name).
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// Files refused at the last scan (the previous version, if any, stays in `plugins`).
    pub refused: Vec<Refusal>,
    /// The chain of each route some plugin names, computed once per chain.
    by_route: HashMap<String, PluginList>,
    /// The chain of every other route: the plugins without a route restriction.
    unrestricted: PluginList,
}

impl PluginChain {
    fn sorted(mut plugins: Vec<Arc<LoadedPlugin>>, refused: Vec<Refusal>) -> Self {
        plugins.sort_by(|a, b| (a.settings.order, &a.name).cmp(&(b.settings.order, &b.name)));
        let for_route = |route: Option<&str>| -> PluginList {
            plugins
                .iter()
                .filter(|p| match route {
                    Some(r) => p.settings.runs_on(r),
                    None => p.settings.routes.is_empty(),
                })
                .cloned()
                .collect()
        };
        let by_route = plugins
            .iter()
            .flat_map(|p| p.settings.routes.iter().chain(&p.settings.exclude_routes))
            .map(|r| (r.clone(), for_route(Some(r))))
            .collect();
        let unrestricted = for_route(None);
        PluginChain {
            plugins,
            refused,
            by_route,
            unrestricted,
        }
    }

    /// The plugins that run on `route`, in order.
    pub fn for_route(&self, route: &str) -> &PluginList {
        self.by_route.get(route).unwrap_or(&self.unrestricted)
    }
}

/// The runtime.
pub struct PluginRuntime {
    engine: PluginEngine,
    services: Arc<HostServices>,
    chain: ArcSwap<PluginChain>,
    builtins: std::sync::Mutex<Vec<Arc<LoadedPlugin>>>,
    folder: std::sync::Mutex<Option<PathBuf>>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").finish_non_exhaustive()
    }
}

impl PluginRuntime {
    /// A runtime with no plugins.
    pub fn new(opts: EngineOptions, services: Arc<HostServices>) -> Result<PluginRuntime> {
        Ok(PluginRuntime {
            engine: PluginEngine::new(opts)?,
            services,
            chain: ArcSwap::from_pointee(PluginChain::default()),
            builtins: Default::default(),
            folder: std::sync::Mutex::new(None),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// The host services.
    pub fn services(&self) -> &Arc<HostServices> {
        &self.services
    }

    /// The chain in effect.
    pub fn chain(&self) -> Arc<PluginChain> {
        self.chain.load_full()
    }

    /// Loads one plugin from bytes.
    pub async fn load(
        &self,
        source: PluginSource,
        wasm: &[u8],
        settings: PluginSettings,
    ) -> Result<Arc<LoadedPlugin>> {
        let enabled = settings.enabled;
        let p =
            LoadedPlugin::load(&self.engine, self.services.clone(), source, wasm, settings).await?;
        if !enabled {
            p.set_enabled(false);
        }
        Ok(Arc::new(p))
    }

    /// Loads a built-in bundle (`wasm`) running `members` (built-in name and settings, in
    /// chain order): one plugin per member.
    pub async fn load_bundle(
        &self,
        wasm: &[u8],
        members: Vec<(String, PluginSettings)>,
    ) -> Result<Vec<Arc<LoadedPlugin>>> {
        crate::bundle::Bundle::load(&self.engine, self.services.clone(), wasm, members).await
    }

    /// Replaces the chain with `plugins` (plus the built-ins they do not shadow).
    pub fn install(&self, plugins: Vec<Arc<LoadedPlugin>>, refused: Vec<Refusal>) {
        let mut all = plugins;
        for b in self.builtins.lock().unwrap().iter() {
            if !all.iter().any(|p| p.name == b.name) {
                all.push(b.clone());
            }
        }
        self.chain
            .store(Arc::new(PluginChain::sorted(all, refused)));
    }

    /// Replaces the built-in plugins and reinstalls the chain with them (folder plugins are
    /// kept; a folder plugin with a built-in's name replaces it).
    pub fn replace_builtins(&self, builtins: Vec<Arc<LoadedPlugin>>) {
        let current = self.chain();
        let folder: Vec<Arc<LoadedPlugin>> = current
            .plugins
            .iter()
            .filter(|p| !matches!(p.source, PluginSource::Builtin))
            .cloned()
            .collect();
        *self.builtins.lock().unwrap() = builtins;
        self.install(folder, current.refused.clone());
    }

    /// Scans `dir`: every `*.wasm` with its optional `<stem>.toml`. A plugin whose file and
    /// manifest did not change since the current chain is kept as is; a file that fails to load
    /// is refused with the reason and the version already running (if any) stays.
    pub async fn scan_folder(&self, dir: &Path) -> (Vec<Arc<LoadedPlugin>>, Vec<Refusal>) {
        let current = self.chain();
        let mut by_path: HashMap<&Path, Vec<Arc<LoadedPlugin>>> = HashMap::new();
        for p in &current.plugins {
            if let PluginSource::File(path) = &p.source {
                by_path.entry(path.as_path()).or_default().push(p.clone());
            }
        }
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
                .collect(),
            Err(e) => {
                if dir.exists() {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read the plugin folder");
                }
                Vec::new()
            }
        };
        files.sort();
        let mut loaded = Vec::new();
        let mut refused = Vec::new();
        for path in files {
            let current = by_path
                .get(path.as_path())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            match self.load_file(&path, current).await {
                Ok(ps) => loaded.extend(ps),
                Err(error) => {
                    tracing::error!(plugin = %path.display(), %error, "plugin refused; what ran before keeps running");
                    loaded.extend(current.iter().cloned());
                    refused.push(Refusal { path, error });
                }
            }
        }
        // Two files must not claim the same plugin name (a file's per-route variants share it).
        let mut seen: HashMap<(String, Option<String>), PathBuf> = HashMap::new();
        let mut unique = Vec::new();
        for p in loaded {
            let path = match &p.source {
                PluginSource::File(f) => f.clone(),
                PluginSource::Builtin => PathBuf::new(),
            };
            let key = (p.name.clone(), p.settings.variant_route.clone());
            if let Some(first) = seen.get(&key) {
                refused.push(Refusal {
                    path,
                    error: format!(
                        "plugin name `{}` is already used by {}",
                        p.name,
                        first.display()
                    ),
                });
            } else {
                seen.insert(key, path);
                unique.push(p);
            }
        }
        (unique, refused)
    }

    /// Loads a file and its per-route variants; `current` is what runs from it now (kept as is
    /// when neither the file nor its manifest changed).
    async fn load_file(
        &self,
        path: &Path,
        current: &[Arc<LoadedPlugin>],
    ) -> std::result::Result<Vec<Arc<LoadedPlugin>>, String> {
        let wasm = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let manifest_path = path.with_extension("toml");
        let settings = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => {
                parse_manifest(&text).map_err(|e| format!("{}: {e}", manifest_path.display()))?
            }
            Err(_) => PluginSettings::default(),
        };
        let base = current.iter().find(|p| p.settings.variant_route.is_none());
        if let Some(cur) = base {
            let same_manifest = serde_json::to_string(&cur.settings).ok()
                == serde_json::to_string(&settings).ok()
                && cur.settings.config_json == settings.config_json;
            if cur.sha256 == crate::engine::sha256_hex(&wasm) && same_manifest {
                return Ok(current.to_vec());
            }
        }
        let source = PluginSource::File(path.to_path_buf());
        let mut out = Vec::new();
        for (route, config) in &settings.route_configs {
            let variant = settings.variant_for(route, config);
            out.push(
                self.load(source.clone(), &wasm, variant)
                    .await
                    .map_err(|e| format!("routes_config.{route}: {e}"))?,
            );
        }
        out.push(
            self.load(source, &wasm, settings)
                .await
                .map_err(|e| e.to_string())?,
        );
        Ok(out)
    }

    /// The plugin folder, once [`PluginRuntime::reload_folder`] has read one.
    pub fn folder(&self) -> Option<PathBuf> {
        self.folder.lock().unwrap().clone()
    }

    /// Rescans `dir` and installs the result.
    pub async fn reload_folder(&self, dir: &Path) {
        *self.folder.lock().unwrap() = Some(dir.to_path_buf());
        let (plugins, refused) = self.scan_folder(dir).await;
        let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
        tracing::info!(dir = %dir.display(), plugins = ?names, refused = refused.len(), "plugin chain installed");
        self.install(plugins, refused);
    }

    /// A session for a request on `route`, or `None` when no active plugin applies (the fast
    /// path: no allocation).
    pub fn session(
        &self,
        route: &str,
        state: impl FnOnce() -> RequestState,
    ) -> Option<RequestSession> {
        let chain = self.chain.load();
        let list = chain.for_route(route);
        if !list.iter().any(|p| p.state() == PluginState::Active) {
            return None;
        }
        Some(RequestSession::new(list.clone(), Box::new(state())))
    }

    /// A plugin by name (its base, not a per-route variant).
    pub fn find(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.find_all(name)
            .into_iter()
            .min_by_key(|p| p.settings.variant_route.is_some())
    }

    /// A plugin and its per-route variants.
    pub fn find_all(&self, name: &str) -> Vec<Arc<LoadedPlugin>> {
        self.chain()
            .plugins
            .iter()
            .filter(|p| p.name == name)
            .cloned()
            .collect()
    }
}
