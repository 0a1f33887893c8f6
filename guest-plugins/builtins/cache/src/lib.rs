//! The `cache` built-in (docs/plugins/cache.md): caches `200` responses in the state store
//! (`gateway:cache:{hash}`, bounded through the index set `gateway:cache:keys`), shared by every
//! replica on Redis.
//!
//! - Key: sha256 of method, host, path, sorted query and the caller (its identity, else the
//!   credentials it sent), unless the route is public. The request headers the response
//!   `Vary`s on are stored with the entry and must match for a hit (a mismatch is a miss whose
//!   response replaces the entry).
//! - Stored: `200` responses without `Set-Cookie`, not `text/event-stream`, not `no-store` or
//!   `private`, not `Vary: *`, not larger than `max_entry_bytes`, for `s-maxage`, else
//!   `max-age`, else the configured TTL.
//! - A client's `Cache-Control: no-cache` / `no-store` (or `Pragma: no-cache`) skips the
//!   lookup (`BYPASS`); with `no-cache` the fresh response still refreshes the entry.
//! - `X-Gateway-Cache: HIT | MISS | BYPASS` on every response to a cacheable request; hits get
//!   `Age`.
//!
//! An entry is one JSON line (status, headers, vary, path, times) then the body: the gateway's
//! purge endpoint reads the `path` to purge by prefix.
use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    ttl_ms: u64,
    max_entries: u64,
    #[serde(default = "get_head")]
    methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    exclude_paths: Vec<String>,
    #[serde(default)]
    public_routes: Vec<String>,
    #[serde(default = "one_mib")]
    max_entry_bytes: u64,
}

fn get_head() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}
fn one_mib() -> u64 {
    1 << 20
}

/// The head of a stored entry (the first line).
#[derive(serde::Serialize, serde::Deserialize)]
struct EntryHead {
    status: u16,
    headers: Vec<(String, String)>,
    /// Request headers the response varies on, with the values they had (`None` = absent).
    vary: Vec<(String, Option<String>)>,
    path: String,
    stored_ms: u64,
    ttl_ms: u64,
}

/// Where the current request stands.
enum State {
    /// Not cacheable (method, path): nothing to do.
    Off,
    /// Answered from the cache.
    Hit,
    /// Looked up (or bypassed) and going to the upstream: store what comes back. The request
    /// headers are kept for the `Vary` check (response phases do not see them).
    Fetching {
        key: String,
        bypass: bool,
        request_headers: Vec<Header>,
    },
    /// Collecting the body of a storable response.
    Storing {
        key: String,
        head: EntryHead,
        body: Vec<u8>,
    },
}

struct Cache {
    s: Settings,
    state: State,
}

const HEADER: &str = "x-gateway-cache";

/// Response headers never stored: per-request, per-hop or added by other plugins for this
/// response only.
fn stored_header(name: &str) -> bool {
    !matches!(
        name,
        "x-gateway-cache"
            | "x-request-id"
            | "retry-after"
            | "age"
            | "date"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "set-cookie"
            | "traceparent"
    ) && !name.starts_with("x-ratelimit-")
        && !name.starts_with("access-control-")
}

/// The directives of a `Cache-Control` value: `(name, value)`, names lowercased.
fn directives(v: &str) -> Vec<(String, Option<String>)> {
    v.split(',')
        .filter_map(|d| {
            let d = d.trim();
            if d.is_empty() {
                return None;
            }
            let (k, v) = match d.split_once('=') {
                Some((k, v)) => (k, Some(v.trim().trim_matches('"').to_string())),
                None => (d, None),
            };
            Some((k.trim().to_ascii_lowercase(), v))
        })
        .collect()
}

fn now_ms() -> u64 {
    clock::now_ms()
}

impl Cache {
    fn cacheable(&self, method: &str, path: &str) -> bool {
        self.s.methods.iter().any(|m| m == method)
            && (self.s.paths.is_empty() || self.s.paths.iter().any(|p| path.starts_with(p)))
            && !self.s.exclude_paths.iter().any(|p| path.starts_with(p))
    }

    /// The entry key: sha256 of what makes two requests the same for the cache.
    fn key(&self, method: &str, path: &str) -> String {
        let mut material = String::with_capacity(256);
        material.push_str(method);
        material.push('\n');
        material.push_str(&request::get_header("host").unwrap_or_default());
        material.push('\n');
        material.push_str(path);
        material.push('\n');
        if let Some(q) = request::query() {
            let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            pairs.sort_unstable();
            material.push_str(&pairs.join("&"));
        }
        material.push('\n');
        if !self.s.public_routes.contains(&request::route()) {
            match request::get_property("identity") {
                Some(id) if !id.is_empty() => {
                    material.push_str("id:");
                    material.push_str(&id);
                }
                // No gateway identity: the backend may still tell callers apart by what they
                // send, so each credential is its own cache.
                _ => {
                    for h in ["authorization", "x-api-key", "x-worker-token", "cookie"] {
                        if let Some(v) = request::get_header(h) {
                            material.push_str(h);
                            material.push('=');
                            material.push_str(&v);
                            material.push('\n');
                        }
                    }
                }
            }
        }
        hex::encode(crypto::sha256(material.as_bytes()))
    }

    /// A stored entry for this request, when its `Vary` headers match.
    fn lookup(&self, key: &str) -> Option<(EntryHead, Vec<u8>)> {
        let raw = match kv::get(key) {
            Ok(Some(raw)) => raw,
            _ => return None,
        };
        let nl = raw.iter().position(|b| *b == b'\n')?;
        let head: EntryHead = serde_json::from_slice(&raw[..nl]).ok()?;
        if now_ms() >= head.stored_ms + head.ttl_ms {
            return None;
        }
        let matches = head
            .vary
            .iter()
            .all(|(name, value)| request::get_header(name) == *value);
        matches.then(|| (head, raw[nl + 1..].to_vec()))
    }

    /// Writes an entry: the head as one JSON line, then the body.
    fn store(&self, key: &str, head: &EntryHead, body: &[u8]) {
        let mut entry = serde_json::to_vec(head).unwrap_or_default();
        entry.push(b'\n');
        entry.extend_from_slice(body);
        let stored = kv::put_indexed("keys", key, &entry, head.ttl_ms, self.s.max_entries);
        if let Err(e) = stored {
            log::log(log::Level::Debug, &format!("cache entry not stored: {e:?}"));
        }
    }

    /// Why the response cannot be stored, or its lifetime in ms.
    fn storable(&self) -> Result<u64, &'static str> {
        if request::response_status() != Some(200) {
            return Err("status");
        }
        if request::get_response_header("set-cookie").is_some() {
            return Err("set-cookie");
        }
        let ct = request::get_response_header("content-type").unwrap_or_default();
        if ct.trim_start().starts_with("text/event-stream") {
            return Err("stream");
        }
        if request::get_response_header("vary").is_some_and(|v| v.contains('*')) {
            return Err("vary");
        }
        if let Some(len) =
            request::get_response_header("content-length").and_then(|l| l.parse::<u64>().ok())
        {
            if len > self.s.max_entry_bytes {
                return Err("size");
            }
        }
        let mut ttl = self.s.ttl_ms;
        let mut shared_ttl = None;
        if let Some(cc) = request::get_response_header("cache-control") {
            for (d, v) in directives(&cc) {
                let secs = || v.as_deref().and_then(|s| s.parse::<u64>().ok());
                match d.as_str() {
                    "no-store" | "private" | "no-cache" => return Err("cache-control"),
                    "max-age" => ttl = secs().map(|s| s * 1000).unwrap_or(0),
                    "s-maxage" => shared_ttl = secs().map(|s| s * 1000),
                    _ => {}
                }
            }
        }
        let ttl = shared_ttl.unwrap_or(ttl);
        if ttl == 0 {
            return Err("max-age=0");
        }
        Ok(ttl)
    }
}

impl Plugin for Cache {
    fn new(config: Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        if s.max_entries == 0 {
            return Err("max_entries must be at least 1".into());
        }
        Ok(Cache {
            s,
            state: State::Off,
        })
    }

    fn info(&self) -> Info {
        Info::new("cache", env!("CARGO_PKG_VERSION"))
            .phase(Phase::RequestHeaders)
            .phase(Phase::ResponseHeaders)
            .phase(Phase::ResponseBody)
            .capability("kv")
            .capability("metrics")
    }

    fn on_request_headers(&mut self) -> Action {
        self.state = State::Off;
        let method = request::method();
        let path = request::path();
        if !self.cacheable(&method, &path) {
            // A completion stream, an upload's answer: nothing to store, no call per chunk.
            request::skip_response_body();
            return Action::Continue;
        }
        let key = self.key(&method, &path);
        let asks_fresh = request::get_header("cache-control").is_some_and(|cc| {
            directives(&cc).iter().any(|(d, v)| {
                d == "no-cache" || d == "no-store" || (d == "max-age" && v.as_deref() == Some("0"))
            })
        }) || request::get_header("pragma")
            .is_some_and(|p| p.contains("no-cache"));
        if asks_fresh {
            let no_store = request::get_header("cache-control")
                .is_some_and(|cc| directives(&cc).iter().any(|(d, _)| d == "no-store"));
            metrics::counter_add("bypasses", 1);
            request::add_response_header(HEADER, "BYPASS");
            if no_store {
                request::skip_response_body();
            }
            self.state = if no_store {
                State::Off
            } else {
                State::Fetching {
                    key,
                    bypass: true,
                    request_headers: request::get_headers(),
                }
            };
            return Action::Continue;
        }
        if let Some((head, body)) = self.lookup(&key) {
            metrics::counter_add("hits", 1);
            self.state = State::Hit;
            let mut headers: Vec<Header> = head
                .headers
                .into_iter()
                .map(|(name, value)| Header { name, value })
                .collect();
            headers.push(Header {
                name: HEADER.into(),
                value: "HIT".into(),
            });
            headers.push(Header {
                name: "age".into(),
                value: (now_ms().saturating_sub(head.stored_ms) / 1000).to_string(),
            });
            let body = if method == "HEAD" { Vec::new() } else { body };
            return Action::Respond(LocalResponse {
                status: head.status,
                headers,
                body,
            });
        }
        metrics::counter_add("misses", 1);
        request::add_response_header(HEADER, "MISS");
        self.state = State::Fetching {
            key,
            bypass: false,
            request_headers: request::get_headers(),
        };
        Action::Continue
    }

    fn on_response_headers(&mut self) -> Action {
        let State::Fetching {
            key,
            bypass,
            request_headers,
        } = std::mem::replace(&mut self.state, State::Off)
        else {
            return Action::Continue;
        };
        let ttl_ms = match self.storable() {
            Ok(ttl) => ttl,
            Err(_) => {
                request::skip_response_body();
                if !bypass {
                    request::set_response_header(HEADER, "BYPASS");
                }
                return Action::Continue;
            }
        };
        let vary = request::get_response_header("vary")
            .map(|v| {
                v.split(',')
                    .map(|n| n.trim().to_ascii_lowercase())
                    .filter(|n| !n.is_empty())
                    .map(|n| {
                        let value = request_headers
                            .iter()
                            .find(|h| h.name == n)
                            .map(|h| h.value.clone());
                        (n, value)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let headers = request::get_response_headers()
            .into_iter()
            .filter(|h| stored_header(&h.name))
            .map(|h| (h.name, h.value))
            .collect();
        let head = EntryHead {
            status: 200,
            headers,
            vary,
            path: request::path(),
            stored_ms: now_ms(),
            ttl_ms,
        };
        self.state = State::Storing {
            key,
            head,
            body: Vec::new(),
        };
        Action::Continue
    }

    fn on_response_body(&mut self, chunk: Vec<u8>, end_of_stream: bool) -> Vec<u8> {
        let State::Storing { body, .. } = &mut self.state else {
            return chunk;
        };
        if (body.len() + chunk.len()) as u64 > self.s.max_entry_bytes {
            self.state = State::Off;
            return chunk;
        }
        body.extend_from_slice(&chunk);
        if end_of_stream {
            if let State::Storing { key, head, body } =
                std::mem::replace(&mut self.state, State::Off)
            {
                self.store(&key, &head, &body);
            }
        }
        chunk
    }
}

export_plugin!(Cache);
