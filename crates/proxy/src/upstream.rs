//! An upstream: its targets, a keep-alive connection pool, round-robin choice, timeouts,
//! an optional in-flight cap and the header edits applied to every request sent to it.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use wasmgate_config::UpstreamConfig;

use crate::body::ProxyBody;
use crate::limit::InFlightLimit;

/// One target of an upstream, parsed once.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
    /// Base path prepended to every request path (`""` when none).
    pub base_path: String,
    /// The `Host` header sent unless `preserve_host`.
    pub host_header: HeaderValue,
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
        })
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
    /// Its name in `[upstreams]`.
    pub name: String,
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
    http2: bool,
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
    /// Builds the upstream and its (empty) pool. Errors name the offending value.
    pub fn new(name: &str, cfg: &UpstreamConfig) -> Result<Upstream, String> {
        let targets = cfg
            .targets
            .iter()
            .map(|t| Target::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
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
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(rustls::RootCertStore::from_iter(
                webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
            ))
            .with_no_client_auth();
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
            name: name.to_string(),
            targets,
            next: AtomicUsize::new(0),
            client,
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            request_timeout_ms: cfg.request_timeout_ms,
            limit: (cfg.max_in_flight > 0).then(|| InFlightLimit::new(cfg.max_in_flight)),
            preserve_host: cfg.preserve_host,
            inject,
            remove,
            http2: cfg.http2,
        })
    }

    /// Whether requests go out as HTTP/2.
    pub fn client_is_http2(&self) -> bool {
        self.http2
    }

    /// The target whose `host:port` is `hint` (a router plugin's choice), if it is one of ours.
    pub fn target_named(&self, hint: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.authority.as_str() == hint)
    }

    /// The next target, round-robin.
    pub fn next_target(&self) -> &Target {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.targets[i % self.targets.len()]
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
        let u = Upstream::new("x", &cfg).unwrap();
        let t = u.next_target();
        assert_eq!(
            t.uri("/v1/x", Some("a=1")).unwrap().to_string(),
            "http://a:1/base/v1/x?a=1"
        );
        let t = u.next_target();
        assert_eq!(t.uri("/", None).unwrap().to_string(), "https://b:2/");
        assert_eq!(u.next_target().authority.as_str(), "a:1");
    }
}
