//! The configuration model. Every struct refuses unknown keys; every field has a default,
//! so an empty file is a valid (if useless) configuration. docs/configuration.md documents
//! each key. The built-ins' sections and `[workers]` are in `builtins.rs`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Secret;

/// The whole gateway configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listener, limits, TLS, worker threads.
    pub server: ServerConfig,
    /// `X-Forwarded-*` handling.
    pub forwarded: ForwardedConfig,
    /// Path-prefix routes, matched longest first.
    pub routes: Vec<RouteConfig>,
    /// Named upstreams the routes point at.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Shared state backend (unset URL = in-memory).
    pub redis: RedisConfig,
    /// Logging.
    pub log: LogConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// OpenTelemetry export.
    pub otel: OtelConfig,
    /// Admin endpoints.
    pub admin: AdminConfig,
    /// The plugin folder.
    pub plugins: PluginsConfig,
    /// The auth built-in.
    pub auth: AuthConfig,
    /// The rate-limit built-in.
    pub rate_limit: RateLimitConfig,
    /// The cache built-in.
    pub cache: CacheConfig,
    /// The router built-in.
    pub router: RouterConfig,
    /// The GPU worker registry (read from Redis heartbeats).
    pub workers: WorkersConfig,
    /// The cors built-in.
    pub cors: CorsConfig,
    /// The security-headers built-in.
    pub security_headers: SecurityHeadersConfig,
    /// The request-signing built-in.
    pub request_signing: RequestSigningConfig,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind (`GATEWAY_HOST`).
    pub host: String,
    /// Port to bind (`GATEWAY_PORT`); 0 picks a free one.
    pub port: u16,
    /// Tokio worker threads (`GATEWAY_WORKERS`); 0 = number of cores.
    pub workers: usize,
    /// Cap on requests in flight across all connections; 0 = unlimited.
    pub max_in_flight: usize,
    /// Largest total size of request header names and values, in bytes (431 above).
    pub max_header_bytes: usize,
    /// Largest request body, in bytes (413 above).
    pub max_body_bytes: u64,
    /// Time a client has to send the complete request head, in ms.
    pub header_read_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may run before they are cut, in ms.
    pub shutdown_grace_ms: u64,
    /// Accept HTTP/2 (ALPN `h2` under TLS, prior knowledge in cleartext).
    pub http2: bool,
    /// Inbound TLS; absent = cleartext.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 3000,
            workers: 0,
            max_in_flight: 10_000,
            max_header_bytes: 32 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            shutdown_grace_ms: 30_000,
            http2: true,
            tls: None,
        }
    }
}

/// `[server.tls]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// `[forwarded]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardedConfig {
    /// Set `X-Forwarded-For`, `-Proto` and `-Host` on upstream requests.
    pub enabled: bool,
    /// Peers (IPs or CIDRs) whose incoming `X-Forwarded-*` values are believed and extended.
    pub trusted_proxies: Vec<String>,
}

/// `[[routes]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for metrics and logs; defaults to the prefix.
    #[serde(default)]
    pub name: Option<String>,
    /// Path prefix, matched on segment boundaries.
    pub prefix: String,
    /// The upstream's name in `[upstreams]`.
    pub upstream: String,
    /// Remove the prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
}

impl RouteConfig {
    /// The route's name, or its prefix when unnamed.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.prefix)
    }
}

/// `[upstreams.NAME]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Target base URLs (`http://host:port[/base]` or `https://...`), round-robin.
    pub targets: Vec<String>,
    /// Time to open a connection, in ms.
    pub connect_timeout_ms: u64,
    /// Time to response headers and, unless the response is `text/event-stream`, the body, in ms.
    pub request_timeout_ms: u64,
    /// Cap on requests in flight to this upstream; 0 = unlimited.
    pub max_in_flight: usize,
    /// Speak HTTP/2 (prior knowledge for `http://`, ALPN for `https://`).
    pub http2: bool,
    /// Keep the client's `Host` instead of the target's.
    pub preserve_host: bool,
    /// Headers set on every upstream request; values may use `${ENV}` and are secrets.
    pub inject_headers: BTreeMap<String, Secret>,
    /// Headers removed from every upstream request.
    pub remove_headers: Vec<String>,
    /// Idle keep-alive connections are closed after this many ms.
    pub pool_idle_timeout_ms: u64,
    /// Idle keep-alive connections kept per target.
    pub pool_max_idle_per_target: usize,
    /// Tags of targets, by target URL (as written in `targets`): region and GPU workers, for
    /// the router's `region-affinity` and `least-loaded` strategies.
    pub target_tags: BTreeMap<String, TargetTags>,
    /// Active health checks of the targets.
    pub health_check: HealthCheckConfig,
    /// Times a request that could not reach a target is tried on another one (connect
    /// failures: any method, the body was never sent; other failures before a response:
    /// idempotent methods whose body was not sent). 0 = never.
    pub retries: u32,
    /// Wait before the first retry, doubled for each later one, in ms.
    pub retry_backoff_ms: u64,
}

/// `[upstreams.NAME.target_tags."URL"]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetTags {
    /// The target's region (e.g. `eu-west`).
    pub region: Option<String>,
    /// Ids of the GPU workers (as they heartbeat: `worker:{id}:heartbeat`) behind the target.
    pub workers: Vec<String>,
}

/// `[upstreams.NAME.health_check]`: a target that fails `unhealthy_threshold` checks in a row
/// (or connections in a row) is ejected: no request goes to it while another target is
/// healthy. It is restored after `healthy_threshold` passing checks (without active checks:
/// tried again after `interval_ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path probed with `GET` on each target (below its base path); unset = no active checks
    /// (connect failures still eject).
    pub path: Option<String>,
    /// Time between checks, in ms; unset = `router.health_check_interval_ms`.
    pub interval_ms: Option<u64>,
    /// A check fails when no 2xx/3xx comes within this many ms.
    pub timeout_ms: u64,
    /// Failures in a row that eject a target.
    pub unhealthy_threshold: u32,
    /// Passing checks in a row that restore it.
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: None,
            interval_ms: None,
            timeout_ms: 2_000,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            targets: Vec::new(),
            connect_timeout_ms: 5_000,
            request_timeout_ms: 60_000,
            max_in_flight: 0,
            http2: false,
            preserve_host: false,
            inject_headers: BTreeMap::new(),
            remove_headers: Vec::new(),
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_target: 256,
            target_tags: BTreeMap::new(),
            health_check: HealthCheckConfig::default(),
            retries: 1,
            retry_backoff_ms: 25,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://`, `rediss://`, `redis-sentinel://` or `redis-cluster://` URL; unset = in-memory state.
    pub url: Option<Secret>,
    /// `REDIS_PASSWORD`, when not in the URL.
    pub password: Option<Secret>,
    /// `REDIS_DB`.
    pub db: u8,
    /// Prefix of every key the gateway writes (`REDIS_KEY_PREFIX`).
    pub key_prefix: String,
    /// Timeout of every Redis command, in ms. While Redis is known to be down, operations fail
    /// at once instead of waiting this long.
    pub command_timeout_ms: u64,
    /// Connections in the pool (commands are pipelined on each); unset = one per worker
    /// thread, as Envoy's Redis proxy keeps one connection per worker.
    pub pool_size: Option<usize>,
    /// Rate-limit decisions made at the same moment go to Redis together, as one script call
    /// (one write and one script run for all; each decided exactly as alone). A decision made
    /// alone waits one pass of the runtime's scheduler. false: one `EVALSHA` each.
    pub batch_window_decisions: bool,
    /// Keys the embedded in-memory store holds at most (used when `url` is unset); past it,
    /// expired keys and then the least recently used are evicted.
    pub memory_max_keys: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            password: None,
            db: 0,
            key_prefix: "gateway:".into(),
            command_timeout_ms: 200,
            pool_size: None,
            batch_window_decisions: true,
            memory_max_keys: 100_000,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
    /// One access-log line per request.
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics.
    pub enabled: bool,
    /// Where (`METRICS_PATH`).
    pub path: String,
    /// Bearer token required to scrape; unset = open.
    pub token: Option<Secret>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            path: "/gateway/metrics".into(),
            token: None,
        }
    }
}

/// `[otel]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// Export spans.
    pub enabled: bool,
    /// `service.name` of the spans.
    pub service_name: String,
    /// OTLP http/protobuf endpoint.
    pub otlp_endpoint: Option<String>,
    /// Zipkin v2 endpoint.
    pub zipkin_endpoint: Option<String>,
    /// Fraction of new traces sampled, 0.0–1.0.
    pub sampling_ratio: f64,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            enabled: false,
            service_name: "wasmgate".into(),
            otlp_endpoint: None,
            zipkin_endpoint: None,
            sampling_ratio: 1.0,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for admin endpoints (`GATEWAY_ADMIN_TOKEN`); unset = those endpoints answer 403.
    pub token: Option<Secret>,
}

/// `[plugins]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Run plugins at all (off = no wasm engine is started).
    pub enabled: bool,
    /// The watched plugin folder (`PLUGINS_DIR`).
    pub dir: String,
    /// Where compiled plugins are cached; unset = `<dir>/.cache`.
    pub cache_dir: Option<String>,
    /// Run the built-ins whose only phase is `on-request-headers` (auth, rate-limit, router,
    /// cors, security-headers) as members of one component, so that a route's consecutive
    /// built-ins cost one instance and one call per request (`PLUGINS_FUSE_BUILTINS`). False
    /// gives each its own instances (and linear memory).
    pub fuse_builtins: bool,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            enabled: true,
            dir: "./plugins".into(),
            cache_dir: None,
            fuse_builtins: true,
        }
    }
}

mod builtins;

pub use builtins::*;
