//! The wasmtime engine: configuration, the epoch ticker, and compilation with an on-disk cache.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::host::HostState;
use crate::{PluginError, Result};

/// How often the epoch advances; CPU budgets are rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where compiled components are cached (`None` = no cache).
    pub cache_dir: Option<PathBuf>,
    /// Largest linear memory any plugin may reserve, in bytes (the per-plugin cap is lower).
    pub max_memory_bytes: u64,
    /// Component instances alive at once, across all plugins.
    pub total_instances: u32,
    /// Write `/tmp/perf-<pid>.map`, so that `perf report` names the functions of plugins.
    pub perf_map: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_dir: None,
            max_memory_bytes: 512 << 20,
            total_instances: 1000,
            perf_map: false,
        }
    }
}

/// The engine, the linker with every host import, and the epoch ticker.
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    stop_ticker: Arc<AtomicBool>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl PluginEngine {
    /// Builds the engine (pooling allocator, epoch interruption, async) and its linker.
    pub fn new(opts: EngineOptions) -> Result<PluginEngine> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(opts.total_instances)
            // A componentize-py guest has 14 core modules and several memories and tables.
            .total_core_instances(opts.total_instances * 16)
            .total_memories(opts.total_instances * 4)
            .total_tables(opts.total_instances * 8)
            .max_memories_per_component(16)
            .max_tables_per_component(32)
            .max_core_instances_per_component(64)
            .table_elements(100_000)
            .max_memory_size(opts.max_memory_bytes as usize)
            .linear_memory_keep_resident(64 << 10);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if opts.perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(PluginError::engine)?;
        let mut linker = Linker::new(&engine);
        crate::host::add_to_linker(&mut linker).map_err(PluginError::engine)?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        if let Some(dir) = &opts.cache_dir {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "plugin compile cache disabled");
            }
        }
        Ok(PluginEngine {
            engine,
            linker,
            cache_dir: opts.cache_dir,
            stop_ticker,
        })
    }

    /// The key under which a component's compiled code is cached: the wasm's sha256 and the
    /// engine's compatibility hash (a `.cwasm` from another engine configuration never loads).
    fn cache_path(&self, sha256_hex: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut h);
        let engine_key = std::hash::Hasher::finish(&h);
        Some(dir.join(format!("{sha256_hex}-{engine_key:016x}.cwasm")))
    }

    /// Compiles `wasm` (a component), using the disk cache when possible. Returns the component
    /// and whether it came from the cache.
    pub fn compile(&self, wasm: &[u8]) -> Result<(Component, bool)> {
        let sha = sha256_hex(wasm);
        if let Some(path) = self.cache_path(&sha) {
            if path.exists() {
                match self.load_cached(&path) {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compile cache entry");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            let compiled = self
                .engine
                .precompile_component(wasm)
                .map_err(PluginError::compile)?;
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &compiled)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .is_err()
            {
                let _ = std::fs::remove_file(&tmp);
            }
            if let Ok(c) = self.load_cached(&path) {
                return Ok((c, false));
            }
        }
        let c = Component::new(&self.engine, wasm).map_err(PluginError::compile)?;
        Ok((c, false))
    }

    /// Loads compiled code from the cache.
    #[allow(unsafe_code)]
    fn load_cached(&self, path: &std::path::Path) -> Result<Component> {
        // SAFETY: `deserialize_file` trusts that the file is compiled code produced by
        // `Engine::precompile_component` of a compatible engine. Only this process writes the
        // cache directory (atomically, via rename), files are named by the wasm's sha256 and
        // the engine's compatibility hash, and wasmtime checks the engine compatibility header
        // on load. The cache directory must not be writable by untrusted users (docs).
        unsafe { Component::deserialize_file(&self.engine, path) }.map_err(PluginError::compile)
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
