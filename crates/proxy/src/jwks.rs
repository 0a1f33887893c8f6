//! Fetching an identity provider's JWKS (`auth.jwt_jwks_url`) for the `auth` built-in, as
//! Envoy's `remote_jwks` does: fetched at start, again every `auth.jwt_jwks_refresh_s`, and at
//! once when a reload sets or changes the URL. A new document reconfigures the built-ins (the
//! running chain keeps serving until the new one is installed); a failed fetch or an invalid
//! document keeps the keys of the last good one and is retried sooner.
use std::sync::Weak;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::snapshot::GatewayInner;

/// How often the loop looks at the configuration (a reload may set or change the URL).
const TICK: Duration = Duration::from_secs(1);
/// After a failure, the next try comes this soon (or at the refresh interval, if shorter).
const RETRY: Duration = Duration::from_secs(10);
/// A fetch gives up after this long.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document accepted.
const MAX_BYTES: usize = 1 << 20;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn client() -> Result<HttpsClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::client_config()?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// GETs `url` and returns its body (a 2xx of at most [`MAX_BYTES`]).
async fn fetch(client: &HttpsClient, url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let req = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("wasmgate/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let body = tokio::time::timeout(TIMEOUT, async {
        let resp = client.request(req).await.map_err(|e| format!("{e}"))?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("reading the body: {e}"))
    })
    .await
    .map_err(|_| format!("no answer within {} s", TIMEOUT.as_secs()))??;
    String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8".to_string())
}

/// Fetches `url` and records the document for the `auth` built-in: `Ok(true)` when it
/// changed.
async fn fetch_and_record(client: &HttpsClient, url: &str) -> Result<bool, String> {
    let doc = fetch(client, url).await?;
    wasmgate_plugin_host::builtins::set_remote_jwks(url, doc)
}

/// [`fetch_and_record`] once, before the plugins start, so the first requests find the keys
/// (the gateway's refresh loop takes over from there).
pub async fn fetch_into_builtins(url: &str) -> Result<bool, String> {
    fetch_and_record(&client()?, url).await
}

/// Starts the refresh loop of a gateway (it ends when the gateway is dropped). Does nothing
/// outside a Tokio runtime.
pub(crate) fn spawn(gateway: Weak<GatewayInner>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let client = match client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "JWKS fetching unavailable");
                return;
            }
        };
        // The URL last fetched, and when it is due again.
        let mut due: Option<(String, Instant)> = None;
        loop {
            let (url, every, with_plugins) = {
                let Some(inner) = gateway.upgrade() else {
                    return;
                };
                let config = inner.snapshot.load().config.clone();
                let a = &config.auth;
                let url = if a.enabled { a.jwt_jwks_url.clone() } else { None };
                let every = Duration::from_secs(a.jwt_jwks_refresh_s.max(1));
                (url, every, inner.plugins.is_some())
            };
            let fetch_now = match (&url, &due) {
                (Some(url), Some((last, at))) => url != last || Instant::now() >= *at,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if let (true, Some(url), true) = (fetch_now, url, with_plugins) {
                let next = match fetch_and_record(&client, &url).await {
                    Ok(true) => {
                        let Some(inner) = gateway.upgrade() else {
                            return;
                        };
                        tracing::info!(%url, "JWKS fetched: new keys for the auth plugin");
                        inner.configure_builtins("new JWKS keys").await;
                        every
                    }
                    Ok(false) => every,
                    Err(e) => {
                        tracing::warn!(%url, error = %e, "JWKS not fetched; the keys of the last good fetch stay");
                        RETRY.min(every)
                    }
                };
                due = Some((url, Instant::now() + next));
            }
            tokio::time::sleep(TICK).await;
        }
    });
}
