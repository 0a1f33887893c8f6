//! OpenTelemetry traces (`otel.enabled`): a server span per request, a client span for the
//! upstream call (whose id is the parent the backend sees in `traceparent`), and a span per
//! plugin call, exported in batches off the request path over OTLP http/protobuf
//! (`otel.otlp_endpoint` + `/v1/traces`) and/or as Zipkin v2 JSON (`otel.zipkin_endpoint`).
//! The Zipkin encoding is ours: the `opentelemetry-zipkin` crate is deprecated and leaves
//! `localEndpoint.serviceName` empty.
//!
//! Sampling: a request that carries a `traceparent` follows its sampled flag; a new trace is
//! sampled with probability `otel.sampling_ratio` (parent-based, trace-id ratio).
//!
//! The SDK's batch processor exports from its own thread, which has no async runtime: the
//! exporters' HTTP client hands each export to the gateway's runtime and waits for it.
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry::trace::Span as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Tracer,
};

/// How long an export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the batch processor exports (the SDK's default is 5 s).
const EXPORT_INTERVAL: Duration = Duration::from_millis(500);

/// The process's tracer and its exporters.
pub struct Otel {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

impl std::fmt::Debug for Otel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otel").finish_non_exhaustive()
    }
}

impl Otel {
    /// The exporters `cfg` names, or `None` when tracing is off. Must run inside the gateway's
    /// tokio runtime (exports run on it).
    pub fn start(cfg: &wasmgate_config::OtelConfig) -> Result<Option<Otel>, String> {
        if !cfg.enabled {
            return Ok(None);
        }
        if cfg.otlp_endpoint.is_none() && cfg.zipkin_endpoint.is_none() {
            return Err(
                "otel.enabled needs otel.otlp_endpoint (OTEL_EXPORTER_OTLP_ENDPOINT) or otel.zipkin_endpoint (OTEL_ZIPKIN_ENDPOINT)".into(),
            );
        }
        let client = ExportClient::new()?;
        let batch = || {
            BatchConfigBuilder::default()
                .with_scheduled_delay(EXPORT_INTERVAL)
                .build()
        };
        let ratio = cfg.sampling_ratio.clamp(0.0, 1.0);
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            );
        if let Some(base) = &cfg.otlp_endpoint {
            use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
                .with_timeout(EXPORT_TIMEOUT)
                .with_http_client(client.clone())
                .build()
                .map_err(|e| format!("otel.otlp_endpoint: {e}"))?;
            builder = builder.with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch())
                    .build(),
            );
        }
        if let Some(url) = &cfg.zipkin_endpoint {
            let exporter = ZipkinExporter {
                url: url
                    .parse()
                    .map_err(|e| format!("otel.zipkin_endpoint: {url}: {e}"))?,
                service: cfg.service_name.clone(),
                client,
            };
            builder = builder.with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch())
                    .build(),
            );
        }
        let provider = builder.build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "wasmgate");
        Ok(Some(Otel { provider, tracer }))
    }

    /// Exports what is batched and stops the exporters (at shutdown).
    pub fn shutdown(&self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT);
    }

    /// Starts a request's server span, the child of the incoming `traceparent` when there is
    /// one. `None` when the trace is not sampled.
    pub(crate) fn request_span(
        &self,
        incoming: Option<crate::trace_context::TraceParent>,
        method: &str,
        started: SystemTime,
    ) -> Option<Context> {
        let parent = match incoming {
            Some(tp) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(tp.trace_id),
                SpanId::from(tp.span_id),
                TraceFlags::new(tp.flags),
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let span = self.tracer.build_with_context(
            opentelemetry::trace::SpanBuilder::from_name(method.to_owned())
                .with_kind(SpanKind::Server)
                .with_start_time(started),
            &parent,
        );
        if !span.span_context().is_sampled() {
            return None;
        }
        Some(parent.with_span(span))
    }

    /// Starts the upstream call's client span under `request`.
    pub(crate) fn upstream_span(&self, request: &Context, method: &str) -> Context {
        let span = self.tracer.build_with_context(
            opentelemetry::trace::SpanBuilder::from_name(method.to_owned())
                .with_kind(SpanKind::Client),
            request,
        );
        request.with_span(span)
    }

    /// Records one finished plugin call under `request`.
    pub(crate) fn plugin_span(
        &self,
        request: &Context,
        name: String,
        attributes: Vec<KeyValue>,
        start: SystemTime,
        end: SystemTime,
    ) {
        let mut span = self.tracer.build_with_context(
            opentelemetry::trace::SpanBuilder::from_name(name)
                .with_kind(SpanKind::Internal)
                .with_start_time(start)
                .with_attributes(attributes),
            request,
        );
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
    }
}

/// The `traceparent` that names `cx`'s span as the parent.
pub(crate) fn traceparent_of(cx: &Context) -> crate::trace_context::TraceParent {
    let sc = cx.span().span_context().clone();
    crate::trace_context::TraceParent {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        flags: sc.trace_flags().to_u8(),
    }
}

/// A point in wall-clock time for a monotonic `at`, given one pair read together.
pub(crate) fn wall(at: Instant, base: (Instant, SystemTime)) -> SystemTime {
    match at.checked_duration_since(base.0) {
        Some(d) => base.1 + d,
        None => base.1 - base.0.duration_since(at),
    }
}

/// Zipkin v2 JSON (`POST` a list of spans), as the ACIP gateway's `OTEL_ZIPKIN_ENDPOINT` users
/// expect.
#[derive(Debug)]
struct ZipkinExporter {
    url: http::Uri,
    service: String,
    client: ExportClient,
}

impl ZipkinExporter {
    fn encode(&self, batch: &[opentelemetry_sdk::trace::SpanData]) -> Vec<u8> {
        let micros = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
        };
        let spans: Vec<serde_json::Value> = batch
            .iter()
            .map(|s| {
                let mut tags = serde_json::Map::new();
                for kv in &s.attributes {
                    tags.insert(kv.key.to_string(), kv.value.to_string().into());
                }
                if let opentelemetry::trace::Status::Error { description } = &s.status {
                    tags.insert("error".into(), description.to_string().into());
                }
                let mut span = serde_json::json!({
                    "traceId": format!("{}", s.span_context.trace_id()),
                    "id": format!("{}", s.span_context.span_id()),
                    "name": s.name,
                    "timestamp": micros(s.start_time),
                    "duration": micros(s.end_time).saturating_sub(micros(s.start_time)).max(1),
                    "localEndpoint": {"serviceName": self.service},
                    "tags": tags,
                });
                if s.parent_span_id != SpanId::INVALID {
                    span["parentId"] = format!("{}", s.parent_span_id).into();
                }
                let kind = match s.span_kind {
                    SpanKind::Server => Some("SERVER"),
                    SpanKind::Client => Some("CLIENT"),
                    SpanKind::Producer => Some("PRODUCER"),
                    SpanKind::Consumer => Some("CONSUMER"),
                    SpanKind::Internal => None,
                };
                if let Some(kind) = kind {
                    span["kind"] = kind.into();
                }
                span
            })
            .collect();
        serde_json::to_vec(&spans).unwrap_or_default()
    }
}

impl opentelemetry_sdk::trace::SpanExporter for ZipkinExporter {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        use opentelemetry_http::HttpClient as _;
        let request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Bytes::from(self.encode(&batch)))
            .map_err(|e| opentelemetry_sdk::error::OTelSdkError::InternalFailure(e.to_string()))?;
        let response = self.client.send_bytes(request).await.map_err(|e| {
            opentelemetry_sdk::error::OTelSdkError::InternalFailure(format!("zipkin: {e}"))
        })?;
        match response.status().is_success() {
            true => Ok(()),
            false => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                format!("zipkin answered {}", response.status()),
            )),
        }
    }
}

/// The exporters' HTTP client: the gateway's hyper client (rustls, webpki roots), each
/// export run on the gateway's runtime.
#[derive(Clone)]
struct ExportClient {
    runtime: tokio::runtime::Handle,
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<Bytes>,
    >,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient").finish_non_exhaustive()
    }
}

impl ExportClient {
    fn new() -> Result<ExportClient, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "otel: start the exporters inside the gateway's runtime".to_string())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::tls::client_config()?)
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(ExportClient { runtime, client })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let export = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let request = http::Request::from_parts(parts, http_body_util::Full::new(body));
            let call = async {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                // Collectors answer with a small status body.
                let body = http_body_util::Limited::new(body, 1 << 20)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, call).await {
                Ok(r) => r,
                Err(_) => Err("export timed out".into()),
            }
        });
        export.await?
    }
}

/// The spans of a request that stay open while its response body streams: the server span,
/// the upstream call's client span, and what the bodies said for the GenAI attributes.
pub(crate) struct SpanEnd {
    /// The request's server span.
    pub server: Context,
    /// The upstream call's client span, when there was one.
    pub upstream: Option<Context>,
    /// The GenAI operation and the facts the bodies fill in, on OpenAI-style paths.
    pub genai: Option<(&'static str, crate::genai::SharedFacts)>,
}

impl SpanEnd {
    /// Ends both spans now, when the response body ended as `how`.
    pub(crate) fn end(self, how: crate::body::ResponseEnd) {
        use crate::body::ResponseEnd;
        use opentelemetry::trace::Status;
        let now = SystemTime::now();
        let mut attributes = Vec::new();
        if let Some((operation, facts)) = &self.genai {
            let f = facts.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(m) = &f.request_model {
                attributes.push(KeyValue::new("gen_ai.request.model", m.clone()));
            }
            if let Some(m) = f.response_model {
                attributes.push(KeyValue::new("gen_ai.response.model", m));
            }
            if let Some(n) = f.input_tokens {
                attributes.push(KeyValue::new("gen_ai.usage.input_tokens", n));
            }
            if let Some(n) = f.output_tokens {
                attributes.push(KeyValue::new("gen_ai.usage.output_tokens", n));
            }
            if let Some(up) = &self.upstream {
                // The GenAI convention's client span name: "{operation} {model}".
                let name = match &f.request_model {
                    Some(m) => format!("{operation} {m}"),
                    None => operation.to_string(),
                };
                let span = up.span();
                span.update_name(name);
                span.set_attribute(KeyValue::new("gen_ai.operation.name", *operation));
            }
        }
        if how != ResponseEnd::Complete {
            attributes.push(KeyValue::new("wasmgate.response.aborted", how.as_str()));
        }
        for cx in self.upstream.iter().chain(std::iter::once(&self.server)) {
            let span = cx.span();
            span.set_attributes(attributes.iter().cloned());
            if how == ResponseEnd::BodyError {
                span.set_status(Status::error("response body failed"));
            }
            span.end_with_timestamp(now);
        }
    }
}
