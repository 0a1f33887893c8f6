//! The access log: one line per request, at the end of its response body, written by the gateway itself
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
    /// To the end of the response body.
    pub duration: Duration,
    /// To the response head.
    pub ttfb: Duration,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// How the response body ended.
    pub response_end: crate::body::ResponseEnd,
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

thread_local! {
    /// The last second formatted (`YYYY-MM-DDTHH:MM:SS`), reused by the lines of that second.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// The time as the other log lines show it (`tracing-subscriber`'s RFC 3339 format, UTC,
/// microseconds: `2026-11-29T19:35:13.123456Z`), written straight into the line; the date and
/// time of day are computed once per second per thread.
fn timestamp(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            *text = civil(secs);
            *cached = secs;
        }
        out.extend_from_slice(text);
    });
    out.push(b'.');
    let mut digits = [b'0'; 6];
    let mut micros = now.subsec_micros();
    for d in digits.iter_mut().rev() {
        *d = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time (the days-to-civil algorithm of H. Hinnant).
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut t = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            t[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    t
}

/// A duration in milliseconds with three decimals (`12.345`), by integer arithmetic.
fn millis(out: &mut Vec<u8>, d: Option<Duration>) {
    let micros = d.map_or(0, |d| d.as_micros());
    out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
    let frac = (micros % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// A number.
fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The client address (IPv4 by hand, the rarer IPv6 through `Display`).
fn ip(out: &mut Vec<u8>, addr: std::net::IpAddr) {
    match addr {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                int(out, octet);
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// A string that cannot need escaping (names from the configuration, methods, codes, outcomes).
fn plain(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// 32 lowercase hex digits.
fn hex128(out: &mut Vec<u8>, v: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[(v >> (124 - 4 * i) & 0xf) as usize];
    }
    out.extend_from_slice(&digits);
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
    /// The JSON line, written into `o` with no allocation and no `fmt` machinery: the values
    /// clients send (the path, the request id) are escaped by serde_json; the others come from
    /// the configuration or the gateway and are escaped too where a name could hold a quote.
    fn json(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(o);
        o.extend_from_slice(
            b"\",\"level\":\"INFO\",\"message\":\"access\",\"target\":\"wasmgate::access\",\"request_id\":",
        );
        let _ = serde_json::to_writer(&mut *o, self.request_id);
        o.extend_from_slice(b",\"trace_id\":\"");
        if let Some(t) = self.trace_id {
            hex128(o, t);
        }
        o.extend_from_slice(b"\",\"client\":\"");
        ip(o, self.client);
        o.push(b'"');
        plain(o, b",\"method\":", self.method);
        for (k, v) in [
            (&b",\"path\":"[..], self.path),
            (b",\"route\":", self.route),
            (b",\"upstream\":", self.upstream),
            (b",\"upstream_target\":", self.upstream_target),
        ] {
            o.extend_from_slice(k);
            let _ = serde_json::to_writer(&mut *o, v);
        }
        plain(o, b",\"error\":", self.error);
        // "plugins": {"auth": "continue", ...} in chain order.
        o.extend_from_slice(b",\"plugins\":{");
        for (i, (name, outcome)) in self.plugins.iter().enumerate() {
            if i > 0 {
                o.push(b',');
            }
            let _ = serde_json::to_writer(&mut *o, name);
            plain(o, b":", outcome.as_str());
        }
        o.extend_from_slice(b"},\"status\":");
        int(o, self.status);
        o.extend_from_slice(b",\"duration_ms\":");
        millis(o, Some(self.duration));
        o.extend_from_slice(b",\"ttfb_ms\":");
        millis(o, Some(self.ttfb));
        o.extend_from_slice(b",\"bytes_sent\":");
        int(o, self.bytes_sent);
        plain(o, b",\"response_end\":", self.response_end.as_str());
        o.extend_from_slice(b",\"attempts\":");
        int(o, self.attempts);
        o.extend_from_slice(b",\"upstream_ms\":");
        millis(o, self.upstream_time);
        o.extend_from_slice(b",\"plugins_ms\":");
        millis(o, self.plugin_time);
        o.extend_from_slice(if self.answered_by_plugin {
            b",\"answered_by_plugin\":true}\n"
        } else {
            b",\"answered_by_plugin\":false}\n"
        });
    }

    fn text(&self, o: &mut Vec<u8>) {
        use std::io::Write as _;
        timestamp(o);
        let _ = writeln!(
            o,
            "  INFO wasmgate::access: access request_id={} trace_id={} client={} method={} path={:?} route={} status={} duration_ms={:.3} ttfb_ms={:.3} bytes_sent={} response_end={} upstream={} upstream_target={} attempts={} upstream_ms={:.3} plugins_ms={:.3} answered_by_plugin={} plugins={} error={}",
            self.request_id,
            TraceHex(self.trace_id),
            self.client,
            self.method,
            self.path,
            self.route,
            self.status,
            self.duration.as_secs_f64() * 1e3,
            self.ttfb.as_secs_f64() * 1e3,
            self.bytes_sent,
            self.response_end.as_str(),
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
                ttfb_ms = self.ttfb.as_secs_f64() * 1e3,
                bytes_sent = self.bytes_sent,
                response_end = self.response_end.as_str(),
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
            ttfb: Duration::from_micros(700),
            bytes_sent: 42,
            response_end: crate::body::ResponseEnd::ClientDisconnected,
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
        assert_eq!(v["ttfb_ms"], 0.7);
        assert_eq!(v["bytes_sent"], 42);
        assert_eq!(v["response_end"], "client_disconnected");
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(v["plugins"], serde_json::json!({}));
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && ts.starts_with("20"),
            "{ts}"
        );
    }

    #[test]
    fn dates_numbers_and_addresses_are_written_exactly() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_732_900_000, "2024-11-29T17:06:40"),
            (1_796_000_000, "2026-11-30T00:53:20"),
            (4_102_444_799, "2099-12-31T23:59:59"),
        ] {
            assert_eq!(std::str::from_utf8(&civil(secs)).unwrap(), text);
        }
        let mut out = Vec::new();
        for (d, text) in [
            (Some(Duration::from_micros(1_500)), "1.500"),
            (Some(Duration::from_micros(7)), "0.007"),
            (Some(Duration::from_secs(61)), "61000.000"),
            (None, "0.000"),
        ] {
            out.clear();
            millis(&mut out, d);
            assert_eq!(std::str::from_utf8(&out).unwrap(), text);
        }
        out.clear();
        hex128(&mut out, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(out, b"0af7651916cd43dd8448eb211c80319c");
        for addr in ["10.0.0.255", "::1", "2001:db8::8a2e:370:7334"] {
            out.clear();
            ip(&mut out, addr.parse().unwrap());
            assert_eq!(std::str::from_utf8(&out).unwrap(), addr);
        }
    }
}
