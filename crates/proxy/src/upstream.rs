//! An upstream: its targets, a keep-alive connection pool, round-robin choice among healthy
//! targets, health (active checks and failed connections eject a target, passing checks
//! restore it), requests in flight per target, retry settings, timeouts, an optional in-flight
//! cap and the header edits applied to every request sent to it.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use wasmgate_config::UpstreamConfig;

use crate::body::ProxyBody;
use crate::limit::InFlightLimit;

/// One target of an upstream, parsed once, with its live state.
#[derive(Debug)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
    /// Base path prepended to every request path (`""` when none).
    pub base_path: String,
    /// The `Host` header sent unless `preserve_host`.
    pub host_header: HeaderValue,
    /// Region tag.
    pub region: Option<String>,
    /// GPU worker ids behind it.
    pub workers: Vec<String>,
    /// Ejected (by health checks or failed connections).
    ejected: AtomicBool,
    /// When it was ejected, in ms since the upstream was built.
    ejected_at_ms: AtomicU64,
    /// Failures in a row (checks or connections).
    fails: AtomicU32,
    /// Passing checks in a row.
    passes: AtomicU32,
    /// Requests in flight to it.
    in_flight: AtomicU32,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("`{url}`: no scheme"))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("`{url}`: no host"))?;
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|e| format!("`{url}`: {e}"))?;
        Ok(Target {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
            host_header,
            region: None,
            workers: Vec::new(),
            ejected: AtomicBool::new(false),
            ejected_at_ms: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
        })
    }

    /// Whether it is ejected now.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Requests in flight to it.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The absolute URI of `path_and_query` on this target.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<http::Uri, http::Error> {
        let mut pq = String::with_capacity(self.base_path.len() + path.len() + 16);
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

/// The pooled client: plain HTTP when every target is `http://` (cheaper per request: the
/// connector is cloned for each request), rustls-capable otherwise.
#[derive(Clone)]
pub enum UpstreamClient {
    /// Every target is `http://`.
    Http(Client<HttpConnector, ProxyBody>),
    /// At least one target is `https://`.
    Https(Client<HttpsConnector<HttpConnector>, ProxyBody>),
}

impl UpstreamClient {
    /// Sends a request on a pooled connection.
    pub fn request(&self, req: http::Request<ProxyBody>) -> ResponseFuture {
        match self {
            UpstreamClient::Http(c) => c.request(req),
            UpstreamClient::Https(c) => c.request(req),
        }
    }
}

/// A named upstream with its own connection pool.
pub struct Upstream {
    /// Its name in `[upstreams]` (shared: labels and logs clone it without allocating).
    pub name: Arc<str>,
    /// Its targets, in configuration order.
    pub targets: Vec<Target>,
    next: AtomicUsize,
    /// The pooled HTTP client.
    pub client: UpstreamClient,
    /// Time to response headers (and non-streaming bodies).
    pub request_timeout: Duration,
    /// The configured request timeout in ms, for messages.
    pub request_timeout_ms: u64,
    /// In-flight cap, when configured.
    pub limit: Option<Arc<InFlightLimit>>,
    /// Keep the client's `Host`.
    pub preserve_host: bool,
    /// Headers set on every request (values are secrets: marked sensitive).
    pub inject: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed from every request.
    pub remove: Vec<HeaderName>,
    /// Retries of a request that could not reach a target.
    pub retries: u32,
    /// Wait before the first retry (doubled for each later one).
    pub retry_backoff: Duration,
    health: HealthSettings,
    born: Instant,
    http2: bool,
}

/// Health check settings, resolved.
#[derive(Debug, Clone)]
struct HealthSettings {
    path: Option<String>,
    interval: Duration,
    timeout: Duration,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
}

/// A request in flight to one target: counted until dropped (with the response body).
#[derive(Debug)]
pub struct TargetGuard {
    upstream: Arc<Upstream>,
    index: usize,
}

impl Drop for TargetGuard {
    fn drop(&mut self) {
        self.upstream.targets[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the upstream and its (empty) pool; health checks run every
    /// `health_check.interval_ms`, else `default_interval` (once [`Upstream::start`]ed). Errors
    /// name the offending value.
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        default_interval: Duration,
    ) -> Result<Upstream, String> {
        let targets = cfg
            .targets
            .iter()
            .map(|t| {
                let mut target = Target::parse(t)?;
                if let Some(tags) = cfg.target_tags.get(t) {
                    target.region = tags.region.clone();
                    target.workers = tags.workers.clone();
                }
                Ok(target)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
            .pool_max_idle_per_host(cfg.pool_max_idle_per_target)
            .http2_only(cfg.http2);
        let client = if targets.iter().all(|t| t.scheme == Scheme::HTTP) {
            UpstreamClient::Http(builder.build(http))
        } else {
            let tls = crate::tls::client_config()?;
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http();
            let connector = if cfg.http2 {
                https.enable_http2().wrap_connector(http)
            } else {
                https.enable_http1().wrap_connector(http)
            };
            UpstreamClient::Https(builder.build(connector))
        };
        let inject = cfg
            .inject_headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("{k}: {e}"))?;
                let mut value =
                    HeaderValue::from_str(v.expose()).map_err(|e| format!("{k}: {e}"))?;
                value.set_sensitive(true);
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let remove = cfg
            .remove_headers
            .iter()
            .map(|k| HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("{k}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstream {
            name: Arc::from(name),
            targets,
            next: AtomicUsize::new(0),
            client,
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            request_timeout_ms: cfg.request_timeout_ms,
            limit: (cfg.max_in_flight > 0).then(|| InFlightLimit::new(cfg.max_in_flight)),
            preserve_host: cfg.preserve_host,
            inject,
            remove,
            retries: cfg.retries,
            retry_backoff: Duration::from_millis(cfg.retry_backoff_ms),
            health: HealthSettings {
                path: cfg.health_check.path.clone(),
                interval: cfg
                    .health_check
                    .interval_ms
                    .map(Duration::from_millis)
                    .unwrap_or(default_interval),
                timeout: Duration::from_millis(cfg.health_check.timeout_ms),
                unhealthy_threshold: cfg.health_check.unhealthy_threshold,
                healthy_threshold: cfg.health_check.healthy_threshold,
            },
            born: Instant::now(),
            http2: cfg.http2,
        })
    }

    /// Starts the active health checks (when a path is configured), on the current Tokio
    /// runtime. They stop when the upstream is dropped (a reload replaced it).
    pub fn start(self: &Arc<Self>) {
        let (Some(path), Ok(handle)) = (
            self.health.path.clone(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let weak = Arc::downgrade(self);
        handle.spawn(health_loop(weak, path, self.health.interval));
    }

    /// Carries the health of `old`'s targets over to this upstream's targets with the same
    /// URL (a reload that changed the upstream's settings): an ejected target stays ejected
    /// until its checks pass, instead of getting traffic again until it fails anew.
    pub(crate) fn inherit_health(&self, old: &Upstream) {
        for t in &self.targets {
            let Some(o) = old.targets.iter().find(|o| {
                o.scheme == t.scheme && o.authority == t.authority && o.base_path == t.base_path
            }) else {
                continue;
            };
            t.fails
                .store(o.fails.load(Ordering::Relaxed), Ordering::Relaxed);
            t.passes
                .store(o.passes.load(Ordering::Relaxed), Ordering::Relaxed);
            if o.is_ejected() {
                // Ejected "now" on the new clock: at most one interval before a retry.
                t.ejected_at_ms.store(self.now_ms(), Ordering::Relaxed);
                t.ejected.store(true, Ordering::Relaxed);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Whether requests may go to target `i`: not ejected, or (without active checks) ejected
    /// long enough ago to be tried again.
    fn available(&self, i: usize) -> bool {
        let t = &self.targets[i];
        if !t.is_ejected() {
            return true;
        }
        self.health.path.is_none()
            && self
                .now_ms()
                .saturating_sub(t.ejected_at_ms.load(Ordering::Relaxed))
                >= self.health.interval.as_millis() as u64
    }

    /// The target for an attempt: the router's `hint` when it names an available target not
    /// yet `tried`, else the next available one round-robin. When every untried target is
    /// ejected the next untried one is used anyway (better a likely failure than a certain
    /// one); `None` once every target was tried.
    pub fn choose(&self, hint: Option<&str>, tried: &[usize]) -> Option<usize> {
        let n = self.targets.len();
        if let Some(i) =
            hint.and_then(|h| self.targets.iter().position(|t| t.authority.as_str() == h))
        {
            if !tried.contains(&i) && self.available(i) {
                return Some(i);
            }
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let untried = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !tried.contains(i));
        let mut fallback = None;
        for i in untried {
            if self.available(i) {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// Counts a request in flight to target `i` until the guard drops.
    pub fn track(self: &Arc<Self>, i: usize) -> TargetGuard {
        self.targets[i].in_flight.fetch_add(1, Ordering::Relaxed);
        TargetGuard {
            upstream: self.clone(),
            index: i,
        }
    }

    /// Records the outcome of reaching target `i` (a request's connection, or a health check).
    pub fn record(&self, i: usize, ok: bool, source: &str) {
        let t = &self.targets[i];
        if ok {
            // Loads first: the common case (healthy, no failures) writes nothing shared.
            if t.fails.load(Ordering::Relaxed) != 0 {
                t.fails.store(0, Ordering::Relaxed);
            }
            if !t.is_ejected() {
                return;
            }
            let passes = t.passes.fetch_add(1, Ordering::Relaxed) + 1;
            // A request that got through restores at once; active checks need their threshold.
            let restore = source == "request" || passes >= self.health.healthy_threshold;
            if restore && t.ejected.swap(false, Ordering::Relaxed) {
                tracing::info!(upstream = %self.name, target = %t.authority, source, "target restored");
            }
        } else {
            t.passes.store(0, Ordering::Relaxed);
            let fails = t.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if fails >= self.health.unhealthy_threshold {
                t.ejected_at_ms.store(self.now_ms(), Ordering::Relaxed);
                if !t.ejected.swap(true, Ordering::Relaxed) {
                    tracing::warn!(upstream = %self.name, target = %t.authority, source, fails, "target ejected");
                }
            }
        }
    }

    /// One health check of target `i`: `GET` the path, healthy on 2xx/3xx within the timeout.
    async fn check(&self, i: usize, path: &str) -> bool {
        let t = &self.targets[i];
        let Ok(uri) = t.uri(path, None) else {
            return false;
        };
        let mut req = http::Request::new(crate::body::empty());
        *req.uri_mut() = uri;
        req.headers_mut()
            .insert(http::header::HOST, t.host_header.clone());
        req.headers_mut().insert(
            http::header::USER_AGENT,
            HeaderValue::from_static("wasmgate-health-check"),
        );
        match tokio::time::timeout(self.health.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => resp.status().is_success() || resp.status().is_redirection(),
            _ => false,
        }
    }

    /// Targets not ejected.
    pub fn healthy_targets(&self) -> usize {
        self.targets.iter().filter(|t| !t.is_ejected()).count()
    }

    /// Health counts, for `/gateway/health` (no addresses: it needs no credential).
    pub fn health_report(&self) -> serde_json::Value {
        serde_json::json!({
            "healthy": self.healthy_targets(),
            "total": self.targets.len(),
            "active_checks": self.health.path.is_some(),
        })
    }

    /// Whether requests go out as HTTP/2.
    pub fn client_is_http2(&self) -> bool {
        self.http2
    }
}

impl wasmgate_plugin_host::UpstreamView for Upstream {
    fn targets(&self) -> Vec<wasmgate_plugin_host::TargetView> {
        self.targets
            .iter()
            .enumerate()
            .map(|(i, t)| wasmgate_plugin_host::TargetView {
                address: t.authority.to_string(),
                healthy: self.available(i),
                in_flight: t.in_flight(),
                region: t.region.clone(),
                workers: t.workers.clone(),
            })
            .collect()
    }

    fn each_target(&self, f: &mut dyn FnMut(wasmgate_plugin_host::TargetRef<'_>)) {
        for (i, t) in self.targets.iter().enumerate() {
            f(wasmgate_plugin_host::TargetRef {
                address: t.authority.as_str(),
                healthy: self.available(i),
                in_flight: t.in_flight(),
                region: t.region.as_deref(),
                workers: &t.workers,
            });
        }
    }
}

/// Checks every target each `interval`, concurrently, until the upstream is gone.
async fn health_loop(upstream: Weak<Upstream>, path: String, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(u) = upstream.upgrade() else { return };
        let checks = (0..u.targets.len()).map(|i| {
            let u = u.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let ok = u.check(i, &path).await;
                u.record(i, ok, "health-check");
            })
        });
        for c in checks.collect::<Vec<_>>() {
            let _ = c.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_join_base_paths_and_rotate() {
        let cfg = UpstreamConfig {
            targets: vec!["http://a:1/base/".into(), "https://b:2".into()],
            ..Default::default()
        };
        let u = Upstream::new("x", &cfg, Duration::from_secs(1)).unwrap();
        let t = &u.targets[u.choose(None, &[]).unwrap()];
        assert_eq!(
            t.uri("/v1/x", Some("a=1")).unwrap().to_string(),
            "http://a:1/base/v1/x?a=1"
        );
        let t = &u.targets[u.choose(None, &[]).unwrap()];
        assert_eq!(t.uri("/", None).unwrap().to_string(), "https://b:2/");
        assert_eq!(u.choose(None, &[]), Some(0));
    }

    fn three() -> Upstream {
        let cfg = UpstreamConfig {
            targets: vec![
                "http://a:1".into(),
                "http://b:2".into(),
                "http://c:3".into(),
            ],
            health_check: wasmgate_config::HealthCheckConfig {
                path: Some("/health".into()),
                unhealthy_threshold: 2,
                healthy_threshold: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        Upstream::new("x", &cfg, Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn ejected_targets_are_skipped_and_restored_after_the_threshold() {
        let u = three();
        u.record(1, false, "health-check");
        assert!(
            !u.targets[1].is_ejected(),
            "one failure is under the threshold"
        );
        u.record(1, false, "health-check");
        assert!(u.targets[1].is_ejected());
        for _ in 0..12 {
            assert_ne!(u.choose(None, &[]), Some(1));
        }
        // A router's hint for an ejected target is not honoured.
        assert_ne!(u.choose(Some("b:2"), &[]), Some(1));
        assert_eq!(u.choose(Some("c:3"), &[]), Some(2));
        u.record(1, true, "health-check");
        assert!(
            u.targets[1].is_ejected(),
            "one pass is under the healthy threshold"
        );
        u.record(1, true, "health-check");
        assert!(!u.targets[1].is_ejected());
    }

    #[test]
    fn retries_pick_untried_targets_then_stop() {
        let u = three();
        let first = u.choose(None, &[]).unwrap();
        let second = u.choose(None, &[first]).unwrap();
        assert_ne!(first, second);
        let third = u.choose(None, &[first, second]).unwrap();
        assert!(third != first && third != second);
        assert_eq!(u.choose(None, &[0, 1, 2]), None);
        // With every target ejected, one is still chosen (panic mode).
        for i in 0..3 {
            u.record(i, false, "health-check");
            u.record(i, false, "health-check");
        }
        assert!(u.choose(None, &[]).is_some());
    }
}
