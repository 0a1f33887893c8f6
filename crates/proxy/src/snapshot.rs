//! The running configuration, swapped atomically on reload.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use wasmgate_config::{parse_trusted_proxy, Config};

use crate::forwarded::Forwarded;
use crate::limit::InFlightLimit;
use crate::routes::RouteTable;
use crate::upstream::Upstream;

/// Why a configuration could not be turned into a running snapshot.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An upstream could not be built.
    #[error("upstreams.{name}: {message}")]
    Upstream {
        /// Upstream name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A trusted proxy entry does not parse.
    #[error("forwarded.trusted_proxies: {0}")]
    TrustedProxy(String),
    /// The trace exporters could not start.
    #[error("{0}")]
    Otel(String),
}

/// Everything a request needs from the configuration, built once per (re)load.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration this was built from.
    pub config: Arc<Config>,
    /// Compiled routes.
    pub routes: RouteTable,
    /// Upstreams by name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// The upstream of each route, in `routes.routes()` order (resolved once, not per request).
    route_upstreams: Vec<Arc<Upstream>>,
    pub(crate) forwarded: Forwarded,
}

impl Snapshot {
    /// The route matching `path` and its upstream.
    pub fn route(&self, path: &str) -> Option<(&crate::routes::Route, &Arc<Upstream>)> {
        let i = self.routes.find_index(path)?;
        Some((&self.routes.routes()[i], &self.route_upstreams[i]))
    }

    /// The client's address: the peer, or the first untrusted hop of `X-Forwarded-For`
    /// when the peer is a trusted proxy (and forwarding is configured).
    pub fn client_ip(&self, peer: std::net::IpAddr, headers: &http::HeaderMap) -> std::net::IpAddr {
        self.forwarded.client_ip(peer, headers)
    }

    /// Builds a snapshot, reusing `previous`'s upstream pools whose settings did not change
    /// (so a reload keeps warm connections).
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, BuildError> {
        let mut upstreams = HashMap::new();
        let mut fresh = Vec::new();
        let interval = Duration::from_millis(config.router.health_check_interval_ms);
        for (name, cfg) in &config.upstreams {
            let reused = previous.and_then(|p| {
                (p.config.upstreams.get(name) == Some(cfg)
                    && p.config.router.health_check_interval_ms
                        == config.router.health_check_interval_ms)
                    .then(|| p.upstreams.get(name).cloned())
                    .flatten()
            });
            let upstream = match reused {
                Some(u) => u,
                None => {
                    let u = Upstream::new(name, cfg, interval).map_err(|message| {
                        BuildError::Upstream {
                            name: name.clone(),
                            message,
                        }
                    })?;
                    if let Some(old) = previous.and_then(|p| p.upstreams.get(name)) {
                        u.inherit_health(old);
                    }
                    let u = Arc::new(u);
                    fresh.push(u.clone());
                    u
                }
            };
            upstreams.insert(name.clone(), upstream);
        }
        let trusted = config
            .forwarded
            .trusted_proxies
            .iter()
            .map(|p| parse_trusted_proxy(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BuildError::TrustedProxy)?;
        // Only once the whole snapshot is valid: a refused reload starts nothing.
        let routes = RouteTable::new(&config.routes);
        let route_upstreams = routes
            .routes()
            .iter()
            .map(|r| {
                upstreams
                    .get(&r.upstream)
                    .cloned()
                    .ok_or_else(|| BuildError::Upstream {
                        name: r.upstream.clone(),
                        message: format!("route `{}` points at an undefined upstream", r.name),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for u in &fresh {
            u.start();
        }
        Ok(Snapshot {
            routes,
            route_upstreams,
            forwarded: Forwarded {
                enabled: config.forwarded.enabled,
                trusted,
            },
            upstreams,
            config: Arc::new(config),
        })
    }
}

pub(crate) struct GatewayInner {
    pub snapshot: ArcSwap<Snapshot>,
    pub plugins: Option<Arc<wasmgate_plugin_host::PluginRuntime>>,
    pub services: Arc<wasmgate_plugin_host::HostServices>,
    pub in_flight: Option<Arc<InFlightLimit>>,
    pub started: Instant,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Trace export (`otel.*`, read at startup).
    pub otel: Option<crate::otel::Otel>,
    /// Held while the built-ins are configured (a reload, a new JWKS): each pass reads the
    /// configuration current when it holds it, so the last pass always installs the latest.
    pub builtins_lock: tokio::sync::Mutex<()>,
}

impl GatewayInner {
    /// Configures the built-ins from the configuration current now (after a reload changed
    /// their settings, or new JWKS keys arrived); on error the running ones keep serving.
    pub(crate) async fn configure_builtins(&self, why: &str) {
        let Some(rt) = &self.plugins else { return };
        let _held = self.builtins_lock.lock().await;
        let config = self.snapshot.load().config.clone();
        match wasmgate_plugin_host::builtins::configure(rt, &config).await {
            Ok(()) => tracing::info!(why, "built-in plugins reconfigured"),
            Err(e) => {
                tracing::warn!(why, error = %e, "built-in plugins not reconfigured; the previous ones keep serving")
            }
        }
    }
}

/// The gateway: the current snapshot plus process-wide state. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<GatewayInner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds a gateway from a validated configuration, without plugins.
    pub fn new(config: Config) -> Result<Gateway, BuildError> {
        Gateway::with_plugins(config, None)
    }

    /// Builds a gateway whose routes run the chain of `plugins`, with the plugins' state (or
    /// a fresh in-memory store when there are none).
    pub fn with_plugins(
        config: Config,
        plugins: Option<Arc<wasmgate_plugin_host::PluginRuntime>>,
    ) -> Result<Gateway, BuildError> {
        let services = match &plugins {
            Some(rt) => rt.services().clone(),
            None => wasmgate_plugin_host::HostServices::in_memory(&config.redis.key_prefix).0,
        };
        Gateway::with_state(config, plugins, services)
    }

    /// Builds a gateway over shared state (`services`: the store and worker registry the
    /// plugins use, reported by `/gateway/health` and served by the workers endpoint).
    pub fn with_state(
        config: Config,
        plugins: Option<Arc<wasmgate_plugin_host::PluginRuntime>>,
        services: Arc<wasmgate_plugin_host::HostServices>,
    ) -> Result<Gateway, BuildError> {
        let max = config.server.max_in_flight;
        let otel = crate::otel::Otel::start(&config.otel).map_err(BuildError::Otel)?;
        let snapshot = Snapshot::build(config, None)?;
        let with_plugins = plugins.is_some();
        let gateway = Gateway {
            inner: Arc::new(GatewayInner {
                snapshot: ArcSwap::from_pointee(snapshot),
                plugins,
                services,
                in_flight: (max > 0).then(|| InFlightLimit::new(max)),
                started: Instant::now(),
                metrics: Arc::new(crate::metrics::Metrics::new()),
                otel,
                builtins_lock: tokio::sync::Mutex::new(()),
            }),
        };
        if with_plugins {
            // `auth.jwt_jwks_url`, now or after a reload.
            crate::jwks::spawn(Arc::downgrade(&gateway.inner));
        }
        Ok(gateway)
    }

    /// Exports the spans still batched and stops the trace exporters (at shutdown; blocks
    /// while the last export runs).
    pub fn shutdown_telemetry(&self) {
        if let Some(otel) = &self.inner.otel {
            otel.shutdown();
        }
    }

    /// The snapshot requests use now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    /// Swaps in a new configuration. Requests in flight finish on the old snapshot. Listener
    /// settings (`server.host`, `port`, `tls`, `workers`, `http2`, `max_in_flight`,
    /// `header_read_timeout_ms`) need a restart; a change to them is reported in the result.
    pub fn reload(&self, config: Config) -> Result<Vec<&'static str>, BuildError> {
        let current = self.snapshot();
        let old = &current.config.server;
        let new = &config.server;
        let mut restart = Vec::new();
        let checks: [(&'static str, bool); 7] = [
            ("server.host", old.host != new.host),
            ("server.port", old.port != new.port),
            ("server.tls", old.tls != new.tls),
            ("server.workers", old.workers != new.workers),
            ("server.http2", old.http2 != new.http2),
            (
                "server.max_in_flight",
                old.max_in_flight != new.max_in_flight,
            ),
            (
                "server.header_read_timeout_ms",
                old.header_read_timeout_ms != new.header_read_timeout_ms,
            ),
        ];
        for (key, changed) in checks {
            if changed {
                restart.push(key);
            }
        }
        let builtins_changed = wasmgate_plugin_host::builtins::differ(&current.config, &config);
        let next = Snapshot::build(config, Some(&current))?;
        self.inner.snapshot.store(Arc::new(next));
        if let (true, Some(_), Ok(handle)) = (
            builtins_changed,
            self.plugins(),
            tokio::runtime::Handle::try_current(),
        ) {
            let inner = self.inner.clone();
            handle.spawn(async move { inner.configure_builtins("configuration reloaded").await });
        }
        Ok(restart)
    }

    /// The plugin runtime, when plugins are enabled.
    pub fn plugins(&self) -> Option<&Arc<wasmgate_plugin_host::PluginRuntime>> {
        self.inner.plugins.as_ref()
    }

    /// The state store, worker registry and plugin metrics.
    pub fn services(&self) -> &Arc<wasmgate_plugin_host::HostServices> {
        &self.inner.services
    }

    /// Seconds since the gateway was built.
    pub fn uptime_secs(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }
}
