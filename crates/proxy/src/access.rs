//! The access log: one line per request, at the response head, written by the gateway itself
//! rather than through `tracing`'s formatter. A formatted `tracing` event with sixteen fields
//! cost the gateway ~30 % of its throughput (docs/performance.md); this writes the same line
//! (JSON or text, as `log.format`) into the process's non-blocking log writer for a fraction of
//! that. Without a sink (tests, embedders) the line is a `tracing` event instead.
//!
//! The line carries no header value, no query string and no body, so no credential can reach
//! it.
//!
//! Lines are batched: each is formatted into a per-thread scratch buffer, appended to a shared
//! batch, and the batch goes to the writer when it reaches [`BATCH_BYTES`] or every
//! [`FLUSH_INTERVAL`] (a background thread), and at shutdown ([`flush`]). The writer thread
//! then wakes once per batch instead of once per request. Envoy buffers its access log the
//! same way (flushed every 10 s by default); a line here waits at most 200 ms.
use std::cell::RefCell;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Takes complete lines, newlines included.
type LineWriter = Box<dyn Fn(&[u8]) + Send + Sync>;

/// A batch goes to the writer when it reaches this size...
pub const BATCH_BYTES: usize = 32 * 1024;
/// ...or this long after the last flush.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Where access lines go, and in which format.
pub struct Sink {
    writer: LineWriter,
    json: bool,
    batch: Mutex<Vec<u8>>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// Where a line is formatted before it joins the batch (reused: no allocation per line).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Installs the sink (once per process; later calls are ignored): `write` gets whole lines,
/// newline included, several at a time. Starts the thread that flushes every
/// [`FLUSH_INTERVAL`].
pub fn set_sink(json: bool, write: impl Fn(&[u8]) + Send + Sync + 'static) {
    let installed = SINK
        .set(Sink {
            writer: Box::new(write),
            json,
            batch: Mutex::new(Vec::with_capacity(2 * BATCH_BYTES)),
        })
        .is_ok();
    if installed {
        let _ = std::thread::Builder::new()
            .name("wasmgate-access-flush".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_INTERVAL);
                flush();
            });
    }
}

/// Writes the lines batched so far (the flush thread calls it; call it before exiting).
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    let full = {
        let mut batch = sink.batch.lock().unwrap_or_else(|e| e.into_inner());
        if batch.is_empty() {
            return;
        }
        std::mem::replace(&mut *batch, Vec::with_capacity(2 * BATCH_BYTES))
    };
    (sink.writer)(&full);
}

/// A `set_sink` writer over any cloneable `io::Write` (the non-blocking log writer).
pub fn writer_sink<W: std::io::Write + Clone + Send + Sync + 'static>(
    w: W,
) -> impl Fn(&[u8]) + Send + Sync + 'static {
    move |line| {
        let _ = w.clone().write_all(line);
    }
}

/// One request, as the access line reports it.
pub(crate) struct Line<'a> {
    pub request_id: &'a str,
    pub trace_id: Option<u128>,
    pub client: std::net::IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub upstream: &'a str,
    pub upstream_target: &'a str,
    pub attempts: u32,
    pub upstream_time: Option<Duration>,
    pub plugin_time: Option<Duration>,
    pub answered_by_plugin: bool,
    /// What each plugin that ran did.
    pub plugins: &'a wasmgate_plugin_host::PluginOutcomes,
    pub error: &'a str,
}

/// `auth:continue,rate-limit:answered` (the text line and the `tracing` fallback).
struct PluginList<'a>(&'a wasmgate_plugin_host::PluginOutcomes);

impl std::fmt::Display for PluginList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, outcome)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}:{}", outcome.as_str())?;
        }
        Ok(())
    }
}

fn ms(d: Option<Duration>) -> f64 {
    d.map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

/// `fmt::Write` over the line buffer, for the timestamp formatter.
struct Utf8Buf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Buf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The time as the other log lines show it (`tracing-subscriber`'s RFC 3339 formatter),
/// written straight into the line.
fn timestamp(out: &mut Vec<u8>) {
    use tracing_subscriber::fmt::time::FormatTime as _;
    let _ = tracing_subscriber::fmt::time::SystemTime.format_time(
        &mut tracing_subscriber::fmt::format::Writer::new(&mut Utf8Buf(out)),
    );
}

/// The trace id as 32 hex digits (empty when there is none).
struct TraceHex(Option<u128>);

impl std::fmt::Display for TraceHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(t) => write!(f, "{t:032x}"),
            None => Ok(()),
        }
    }
}

impl Line<'_> {
    /// The JSON line, written into `o` with no allocation of its own: the values clients
    /// send (the path) are escaped by serde_json; the rest cannot need escaping.
    fn json(&self, o: &mut Vec<u8>) {
        use std::io::Write as _;
        o.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(o);
        o.extend_from_slice(
            b"\",\"level\":\"INFO\",\"message\":\"access\",\"target\":\"wasmgate::access\",\"request_id\":",
        );
        let _ = serde_json::to_writer(&mut *o, self.request_id);
        let _ = write!(
            o,
            ",\"trace_id\":\"{}\",\"client\":\"{}\"",
            TraceHex(self.trace_id),
            self.client
        );
        for (k, v) in [
            ("method", self.method),
            ("path", self.path),
            ("route", self.route),
            ("upstream", self.upstream),
            ("upstream_target", self.upstream_target),
            ("error", self.error),
        ] {
            let _ = write!(o, ",\"{k}\":");
            let _ = serde_json::to_writer(&mut *o, v);
        }
        // "plugins": {"auth": "continue", ...} in chain order.
        o.extend_from_slice(b",\"plugins\":{");
        for (i, (name, outcome)) in self.plugins.iter().enumerate() {
            if i > 0 {
                o.push(b',');
            }
            let _ = serde_json::to_writer(&mut *o, name);
            let _ = write!(o, ":\"{}\"", outcome.as_str());
        }
        o.push(b'}');
        let _ = writeln!(
            o,
            ",\"status\":{},\"duration_ms\":{:.3},\"attempts\":{},\"upstream_ms\":{:.3},\"plugins_ms\":{:.3},\"answered_by_plugin\":{}}}",
            self.status,
            self.duration.as_secs_f64() * 1e3,
            self.attempts,
            ms(self.upstream_time),
            ms(self.plugin_time),
            self.answered_by_plugin
        );
    }

    fn text(&self, o: &mut Vec<u8>) {
        use std::io::Write as _;
        timestamp(o);
        let _ = writeln!(
            o,
            "  INFO wasmgate::access: access request_id={} trace_id={} client={} method={} path={:?} route={} status={} duration_ms={:.3} upstream={} upstream_target={} attempts={} upstream_ms={:.3} plugins_ms={:.3} answered_by_plugin={} plugins={} error={}",
            self.request_id,
            TraceHex(self.trace_id),
            self.client,
            self.method,
            self.path,
            self.route,
            self.status,
            self.duration.as_secs_f64() * 1e3,
            self.upstream,
            self.upstream_target,
            self.attempts,
            ms(self.upstream_time),
            ms(self.plugin_time),
            self.answered_by_plugin,
            PluginList(self.plugins),
            self.error
        );
    }

    /// Writes the line to the sink, or emits it as a `tracing` event when there is none.
    pub(crate) fn emit(&self) {
        match SINK.get() {
            Some(sink) => SCRATCH.with_borrow_mut(|line| {
                line.clear();
                if sink.json {
                    self.json(line);
                } else {
                    self.text(line);
                }
                let full = {
                    let mut batch = sink.batch.lock().unwrap_or_else(|e| e.into_inner());
                    batch.extend_from_slice(line);
                    (batch.len() >= BATCH_BYTES).then(|| {
                        std::mem::replace(&mut *batch, Vec::with_capacity(2 * BATCH_BYTES))
                    })
                };
                if let Some(full) = full {
                    (sink.writer)(&full);
                }
            }),
            None => tracing::info!(
                target: "wasmgate::access",
                request_id = self.request_id,
                trace_id = %TraceHex(self.trace_id),
                client = %self.client,
                method = self.method,
                path = self.path,
                route = self.route,
                status = self.status,
                duration_ms = self.duration.as_secs_f64() * 1e3,
                upstream = self.upstream,
                upstream_target = self.upstream_target,
                attempts = self.attempts,
                upstream_ms = ms(self.upstream_time),
                plugins_ms = ms(self.plugin_time),
                answered_by_plugin = self.answered_by_plugin,
                plugins = %PluginList(self.plugins),
                error = self.error,
                "access"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_parse_and_escape_what_clients_send() {
        let line = Line {
            request_id: "r-1",
            trace_id: Some(0xabc),
            client: "10.0.0.1".parse().unwrap(),
            method: "GET",
            path: "/v1/\"odd\"\\path\u{1}",
            route: "api",
            status: 200,
            duration: Duration::from_micros(1500),
            upstream: "llm",
            upstream_target: "10.0.0.2:8000",
            attempts: 1,
            upstream_time: Some(Duration::from_millis(1)),
            plugin_time: None,
            answered_by_plugin: false,
            plugins: &Default::default(),
            error: "",
        };
        let mut out = Vec::new();
        line.json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/v1/\"odd\"\\path\u{1}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(v["plugins"], serde_json::json!({}));
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && ts.starts_with("20"),
            "{ts}"
        );
    }
}
