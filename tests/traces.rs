//! OpenTelemetry traces, received by a small collector the test runs on `127.0.0.1:0`: OTLP
//! http/protobuf at `/v1/traces` (decoded with the OTLP protobuf types) and Zipkin v2 JSON at
//! `/api/v2/spans`. A request that continues a `traceparent` gives a server span under the
//! caller's span, a client span for the upstream call whose id is the parent the backend
//! received, and a span per plugin call; GenAI routes get `gen_ai.operation.name`; an
//! unsampled request exports nothing.
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{client, echoed_header, eventually, json};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use wasmgate_testkit::{gateway, upstream};

/// What the collector received: (path, body).
type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

async fn collector() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            store.lock().unwrap().push((path, body));
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

/// Every OTLP span received so far, with its resource's `service.name`.
fn otlp_spans(received: &Received) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for (path, body) in received.lock().unwrap().iter() {
        if path != "/v1/traces" {
            continue;
        }
        let req = ExportTraceServiceRequest::decode(body.clone()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push((service.clone(), span));
                }
            }
        }
    }
    out
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_otlp_and_zipkin_collectors_with_the_trace_continued() {
    let (collector, received) = collector().await;
    let up = upstream().spawn().await;
    let gw = gateway()
        .route("/v1", "llm", &[up.url()])
        .config(|c| {
            c.otel.enabled = true;
            c.otel.service_name = "gw-under-test".into();
            c.otel.otlp_endpoint = Some(format!("http://{collector}"));
            c.otel.zipkin_endpoint = Some(format!("http://{collector}/api/v2/spans"));
            c.security_headers.enabled = true;
        })
        .spawn()
        .await;
    let c = client();

    // Not sampled by the caller: nothing is exported for it.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("traceparent", unsampled)
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let echo = json(
        c.post(gw.url("/v1/chat/completions"))
            .header("traceparent", format!("00-{trace}-{caller_span}-01"))
            .body(r#"{"model":"m","messages":[]}"#),
    )
    .await;
    let sent = echoed_header(&echo, "traceparent").expect("traceparent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[1], trace, "the same trace upstream");
    let upstream_parent = parts[2].to_string();

    let trace_bytes = hex::decode(trace).unwrap();
    eventually("the OTLP collector has the trace", async || {
        otlp_spans(&received)
            .iter()
            .filter(|(_, s)| s.trace_id == trace_bytes)
            .count()
            >= 3
    })
    .await;
    let spans: Vec<(String, Span)> = otlp_spans(&received)
        .into_iter()
        .filter(|(_, s)| s.trace_id == trace_bytes)
        .collect();
    assert!(spans.iter().all(|(svc, _)| svc == "gw-under-test"));
    let server = &spans
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Server as i32)
        .expect("a server span")
        .1;
    assert_eq!(hex::encode(&server.parent_span_id), caller_span);
    assert_eq!(server.name, "POST llm");
    assert_eq!(attr(server, "http.route").as_deref(), Some("llm"));
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(server, "url.path").as_deref(),
        Some("/v1/chat/completions")
    );
    assert_eq!(
        attr(server, "gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert!(server.end_time_unix_nano > server.start_time_unix_nano);

    let upstream_span = &spans
        .iter()
        .find(|(_, s)| s.kind == SpanKind::Client as i32)
        .expect("a client span")
        .1;
    assert_eq!(
        hex::encode(&upstream_span.span_id),
        upstream_parent,
        "the backend's parent is the upstream call's span"
    );
    assert_eq!(upstream_span.parent_span_id, server.span_id);
    assert_eq!(
        attr(upstream_span, "server.address").as_deref(),
        Some("127.0.0.1")
    );

    let plugin = &spans
        .iter()
        .find(|(_, s)| s.name.starts_with("plugin security-headers"))
        .expect("a plugin call span")
        .1;
    assert_eq!(plugin.parent_span_id, server.span_id);
    assert_eq!(
        attr(plugin, "wasmgate.plugin.name").as_deref(),
        Some("security-headers")
    );
    assert!(plugin.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(plugin.end_time_unix_nano <= server.end_time_unix_nano);

    // The unsampled request, sent first, never reached the collector.
    let unsampled_bytes = hex::decode("0af7651916cd43dd8448eb211c80319c").unwrap();
    assert!(otlp_spans(&received)
        .iter()
        .all(|(_, s)| s.trace_id != unsampled_bytes));

    // Zipkin v2 JSON: the same spans.
    eventually("the Zipkin collector has the trace", async || {
        received
            .lock()
            .unwrap()
            .iter()
            .any(|(p, b)| p == "/api/v2/spans" && String::from_utf8_lossy(b).contains(trace))
    })
    .await;
    let zipkin: Vec<serde_json::Value> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == "/api/v2/spans")
        .flat_map(|(_, b)| serde_json::from_slice::<Vec<serde_json::Value>>(b).unwrap())
        .filter(|s| s["traceId"] == trace)
        .collect();
    let z_server = zipkin
        .iter()
        .find(|s| s["kind"] == "SERVER")
        .expect("a Zipkin server span");
    assert_eq!(z_server["parentId"], caller_span);
    assert_eq!(z_server["localEndpoint"]["serviceName"], "gw-under-test");
    assert!(zipkin
        .iter()
        .any(|s| s["kind"] == "CLIENT" && s["id"] == upstream_parent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_sampling_ratio_exports_no_new_trace_but_follows_sampled_callers() {
    let (collector, received) = collector().await;
    let up = upstream().spawn().await;
    let gw = gateway()
        .upstream(&up)
        .config(|c| {
            c.otel.enabled = true;
            c.otel.otlp_endpoint = Some(format!("http://{collector}"));
            c.otel.sampling_ratio = 0.0;
        })
        .spawn()
        .await;
    let c = client();
    for _ in 0..5 {
        let echo = json(c.get(gw.url("/a"))).await;
        let sent = echoed_header(&echo, "traceparent").unwrap();
        assert!(
            sent.ends_with("-00"),
            "not sampled, and the backend is told: {sent}"
        );
    }
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = c
        .get(gw.url("/b"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let trace_bytes = hex::decode(trace).unwrap();
    eventually("the caller-sampled trace is exported", async || {
        otlp_spans(&received)
            .iter()
            .any(|(_, s)| s.trace_id == trace_bytes)
    })
    .await;
    assert!(
        otlp_spans(&received)
            .iter()
            .all(|(_, s)| s.trace_id == trace_bytes),
        "no span of the five new, unsampled traces"
    );
}

/// Trace `trace` (hex) once its server span is exported: that span, and the client span.
async fn exported(received: &Received, trace: &str) -> (Span, Span) {
    let trace_bytes = hex::decode(trace).unwrap();
    let find = |kind: SpanKind| {
        otlp_spans(received)
            .into_iter()
            .map(|(_, s)| s)
            .find(|s| s.trace_id == trace_bytes && s.kind == kind as i32)
    };
    eventually("the trace's server span is exported", async || {
        find(SpanKind::Server).is_some()
    })
    .await;
    let client = find(SpanKind::Client).expect("the upstream call's span");
    (find(SpanKind::Server).unwrap(), client)
}

/// The model the GenAI test asks for.
const MODEL: &str = "llama-3-8b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genai_spans_carry_model_and_token_usage_and_last_until_the_stream_ends() {
    use std::time::{Duration, Instant};
    use wasmgate_testkit::sim::{SimOptions, Simulator};
    let (collector, received) = collector().await;
    let sim = Simulator::spawn(SimOptions {
        token_delay: Duration::from_millis(30),
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = gateway()
        .route("/v1", "llm", &[sim.url()])
        .config(|c| {
            c.otel.enabled = true;
            c.otel.otlp_endpoint = Some(format!("http://{collector}"));
        })
        .spawn()
        .await;
    let c = client();
    let traced = |trace: &str| format!("00-{trace}-00f067aa0ba902b7-01");
    // The model is not the body's first key, and a message mentions "model" too.
    let chat = serde_json::json!({
        "messages": [{"role": "user", "content": "four words \"model\": here"}],
        "model": MODEL,
    });

    // A JSON answer: usage from its body.
    let trace = "6bf92f3577b34da6a3ce929d0e0e4701";
    let answer = json(
        c.post(gw.url("/v1/chat/completions"))
            .header("traceparent", traced(trace))
            .json(&chat),
    )
    .await;
    let (server, upstream_span) = exported(&received, trace).await;
    let server = &server;
    assert_eq!(attr(server, "gen_ai.request.model").as_deref(), Some(MODEL));
    assert_eq!(
        attr(server, "gen_ai.response.model").as_deref(),
        Some(MODEL)
    );
    assert_eq!(
        attr(server, "gen_ai.usage.input_tokens"),
        Some(answer["usage"]["prompt_tokens"].to_string())
    );
    assert_eq!(
        attr(server, "gen_ai.usage.output_tokens"),
        Some(answer["usage"]["completion_tokens"].to_string())
    );
    assert_eq!(
        upstream_span.name, "chat llama-3-8b",
        "GenAI client span name"
    );
    assert_eq!(
        attr(&upstream_span, "gen_ai.usage.output_tokens"),
        attr(server, "gen_ai.usage.output_tokens")
    );

    // A stream asking for usage: the last event's, and the spans end with the stream.
    let trace = "6bf92f3577b34da6a3ce929d0e0e4702";
    let mut streamed = chat.clone();
    streamed["stream"] = serde_json::json!(true);
    streamed["stream_options"] = serde_json::json!({"include_usage": true});
    let stream = async |trace: &str| {
        c.post(gw.url("/v1/chat/completions"))
            .header("traceparent", traced(trace))
            .json(&streamed)
            .send()
            .await
            .unwrap()
    };
    let resp = stream(trace).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let head_at = Instant::now();
    let text = resp.text().await.unwrap();
    let body_time = head_at.elapsed();
    let last_usage: serde_json::Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v.get("usage").cloned())
        .next_back()
        .expect("the simulator sends usage last");
    let (server, _) = exported(&received, trace).await;
    let server = &server;
    assert_eq!(
        attr(server, "gen_ai.usage.input_tokens"),
        Some(last_usage["prompt_tokens"].to_string())
    );
    assert_eq!(
        attr(server, "gen_ai.usage.output_tokens"),
        Some(last_usage["completion_tokens"].to_string())
    );
    assert_eq!(attr(server, "wasmgate.response.aborted"), None);
    let span_time = Duration::from_nanos(server.end_time_unix_nano - server.start_time_unix_nano);
    // Ended at the response head, it would last a few ms of the ~300 ms stream (the two
    // clocks differ by delivery jitter, so not an exact bound).
    assert!(
        span_time >= body_time / 2,
        "the request span covers the streamed body: {span_time:?} vs {body_time:?}"
    );

    // A client that hangs up mid-stream: the spans end then, and say so.
    let trace = "6bf92f3577b34da6a3ce929d0e0e4703";
    let mut resp = stream(trace).await;
    let first = resp.chunk().await.unwrap();
    assert!(first.is_some());
    drop(resp);
    let (server, _) = exported(&received, trace).await;
    let server = &server;
    assert_eq!(
        attr(server, "wasmgate.response.aborted").as_deref(),
        Some("client_disconnected")
    );
    assert_eq!(attr(server, "gen_ai.request.model").as_deref(), Some(MODEL));
    assert_eq!(attr(server, "gen_ai.usage.output_tokens"), None);
}
