//! GenAI facts for traces: the model a request asks for, and the model and token usage its
//! response reports, read from the bodies as they stream through (nothing is held back or
//! copied whole). Used only for sampled requests on OpenAI-style paths.
//!
//! - Request: the top-level `"model"` of the JSON body, looked for in its first
//!   [`REQUEST_SCAN_BYTES`] (clients put it first; a prompt that pushes it further is not
//!   scanned).
//! - JSON response: `model` and `usage` from the whole body when it fits in
//!   [`RESPONSE_HEAD_BYTES`]; past that (embeddings), `usage` from its last
//!   [`RESPONSE_TAIL_BYTES`], where OpenAI-style servers put it.
//! - SSE response: each `data:` event is looked at as it passes; the model of the first, the
//!   `usage` of the last that has one (vLLM and OpenAI send it in the final chunk when the
//!   request asks for `stream_options.include_usage`).
//!
//! `usage` is read as `prompt_tokens`/`completion_tokens` (chat and completions) or
//! `input_tokens`/`output_tokens` (the Responses API and Anthropic-style servers).
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// How much of a request body is scanned for its `model`.
pub const REQUEST_SCAN_BYTES: usize = 64 * 1024;
/// A JSON response up to this size is read whole.
pub const RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// How much of the end of a longer JSON response is kept to find its `usage`.
pub const RESPONSE_TAIL_BYTES: usize = 8 * 1024;
/// The request's key, as it appears in the body.
const MODEL_KEY: &[u8] = b"\"model\"";
/// Longest SSE line looked at.
const SSE_LINE_BYTES: usize = 64 * 1024;

/// The GenAI operation (`gen_ai.operation.name`) of an OpenAI-style path.
pub fn operation(path: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    if path.ends_with("/chat/completions") {
        Some("chat")
    } else if path.ends_with("/completions") {
        Some("text_completion")
    } else if path.ends_with("/embeddings") {
        Some("embeddings")
    } else {
        None
    }
}

/// What the bodies said, shared by the request tap and the response scan.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `gen_ai.request.model`.
    pub request_model: Option<String>,
    /// `gen_ai.response.model`.
    pub response_model: Option<String>,
    /// `gen_ai.usage.input_tokens`.
    pub input_tokens: Option<i64>,
    /// `gen_ai.usage.output_tokens`.
    pub output_tokens: Option<i64>,
}

/// The facts of one request, filled from both directions.
pub type SharedFacts = Arc<Mutex<Facts>>;

fn facts(shared: &SharedFacts) -> std::sync::MutexGuard<'_, Facts> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pin_project_lite::pin_project! {
    /// A request body passed through unchanged; with a scan, its `model` is noted on the way.
    pub struct RequestTap<B> {
        #[pin]
        inner: B,
        scan: Option<ModelScan>,
    }
}

/// The start of a request body so far, looked at for its `model`.
struct ModelScan {
    buf: Vec<u8>,
    facts: SharedFacts,
    /// `"model"` is in `buf`: from now on the buffer is walked for its value at each chunk.
    key_seen: bool,
}

impl<B> RequestTap<B> {
    /// Wraps `inner`; `facts` (when given) gets the request's model.
    pub fn new(inner: B, facts: Option<SharedFacts>) -> Self {
        RequestTap {
            inner,
            scan: facts.map(|facts| ModelScan {
                buf: Vec::new(),
                facts,
                key_seen: false,
            }),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for RequestTap<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match (&polled, this.scan.as_mut()) {
            (Poll::Ready(Some(Ok(frame))), Some(scan)) => {
                if let Some(data) = frame.data_ref() {
                    let buf = &mut scan.buf;
                    let take = data.len().min(REQUEST_SCAN_BYTES.saturating_sub(buf.len()));
                    // The buffer is walked only once `"model"` is in it (looked for in the new
                    // bytes and the few before them it may straddle), not at every chunk of a
                    // long prompt before it.
                    let from = buf.len().saturating_sub(MODEL_KEY.len() - 1);
                    buf.extend_from_slice(&data[..take]);
                    scan.key_seen =
                        scan.key_seen || memchr::memmem::find(&buf[from..], MODEL_KEY).is_some();
                    let found = scan
                        .key_seen
                        .then(|| top_level_value(buf, "model").and_then(json_string))
                        .flatten();
                    if let Some(model) = found {
                        facts(&scan.facts).request_model = Some(model);
                        *this.scan = None;
                    } else if buf.len() >= REQUEST_SCAN_BYTES {
                        *this.scan = None;
                    }
                }
            }
            (Poll::Ready(None) | Poll::Ready(Some(Err(_))), Some(_)) => *this.scan = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a response body's model and usage as its chunks pass ([`ResponseScan::feed`]), into
/// the request's facts at the end ([`ResponseScan::finish`]).
#[derive(Debug)]
pub enum ResponseScan {
    /// A JSON body: its head, then (past the head) a rolling tail.
    Json {
        /// The first [`RESPONSE_HEAD_BYTES`].
        head: Vec<u8>,
        /// The last bytes, once the body outgrew its head.
        tail: Option<Vec<u8>>,
    },
    /// An event stream: the line being read, and whether it is too long to look at.
    Sse {
        /// The current line so far.
        line: Vec<u8>,
        /// The line passed [`SSE_LINE_BYTES`]: skip to its end.
        skipping: bool,
        /// Model and usage seen so far.
        seen: Facts,
    },
}

impl ResponseScan {
    /// The scan for a response with these headers: an uncompressed JSON or SSE body (a
    /// compressed one, which the client asked for, says nothing in its bytes), else none.
    pub fn for_response(headers: &http::HeaderMap) -> Option<ResponseScan> {
        let encoded = headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let ct = headers.get(http::header::CONTENT_TYPE);
        match encoded {
            true => None,
            false => Self::for_content_type(ct.and_then(|v| v.to_str().ok())),
        }
    }

    /// The scan for a response with this `Content-Type`: JSON or SSE, else none.
    pub fn for_content_type(content_type: Option<&str>) -> Option<ResponseScan> {
        let ct = content_type?.trim_start().as_bytes();
        let starts = |p: &[u8]| ct.len() >= p.len() && ct[..p.len()].eq_ignore_ascii_case(p);
        if starts(b"text/event-stream") {
            Some(ResponseScan::Sse {
                line: Vec::new(),
                skipping: false,
                seen: Facts::default(),
            })
        } else if starts(b"application/json")
            || ct.windows(5).any(|w| w.eq_ignore_ascii_case(b"+json"))
        {
            Some(ResponseScan::Json {
                head: Vec::new(),
                tail: None,
            })
        } else {
            None
        }
    }

    /// An event stream (a streamed completion).
    pub fn is_stream(&self) -> bool {
        matches!(self, ResponseScan::Sse { .. })
    }

    /// Looks at the next chunk.
    pub fn feed(&mut self, data: &[u8]) {
        match self {
            ResponseScan::Json { head, tail } => match tail {
                None if head.len() + data.len() <= RESPONSE_HEAD_BYTES => {
                    head.extend_from_slice(data)
                }
                _ => {
                    let t = tail.get_or_insert_with(Vec::new);
                    t.extend_from_slice(data);
                    if t.len() > 2 * RESPONSE_TAIL_BYTES {
                        t.drain(..t.len() - RESPONSE_TAIL_BYTES);
                    }
                }
            },
            ResponseScan::Sse {
                line,
                skipping,
                seen,
            } => {
                let mut rest = data;
                while !rest.is_empty() {
                    let (part, done) = match memchr::memchr(b'\n', rest) {
                        Some(i) => (&rest[..i], Some(i + 1)),
                        None => (rest, None),
                    };
                    if !*skipping {
                        if line.len() + part.len() > SSE_LINE_BYTES {
                            *skipping = true;
                            line.clear();
                        } else {
                            line.extend_from_slice(part);
                        }
                    }
                    let Some(next) = done else { break };
                    if !*skipping {
                        sse_line(line, seen);
                    }
                    line.clear();
                    *skipping = false;
                    rest = &rest[next..];
                }
            }
        }
    }

    /// The body ended: what it said goes into `shared`.
    pub fn finish(self, shared: &SharedFacts) {
        let found = match self {
            ResponseScan::Json { head, tail: None } => {
                let mut f = Facts {
                    response_model: top_level_value(&head, "model").and_then(json_string),
                    ..Facts::default()
                };
                if let Some(u) = top_level_value(&head, "usage") {
                    usage_into(u, &mut f);
                }
                f
            }
            ResponseScan::Json {
                head,
                tail: Some(tail),
            } => {
                let mut f = Facts {
                    response_model: top_level_value(&head, "model").and_then(json_string),
                    ..Facts::default()
                };
                if let Some(u) = usage_in_tail(&tail) {
                    usage_into(u, &mut f);
                }
                f
            }
            ResponseScan::Sse {
                mut line, mut seen, ..
            } => {
                // A last event without its blank line.
                sse_line(&mut line, &mut seen);
                seen
            }
        };
        // The response's facts are the scan's alone; the request tap set only the model asked.
        let mut f = facts(shared);
        f.response_model = found.response_model;
        f.input_tokens = found.input_tokens;
        f.output_tokens = found.output_tokens;
    }
}

/// One SSE line: a `data:` event's model (the first seen) and usage (the last seen).
fn sse_line(line: &mut Vec<u8>, seen: &mut Facts) {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let Some(payload) = line.strip_prefix(b"data:") else {
        return;
    };
    if payload.first() != Some(&b' ') && payload.first() != Some(&b'{') {
        return;
    }
    if seen.response_model.is_none() {
        seen.response_model = top_level_value(payload, "model").and_then(json_string);
    }
    if let Some(u) = top_level_value(payload, "usage") {
        usage_into(u, seen);
    }
}

/// Token counts from a `usage` object (`null` and other shapes are ignored).
fn usage_into(raw: &[u8], f: &mut Facts) {
    #[derive(serde::Deserialize)]
    struct Usage {
        #[serde(alias = "input_tokens")]
        prompt_tokens: Option<i64>,
        #[serde(alias = "output_tokens")]
        completion_tokens: Option<i64>,
    }
    if raw.first() != Some(&b'{') {
        return;
    }
    if let Ok(u) = serde_json::from_slice::<Usage>(raw) {
        if u.prompt_tokens.is_some() || u.completion_tokens.is_some() {
            f.input_tokens = u.prompt_tokens;
            f.output_tokens = u.completion_tokens;
        }
    }
}

/// A JSON string's value.
fn json_string(raw: &[u8]) -> Option<String> {
    match raw.first() {
        Some(b'"') => serde_json::from_slice(raw).ok(),
        _ => None,
    }
}

/// The raw value of the top-level `key` of the JSON object `buf` starts with, once `buf`
/// holds all of it; `None` when the key is absent, `buf` is not an object, or it is cut
/// before the value ends. Nested objects are skipped, so only the top level matches.
pub fn top_level_value<'a>(buf: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let mut i = skip_ws(buf, 0);
    if buf.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(buf, i);
        if buf.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(buf, i)?;
        let name = &buf[i + 1..key_end - 1];
        i = skip_ws(buf, key_end);
        if buf.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(buf, i + 1);
        let value_end = value_end(buf, i)?;
        if name == key.as_bytes() {
            return Some(&buf[i..value_end]);
        }
        i = skip_ws(buf, value_end);
        if buf.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

/// The last `"usage": {...}` in the end of a long body (its start unknown, so not walked).
fn usage_in_tail(tail: &[u8]) -> Option<&[u8]> {
    let finder = memchr::memmem::FinderRev::new(b"\"usage\"");
    let mut end = tail.len();
    while let Some(at) = finder.rfind(&tail[..end]) {
        end = at;
        if at > 0 && tail[at - 1] == b'\\' {
            continue;
        }
        let i = skip_ws(tail, at + 7);
        if tail.get(i) != Some(&b':') {
            continue;
        }
        let i = skip_ws(tail, i + 1);
        if tail.get(i) == Some(&b'{') {
            return value_end(tail, i).map(|e| &tail[i..e]);
        }
    }
    None
}

fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while buf.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// Just past the string that starts at `start` (a `"`), if it ends within `buf`.
fn string_end(buf: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', buf.get(i..)?)?;
        if buf[at] == b'\\' {
            i = at + 2;
        } else {
            return Some(at + 1);
        }
    }
}

/// Just past the value that starts at `i`, if it ends within `buf`.
fn value_end(buf: &[u8], i: usize) -> Option<usize> {
    match *buf.get(i)? {
        b'"' => string_end(buf, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *buf.get(j)? {
                    b'"' => {
                        j = string_end(buf, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            // A number, true, false or null: it ends at a delimiter, which must be in `buf`.
            let len = buf[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())?;
            Some(i + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_top_level_keys_only() {
        let body = br#"{"messages":[{"role":"user","content":"say \"model\": x","model":"inner"}],
            "stream": true, "n": 2, "model" : "llama-3-8b", "x": {"model": "nested"}}"#;
        assert_eq!(
            top_level_value(body, "model")
                .and_then(json_string)
                .as_deref(),
            Some("llama-3-8b")
        );
        assert_eq!(top_level_value(body, "stream"), Some(&b"true"[..]));
        assert_eq!(top_level_value(body, "n"), Some(&b"2"[..]));
        assert_eq!(top_level_value(body, "missing"), None);
        // Cut before the value ends: not yet.
        let cut = br#"{"messages":[],"model":"lla"#;
        assert_eq!(top_level_value(cut, "model"), None);
        assert_eq!(top_level_value(b"[1,2]", "model"), None);
        assert_eq!(top_level_value(b"", "model"), None);
    }

    #[test]
    fn reads_usage_from_a_whole_json_body_and_from_the_tail_of_a_long_one() {
        let shared = SharedFacts::default();
        let mut scan = ResponseScan::for_content_type(Some("application/json")).unwrap();
        let body = br#"{"id":"x","model":"m-1","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
        for chunk in body.chunks(7) {
            scan.feed(chunk);
        }
        scan.finish(&shared);
        let f = shared.lock().unwrap().clone();
        assert_eq!(f.response_model.as_deref(), Some("m-1"));
        assert_eq!((f.input_tokens, f.output_tokens), (Some(12), Some(34)));

        // An embeddings-sized body: usage after 200 KB of vectors.
        let shared = SharedFacts::default();
        let mut scan =
            ResponseScan::for_content_type(Some("application/json; charset=utf-8")).unwrap();
        scan.feed(br#"{"object":"list","data":[{"embedding":["#);
        for _ in 0..20_000 {
            scan.feed(b"0.0123456,");
        }
        scan.feed(br#"1]}],"model":"e5","usage":{"input_tokens":7,"output_tokens":0}}"#);
        scan.finish(&shared);
        let f = shared.lock().unwrap().clone();
        assert_eq!((f.input_tokens, f.output_tokens), (Some(7), Some(0)));
    }

    #[test]
    fn reads_the_last_usage_of_an_event_stream_across_chunk_boundaries() {
        let shared = SharedFacts::default();
        let mut scan = ResponseScan::for_content_type(Some("text/event-stream")).unwrap();
        let stream = concat!(
            "data: {\"model\":\"m-2\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\r\n\r\n",
            ": a comment\n\n",
            "data: {\"model\":\"m-2\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":9}}\n\n",
            "data: [DONE]\n\n"
        );
        for chunk in stream.as_bytes().chunks(5) {
            scan.feed(chunk);
        }
        scan.finish(&shared);
        let f = shared.lock().unwrap().clone();
        assert_eq!(f.response_model.as_deref(), Some("m-2"));
        assert_eq!((f.input_tokens, f.output_tokens), (Some(5), Some(9)));
    }

    #[tokio::test]
    async fn the_request_model_is_found_when_its_key_straddles_chunks() {
        use http_body_util::BodyExt;
        let body = br#"{"messages":[{"role":"user","content":"a long prompt"}],"model":"m-7"}"#;
        for size in [1, 3, 7, 16, body.len()] {
            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = body
                .chunks(size)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let shared = SharedFacts::default();
            let tap = RequestTap::new(
                http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
                Some(shared.clone()),
            );
            let sent = tap.collect().await.unwrap().to_bytes();
            assert_eq!(&sent[..], &body[..], "passed through unchanged");
            let model = shared.lock().unwrap().request_model.clone();
            assert_eq!(model.as_deref(), Some("m-7"), "chunks of {size}");
        }
    }

    #[test]
    fn compressed_responses_are_not_scanned() {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "Application/JSON".parse().unwrap());
        assert!(ResponseScan::for_response(&h).is_some());
        h.insert("content-encoding", "identity".parse().unwrap());
        assert!(ResponseScan::for_response(&h).is_some());
        h.insert("content-encoding", "gzip".parse().unwrap());
        assert!(ResponseScan::for_response(&h).is_none());
    }

    #[test]
    fn other_content_types_are_not_scanned() {
        assert!(ResponseScan::for_content_type(Some("text/plain")).is_none());
        assert!(ResponseScan::for_content_type(None).is_none());
    }
}
