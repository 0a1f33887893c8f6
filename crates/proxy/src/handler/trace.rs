//! The request's spans: started when the trace is sampled, finished at the response head.
use super::{AccessInfo, TRACEPARENT};
use crate::trace_context::TraceParent;

/// Starts the request's server span (under the caller's `traceparent`) when the trace is
/// sampled; the session then times its plugin calls.
pub(super) fn start_trace(
    otel: &crate::otel::Otel,
    headers: &http::HeaderMap,
    method: &http::Method,
    started: std::time::Instant,
    info: &mut AccessInfo,
) {
    let incoming = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let clock = (started, std::time::SystemTime::now());
    info.trace = otel
        .request_span(incoming, method.as_str(), clock.1)
        .map(|cx| (cx, clock));
    info.plugins.timed = info.trace.is_some();
}

/// At the response head of a traced request (nothing when it is not traced): records a span
/// per plugin call (from the session's timings) and the HTTP attributes of the upstream
/// call's and the request's spans, which stay open until the response body ends (the
/// returned [`SpanEnd`](crate::otel::SpanEnd)) so that they cover the whole response and get
/// the GenAI attributes the bodies carry.
pub(super) fn finish_trace(
    otel: &crate::otel::Otel,
    info: &mut AccessInfo,
    method: &http::Method,
    path: &str,
    status: u16,
    error: Option<&'static str>,
    genai: Option<(&'static str, crate::genai::SharedFacts)>,
) -> Option<crate::otel::SpanEnd> {
    use opentelemetry::trace::{Status, TraceContextExt};
    use opentelemetry::KeyValue;
    let (cx, clock) = info.trace.take()?;
    for call in &info.plugins.calls {
        let name = info.plugins.plugin_name(call.plugin).to_owned();
        let start = crate::otel::wall(call.start, clock);
        otel.plugin_span(
            &cx,
            format!("plugin {name} {}", call.phase),
            vec![
                KeyValue::new("wasmgate.plugin.name", name),
                KeyValue::new("wasmgate.plugin.phase", call.phase),
                KeyValue::new("wasmgate.plugin.failed", call.failed),
            ],
            start,
            start + call.duration,
        );
    }
    let upstream_cx = info.upstream_trace.take();
    if let Some(up) = &upstream_cx {
        let span = up.span();
        if let Some(target) = &info.target {
            span.set_attribute(KeyValue::new("server.address", target.host().to_owned()));
            if let Some(port) = target.port_u16() {
                span.set_attribute(KeyValue::new("server.port", i64::from(port)));
            }
        }
        span.set_attribute(KeyValue::new("http.request.method", method.to_string()));
        span.set_attribute(KeyValue::new("wasmgate.attempts", i64::from(info.attempts)));
        match info.upstream_time {
            Some(_) => span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            )),
            None => span.set_status(Status::error(error.unwrap_or("upstream_error"))),
        }
    }
    let span = cx.span();
    let route = info.route.as_deref().unwrap_or("");
    span.update_name(format!("{method} {route}").trim_end().to_owned());
    let mut attributes = vec![
        KeyValue::new("http.request.method", method.to_string()),
        KeyValue::new("url.path", path.to_owned()),
        KeyValue::new("http.route", route.to_owned()),
        KeyValue::new("http.response.status_code", i64::from(status)),
    ];
    if let Some(code) = error {
        attributes.push(KeyValue::new("error.type", code));
    }
    if let Some((op, _)) = &genai {
        attributes.push(KeyValue::new("gen_ai.operation.name", *op));
    }
    span.set_attributes(attributes);
    if status >= 500 {
        span.set_status(Status::error(error.unwrap_or("server error")));
    }
    Some(crate::otel::SpanEnd {
        server: cx,
        upstream: upstream_cx,
        genai,
    })
}
