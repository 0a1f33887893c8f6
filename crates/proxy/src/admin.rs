//! Endpoints the gateway answers itself, before routing: `/gateway/health` (and `/live`,
//! `/ready` for Kubernetes probes), `GET /gateway/config` (admin), `GET /gateway/plugins`, `POST /gateway/plugins/{name}/enable|disable|reload` and
//! `POST /gateway/cache/purge[?prefix=/path]`.
//! State-changing endpoints need `Authorization: Bearer <admin.token>`; with no admin token
//! configured they answer 403 and say how to set one.
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use wasmgate_plugin_host::{LoadedPlugin, PluginRuntime};

use crate::body::{full, ProxyBody};
use crate::error::{error_response, ProxyError};
use crate::headers::{request_id_str, X_REQUEST_ID};
use crate::{Gateway, VERSION};

/// The health endpoint, answered before routing and before the in-flight cap.
pub const HEALTH_PATH: &str = "/gateway/health";
const PLUGINS_PATH: &str = "/gateway/plugins";
const PURGE_PATH: &str = "/gateway/cache/purge";
const CONFIG_PATH: &str = "/gateway/config";
/// The dashboard page (no data in it: it asks for the admin token and reads the endpoints).
pub const UI_PATH: &str = "/gateway/ui";
/// The GPU worker registry for the dashboard (admin token).
const WORKERS_PATH: &str = "/gateway/workers";
/// The dashboard: one self-contained page (no CDN), served from the binary.
const UI_HTML: &str = include_str!("ui.html");
/// Liveness: the process serves requests.
pub const LIVE_PATH: &str = "/gateway/health/live";
/// Readiness: the gateway can serve traffic (not `unhealthy`).
pub const READY_PATH: &str = "/gateway/health/ready";
/// Cache entries read per store call while purging by prefix.
const PURGE_BATCH: usize = 100;

/// Answers a local endpoint, or `None` to route the request.
pub(crate) async fn local<B>(
    gw: &Gateway,
    req: &Request<B>,
    request_id: &HeaderValue,
) -> Option<Response<ProxyBody>> {
    let path = req.uri().path();
    match path {
        HEALTH_PATH | READY_PATH => {
            let report = health(gw);
            let status = match report["status"].as_str() {
                Some("unhealthy") => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::OK,
            };
            let body = if path == READY_PATH {
                json!({"status": report["status"]})
            } else {
                report
            };
            return Some(json_response(status, &body, request_id));
        }
        LIVE_PATH => {
            let body = json!({"status": "alive", "uptime_s": gw.uptime_secs()});
            return Some(json_response(StatusCode::OK, &body, request_id));
        }
        UI_PATH => {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return Some(error_response(
                    &ProxyError::MethodNotAllowed,
                    request_id_str(request_id),
                ));
            }
            // The page reads the metrics where this gateway serves them (`null`: metrics off).
            let m = &gw.snapshot().config.metrics;
            let metrics_path = match m.enabled {
                true => serde_json::to_string(&m.path).unwrap_or_default(),
                false => "null".into(),
            };
            let page = UI_HTML.replace("\"__METRICS_PATH__\"", &metrics_path);
            let mut resp = Response::new(full(Bytes::from(page)));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            // Everything the page runs is in it; it talks only to this origin.
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
                ),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(X_REQUEST_ID, request_id.clone());
            return Some(resp);
        }
        CONFIG_PATH | WORKERS_PATH => {
            let result = match req.method() {
                &Method::GET => authorize(gw, req).map(|()| match path {
                    CONFIG_PATH => effective_config(gw),
                    _ => {
                        let workers = gw.services().workers.active();
                        json!({"workers": workers, "total": workers.len()})
                    }
                }),
                _ => Err(ProxyError::MethodNotAllowed),
            };
            return Some(match result {
                Ok(v) => json_response(StatusCode::OK, &v, request_id),
                Err(e) => error_response(&e, request_id_str(request_id)),
            });
        }
        _ => {}
    }
    let snap = gw.snapshot();
    let m = &snap.config.metrics;
    if m.enabled && path == m.path {
        let admin = snap.config.admin.token.as_ref();
        return Some(match metrics_endpoint(gw, req, m.token.as_ref(), admin) {
            Ok(text) => {
                let mut resp = Response::new(full(Bytes::from(text)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
                resp
            }
            Err(e) => error_response(&e, request_id_str(request_id)),
        });
    }
    if path == PURGE_PATH {
        let result = match req.method() {
            &Method::POST => match authorize(gw, req) {
                Ok(()) => purge(gw, query_param(req.uri(), "prefix").as_deref()).await,
                Err(e) => Err(e),
            },
            _ => Err(ProxyError::MethodNotAllowed),
        };
        return Some(match result {
            Ok(v) => json_response(StatusCode::OK, &v, request_id),
            Err(e) => error_response(&e, request_id_str(request_id)),
        });
    }
    // On a segment boundary: `/gateway/pluginsX` is an ordinary routed path.
    let rest = path
        .strip_prefix(PLUGINS_PATH)
        .filter(|r| r.is_empty() || r.starts_with('/'))?;
    let rid = request_id_str(request_id);
    let result = plugins_endpoint(gw, req, rest).await;
    Some(match result {
        Ok(v) => json_response(StatusCode::OK, &v, request_id),
        Err(e) => error_response(&e, rid),
    })
}

async fn plugins_endpoint<B>(
    gw: &Gateway,
    req: &Request<B>,
    rest: &str,
) -> Result<Value, ProxyError> {
    let runtime = gw.plugins();
    match (req.method(), rest) {
        (&Method::GET, "" | "/") => Ok(match runtime {
            Some(rt) => list(rt),
            None => json!({"plugins": [], "refused": [], "enabled": false}),
        }),
        (&Method::POST, action) => {
            authorize(gw, req)?;
            let rt =
                runtime.ok_or_else(|| ProxyError::NotFound("plugins are not enabled".into()))?;
            let (name, verb) = action
                .trim_start_matches('/')
                .split_once('/')
                .ok_or_else(|| {
                    ProxyError::NotFound(format!("no endpoint {PLUGINS_PATH}{action}"))
                })?;
            let plugin = rt
                .find(name)
                .ok_or_else(|| ProxyError::NotFound(format!("no plugin named `{name}`")))?;
            match verb {
                "enable" => rt.find_all(name).iter().for_each(|p| p.set_enabled(true)),
                "disable" => rt.find_all(name).iter().for_each(|p| p.set_enabled(false)),
                "reload" => match rt.folder() {
                    Some(dir) => rt.reload_folder(&dir).await,
                    None => plugin.recycle(),
                },
                other => {
                    return Err(ProxyError::NotFound(format!(
                        "no action `{other}` (enable, disable, reload)"
                    )))
                }
            }
            let plugin = rt.find(name).unwrap_or(plugin);
            Ok(describe(&plugin))
        }
        _ => Err(ProxyError::MethodNotAllowed),
    }
}

/// One query parameter, decoded (`%XX`, `+`).
fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Removes cached responses (all, or those whose path starts with `prefix`) from the `cache`
/// namespace and every tenant's, with their index entries. Entries are the cache built-in's:
/// a JSON head line holding the `path`, then the body.
async fn purge(gw: &Gateway, prefix: Option<&str>) -> Result<Value, ProxyError> {
    let services = gw.services();
    let store = &services.store;
    let unavailable =
        |e: wasmgate_plugin_host::state::StoreError| ProxyError::StateUnavailable(e.to_string());
    let kp = &services.key_prefix;
    let mut indexes = vec![format!("{kp}cache:keys")];
    let tenants = store
        .scan_prefix(&format!("{kp}t:"), 1_000_000)
        .await
        .map_err(unavailable)?;
    indexes.extend(tenants.into_iter().filter(|k| k.ends_with(":cache:keys")));
    let mut purged = 0u64;
    for index in &indexes {
        let namespace = &index[..index.len() - "keys".len()];
        let members = store.set_members(index).await.map_err(unavailable)?;
        for batch in members.chunks(PURGE_BATCH) {
            let keys: Vec<String> = batch.iter().map(|m| format!("{namespace}{m}")).collect();
            let values = match prefix {
                Some(_) => store.get_many(&keys).await.map_err(unavailable)?,
                None => Vec::new(),
            };
            for (i, (member, key)) in batch.iter().zip(&keys).enumerate() {
                let matches = match (prefix, values.get(i)) {
                    (None, _) => true,
                    (Some(p), Some(Some(v))) => {
                        entry_path(v).is_some_and(|path| path.starts_with(p))
                    }
                    // Expired: only its index entry is left; drop it.
                    (Some(_), _) => {
                        store.set_remove(index, member).await.map_err(unavailable)?;
                        continue;
                    }
                };
                if matches {
                    if store.delete(key).await.map_err(unavailable)? {
                        purged += 1;
                    }
                    store.set_remove(index, member).await.map_err(unavailable)?;
                }
            }
        }
    }
    tracing::info!(purged, prefix, "cache purged");
    Ok(json!({"purged": purged, "prefix": prefix}))
}

/// The `path` of a cache entry's head line.
fn entry_path(entry: &[u8]) -> Option<String> {
    let nl = entry.iter().position(|b| *b == b'\n')?;
    let head: Value = serde_json::from_slice(&entry[..nl]).ok()?;
    head["path"].as_str().map(str::to_string)
}

/// The running configuration as JSON, every secret redacted: `Secret` values serialize as
/// `[redacted]` (API keys and their hashes, the token salt and hashes, the JWT secret, the
/// Redis URL and password, the admin and metrics tokens, the signing secret, injected header
/// values), and the inline JWKS is left out too.
fn effective_config(gw: &Gateway) -> Value {
    let snap = gw.snapshot();
    let mut v = serde_json::to_value(&*snap.config).unwrap_or_default();
    if !v["auth"]["jwt_jwks"].is_null() {
        v["auth"]["jwt_jwks"] = json!("[redacted]");
    }
    v
}

/// `unhealthy` (503) when no upstream has a healthy target left — nothing can be served;
/// `degraded` (200: the gateway serves, under each plugin's fail policy) while the state store
/// is down, a target is ejected (an upstream may have none left) or a plugin failed; `healthy`
/// otherwise.
fn health(gw: &Gateway) -> Value {
    let services = gw.services();
    let store = services.store.health();
    let workers = &services.workers;
    let snap = gw.snapshot();
    let mut upstreams = serde_json::Map::new();
    let (mut any_ejected, mut all_dead) = (false, !snap.upstreams.is_empty());
    for (name, u) in &snap.upstreams {
        let healthy = u.healthy_targets();
        any_ejected |= healthy < u.targets.len();
        all_dead &= healthy == 0;
        upstreams.insert(name.clone(), u.health_report());
    }
    let plugins = match gw.plugins() {
        Some(rt) => {
            let chain = rt.chain();
            let failed: Vec<&str> = chain
                .plugins
                .iter()
                .filter(|p| p.state() == wasmgate_plugin_host::PluginState::Failed)
                .map(|p| p.name.as_str())
                .collect();
            json!({
                "enabled": true,
                "active": chain.plugins.iter().filter(|p| p.state() == wasmgate_plugin_host::PluginState::Active).count(),
                "failed": failed,
                "refused": chain.refused.len(),
            })
        }
        None => json!({"enabled": false}),
    };
    let plugin_failed = plugins["failed"].as_array().is_some_and(|f| !f.is_empty());
    let status = if all_dead {
        "unhealthy"
    } else if !store.is_up() || any_ejected || plugin_failed {
        "degraded"
    } else {
        "healthy"
    };
    let mut state = serde_json::to_value(&store).unwrap_or_default();
    if !store.is_up() {
        state["impact"] = json!("plugins get `unavailable` from kv calls and apply their fail policy (rate limits fail open, caches bypass)");
    }
    json!({
        "status": status,
        "version": VERSION,
        "uptime_s": gw.uptime_secs(),
        "checks": {
            "redis": state,
            "upstreams": upstreams,
            "plugins": plugins,
            "workers": {
                "active": workers.active().len(),
                "last_refresh_error": workers.last_error(),
            },
        },
    })
}

/// The exposition text, when the scraper sends the metrics token (if one is configured) or
/// the admin token (the dashboard's).
fn metrics_endpoint<B>(
    gw: &Gateway,
    req: &Request<B>,
    token: Option<&wasmgate_config::Secret>,
    admin: Option<&wasmgate_config::Secret>,
) -> Result<String, ProxyError> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ProxyError::MethodNotAllowed);
    }
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        let is_admin = admin.is_some_and(|a| !a.is_empty() && bearer_matches(req, a.expose()));
        if !bearer_matches(req, token.expose()) && !is_admin {
            return Err(ProxyError::Unauthorized(
                "a valid metrics token is required".into(),
            ));
        }
    }
    Ok(crate::metrics::render(gw, &gw.inner.metrics))
}

/// Whether the request's `Authorization: Bearer` is `expected`, compared in constant time.
fn bearer_matches<B>(req: &Request<B>, expected: &str) -> bool {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = expected.as_bytes();
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected))
}

/// Checks the admin bearer token in constant time.
pub(crate) fn authorize<B>(gw: &Gateway, req: &Request<B>) -> Result<(), ProxyError> {
    let snap = gw.snapshot();
    let Some(token) = snap.config.admin.token.as_ref().filter(|t| !t.is_empty()) else {
        return Err(ProxyError::Forbidden(
            "admin endpoints are off: set GATEWAY_ADMIN_TOKEN (or admin.token) and send it as `Authorization: Bearer <token>`".into(),
        ));
    };
    if bearer_matches(req, token.expose()) {
        Ok(())
    } else {
        Err(ProxyError::Unauthorized(
            "a valid admin token is required".into(),
        ))
    }
}

fn list(rt: &PluginRuntime) -> Value {
    let chain = rt.chain();
    json!({
        "enabled": true,
        "folder": rt.folder().map(|d| d.display().to_string()),
        "plugins": chain.plugins.iter().map(|p| describe(p)).collect::<Vec<_>>(),
        "refused": chain.refused,
    })
}

fn describe(p: &LoadedPlugin) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "name": p.name,
        "version": p.version,
        "source": p.source,
        "sha256": p.sha256,
        "phases": p.phases.names(),
        "capabilities": {"granted": p.granted, "refused": p.refused},
        "state": p.state(),
        "error": p.failure(),
        "order": p.settings.order,
        "routes": p.settings.routes,
        "route_override": p.settings.variant_route,
        "tenants": p.settings.tenants,
        "fail_policy": p.settings.fail_policy,
        "budget": {
            "cpu_ms": p.settings.cpu_budget_ms,
            "memory_bytes": p.settings.memory_bytes,
            "max_instances": p.settings.max_instances,
        },
        "calls": p.stats.calls.load(Relaxed),
        "traps": p.stats.traps.load(Relaxed),
        "cpu_kills": p.stats.cpu_kills.load(Relaxed),
        "memory_kills": p.stats.memory_kills.load(Relaxed),
        "instances": p.live_instances(),
        // A built-in bundle member shares its instances (and `instances`) with these.
        "bundle": p.bundle_member().map(|(b, _)| b.member_names()),
        "p50_us": p.stats.percentile_us(0.5),
        "compiled_from_cache": p.from_cache,
    })
}

pub(crate) fn json_response(
    status: StatusCode,
    v: &Value,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from(v.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
    resp
}
