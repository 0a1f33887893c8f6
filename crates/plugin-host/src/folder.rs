//! Watching the plugin folder: a change to any file in it rescans the folder (debounced) and
//! installs the new chain atomically. Replace files by writing elsewhere and renaming (as
//! `cp` to a temporary name then `mv`); a half-written file is refused and the previous
//! version keeps running until the complete file arrives.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::runtime::PluginRuntime;

/// Events closer together than this trigger one rescan...
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// ...but a steady stream of changes still rescans this long after its first event.
pub const MAX_DELAY: Duration = Duration::from_millis(300);

/// Starts a plugin runtime the way the gateway runs it: the given host services (state store,
/// worker registry), compiled code cached in `cache_dir` (default `<dir>/.cache`), and `dir`
/// loaded and watched.
pub async fn start(
    dir: &Path,
    cache_dir: Option<PathBuf>,
    services: Arc<crate::HostServices>,
) -> Result<Arc<PluginRuntime>, String> {
    let options = crate::EngineOptions {
        cache_dir: Some(cache_dir.unwrap_or_else(|| dir.join(".cache"))),
        ..Default::default()
    };
    let runtime = Arc::new(PluginRuntime::new(options, services).map_err(|e| e.to_string())?);
    load_and_watch(&runtime, dir)
        .await
        .map_err(|e| format!("plugin folder {}: {e}", dir.display()))?;
    Ok(runtime)
}

/// Starts the plugin engine of a gateway: the plugin folder `dir` (loaded and watched) when
/// given, and the built-ins `config` enables. `None` when there is neither. The binary, the
/// test kit and the benchmarks all start plugins through this.
pub async fn start_gateway_plugins(
    config: &wasmgate_config::Config,
    dir: Option<&Path>,
    cache_dir: Option<PathBuf>,
    services: Arc<crate::HostServices>,
) -> Result<Option<Arc<PluginRuntime>>, String> {
    let builtins = crate::builtins::enabled(config)?;
    let runtime = match dir {
        Some(dir) => start(dir, cache_dir, services).await?,
        None if !builtins.is_empty() => {
            let options = crate::EngineOptions {
                cache_dir,
                ..Default::default()
            };
            Arc::new(PluginRuntime::new(options, services).map_err(|e| e.to_string())?)
        }
        None => return Ok(None),
    };
    crate::builtins::install(&runtime, builtins, config.plugins.fuse_builtins).await?;
    Ok(Some(runtime))
}

/// Loads `dir` now, then watches it until the runtime is dropped.
pub async fn load_and_watch(runtime: &Arc<PluginRuntime>, dir: &Path) -> notify::Result<()> {
    runtime.reload_folder(dir).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let relevant = ev
                .paths
                .iter()
                .any(|p| p.extension().is_some_and(|e| e == "wasm" || e == "toml") || p.is_dir());
            if relevant && !ev.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(notify::Error::io)?;
    }
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let weak: Weak<PluginRuntime> = Arc::downgrade(runtime);
    let dir: PathBuf = dir.to_path_buf();
    tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            let first = tokio::time::Instant::now();
            loop {
                let quiet = DEBOUNCE.min(MAX_DELAY.saturating_sub(first.elapsed()));
                match tokio::time::timeout(quiet, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let Some(rt) = weak.upgrade() else { return };
            rt.reload_folder(&dir).await;
        }
    });
    Ok(())
}
