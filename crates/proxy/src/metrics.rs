//! Prometheus metrics (`GET /gateway/metrics`), names `wasmgate_<subsystem>_<name>_<unit>`.
//!
//! Updated on the request path: requests by route, method and status; request duration by
//! route; requests in flight; upstream duration, errors and retries by upstream and target.
//! Read at scrape time (a collector): target health, plugin calls, traps, budget kills and
//! state, plugins' own metrics (`wasmgate_plugin_<plugin>_<name>`), the state store, the worker
//! registry, build info. Labels are bounded: route and upstream names and target addresses
//! come from the configuration, methods are folded to the standard ones, never a raw path or
//! an identity.
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::Gateway;

// Label values are shared names (`Arc<str>`, an `Authority`): a request allocates no label.

/// A target's `host:port` as a label value (a cheap clone of the parsed authority).
///
/// Hashed and compared as its bytes, in one `write`: `Authority`'s own `Hash` feeds the
/// hasher a byte at a time (it folds case), which made the upstream histogram's label lookup
/// ~1 000 instructions a request. Targets come from the configuration, spelled one way each.
#[derive(Clone, Debug)]
struct TargetLabel(Authority);

impl PartialEq for TargetLabel {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for TargetLabel {}

impl std::hash::Hash for TargetLabel {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

impl EncodeLabelValue for TargetLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(self.0.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: Arc<str>,
    target: TargetLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    upstream: Arc<str>,
    target: TargetLabel,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    route: Arc<str>,
    operation: &'static str,
    model: Arc<str>,
    token_type: &'static str,
}

/// Distinct `model` label values kept before the rest are counted as `other` (models come
/// from backend answers: bounded in practice, capped here all the same).
pub const MAX_MODELS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    route: Arc<str>,
    model: Arc<str>,
}

/// The GenAI metrics and the models they have seen: cloned into a response's completion.
#[derive(Clone)]
pub(crate) struct GenAiMetrics {
    tokens: Family<TokenLabels, Counter>,
    first_token: Family<ModelLabels, Histogram, fn() -> Histogram>,
    models: Arc<std::sync::Mutex<std::collections::HashSet<Arc<str>>>>,
}

impl GenAiMetrics {
    /// Records one response: its usage (when it reported one) and, for a stream, the time to
    /// its first event.
    pub(crate) fn add(
        &self,
        route: &Arc<str>,
        operation: &'static str,
        facts: &crate::genai::Facts,
        first_token: Option<Duration>,
    ) {
        let usage = facts.input_tokens.is_some() || facts.output_tokens.is_some();
        if !usage && first_token.is_none() {
            return;
        }
        let model = self.model_label(
            facts
                .response_model
                .as_deref()
                .or(facts.request_model.as_deref())
                .unwrap_or("unknown"),
        );
        if let Some(t) = first_token {
            self.first_token
                .get_or_create(&ModelLabels {
                    route: route.clone(),
                    model: model.clone(),
                })
                .observe(t.as_secs_f64());
        }
        for (token_type, n) in [
            ("input", facts.input_tokens),
            ("output", facts.output_tokens),
        ] {
            if let Some(n) = n.and_then(|n| u64::try_from(n).ok()) {
                self.tokens
                    .get_or_create(&TokenLabels {
                        route: route.clone(),
                        operation,
                        model: model.clone(),
                        token_type,
                    })
                    .inc_by(n);
            }
        }
    }

    /// The label for `model`: itself among the first [`MAX_MODELS`] seen, else `other`.
    fn model_label(&self, model: &str) -> Arc<str> {
        let mut seen = self.models.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(model) {
            Some(m) => m.clone(),
            None if seen.len() < MAX_MODELS => {
                let m: Arc<str> = Arc::from(model);
                seen.insert(m.clone());
                m
            }
            None => OTHER_MODEL.clone(),
        }
    }
}

static OTHER_MODEL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("other"));

/// The route label of requests no route matched.
static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("(none)"));

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The request-path metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    upstream_duration: Family<TargetLabels, Histogram, fn() -> Histogram>,
    upstream_errors: Family<ErrorLabels, Counter>,
    upstream_retries: Family<UpstreamLabels, Counter>,
    genai: GenAiMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The standard methods, anything else `other` (bounded label values).
fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// The metrics, registered; `collector` adds what is read at scrape time.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let in_flight = Gauge::default();
        let upstream_duration: Family<TargetLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        let upstream_retries = Family::<UpstreamLabels, Counter>::default();
        let genai = GenAiMetrics {
            tokens: Family::default(),
            first_token: Family::new_with_constructor(latency_histogram),
            models: Arc::default(),
        };
        registry.register(
            "wasmgate_genai_usage_tokens",
            "Tokens the backend reported in OpenAI-style responses (`usage`), by route, operation, model and token type (input, output)",
            genai.tokens.clone(),
        );
        registry.register(
            "wasmgate_genai_time_to_first_token_seconds",
            "Streamed OpenAI-style completions: time from the request to the stream's first event, by route and model",
            genai.first_token.clone(),
        );
        registry.register(
            "wasmgate_http_requests",
            "Requests answered, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "wasmgate_http_request_duration_seconds",
            "Time to the response head, by route",
            duration.clone(),
        );
        registry.register(
            "wasmgate_http_requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "wasmgate_upstream_request_duration_seconds",
            "Upstream time to the response head, by upstream and target",
            upstream_duration.clone(),
        );
        registry.register(
            "wasmgate_upstream_errors",
            "Failed upstream attempts by kind (connect, error, timeout)",
            upstream_errors.clone(),
        );
        registry.register(
            "wasmgate_upstream_retries",
            "Requests retried on another target",
            upstream_retries.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            in_flight,
            upstream_duration,
            upstream_errors,
            upstream_retries,
            genai,
        }
    }

    /// The GenAI metrics (cheap clone).
    pub(crate) fn genai(&self) -> GenAiMetrics {
        self.genai.clone()
    }

    /// A request started; the guard counts it in flight until dropped.
    pub(crate) fn start(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// A request was answered (its head).
    pub(crate) fn answered(
        &self,
        route: Option<&Arc<str>>,
        method: &http::Method,
        status: u16,
        took: Duration,
    ) {
        let route = route.unwrap_or(&NO_ROUTE).clone();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method: method_label(method),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    /// An upstream attempt got a response head.
    pub(crate) fn upstream_ok(&self, upstream: &Arc<str>, target: &Authority, took: Duration) {
        self.upstream_duration
            .get_or_create(&TargetLabels {
                upstream: upstream.clone(),
                target: TargetLabel(target.clone()),
            })
            .observe(took.as_secs_f64());
    }

    /// An upstream attempt failed (`connect`, `error`, `timeout`).
    pub(crate) fn upstream_error(
        &self,
        upstream: &Arc<str>,
        target: &Authority,
        kind: &'static str,
    ) {
        self.upstream_errors
            .get_or_create(&ErrorLabels {
                upstream: upstream.clone(),
                target: TargetLabel(target.clone()),
                kind,
            })
            .inc();
    }

    /// A request was retried on another target.
    pub(crate) fn retried(&self, upstream: &Arc<str>) {
        self.upstream_retries
            .get_or_create(&UpstreamLabels {
                upstream: upstream.clone(),
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts a request in flight until dropped.
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Reads the gateway's live state at scrape time.
#[derive(Debug)]
struct Scrape(Gateway);

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: Vec<(Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(name, help, None, first.1.metric_type())?;
    if let [(labels, metric)] = rows.as_slice() {
        if labels.is_empty() {
            return metric.encode(m);
        }
    }
    for (labels, metric) in &rows {
        metric.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let gw = &self.0;
        let snap = gw.snapshot();
        let mut health = Vec::new();
        let mut upstream_in_flight = Vec::new();
        for (name, u) in &snap.upstreams {
            for t in &u.targets {
                let labels = vec![
                    ("upstream", name.clone()),
                    ("target", t.authority.to_string()),
                ];
                health.push((labels.clone(), ConstGauge::new(i64::from(!t.is_ejected()))));
                upstream_in_flight.push((labels, ConstGauge::new(i64::from(t.in_flight()))));
            }
        }
        family(
            &mut enc,
            "wasmgate_upstream_target_healthy",
            "1 while the target is not ejected by health checks or failed connections",
            health,
        )?;
        family(
            &mut enc,
            "wasmgate_upstream_target_in_flight",
            "Requests in flight to the target",
            upstream_in_flight,
        )?;
        if let Some(rt) = gw.plugins() {
            use std::sync::atomic::Ordering::Relaxed;
            let chain = rt.chain();
            let by = |f: &dyn Fn(&wasmgate_plugin_host::LoadedPlugin) -> u64| {
                chain
                    .plugins
                    .iter()
                    .map(|p| (vec![("plugin", p.name.clone())], ConstCounter::new(f(p))))
                    .collect::<Vec<_>>()
            };
            family(
                &mut enc,
                "wasmgate_plugin_calls",
                "Phase calls",
                by(&|p| p.stats.calls.load(Relaxed)),
            )?;
            family(
                &mut enc,
                "wasmgate_plugin_traps",
                "Calls that trapped",
                by(&|p| p.stats.traps.load(Relaxed)),
            )?;
            family(
                &mut enc,
                "wasmgate_plugin_cpu_kills",
                "Calls stopped by the CPU budget",
                by(&|p| p.stats.cpu_kills.load(Relaxed)),
            )?;
            family(
                &mut enc,
                "wasmgate_plugin_memory_kills",
                "Calls stopped by the memory cap",
                by(&|p| p.stats.memory_kills.load(Relaxed)),
            )?;
            let states = chain
                .plugins
                .iter()
                .map(|p| {
                    let state = serde_json::to_value(p.state())
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    (
                        vec![("plugin", p.name.clone()), ("state", state)],
                        ConstGauge::new(1i64),
                    )
                })
                .collect();
            family(
                &mut enc,
                "wasmgate_plugin_state",
                "1 for the plugin's current state (active, disabled, failed)",
                states,
            )?;
            let p50 = chain
                .plugins
                .iter()
                .filter_map(|p| {
                    p.stats
                        .percentile_us(0.5)
                        .map(|us| (vec![("plugin", p.name.clone())], ConstGauge::new(us / 1e6)))
                })
                .collect();
            family(
                &mut enc,
                "wasmgate_plugin_call_p50_seconds",
                "Approximate median phase call duration",
                p50,
            )?;
        }
        let services = gw.services();
        // Plugins' own metrics, under their plugin's prefix.
        for (plugin, name, value) in services.metrics.counters() {
            let metric = format!("wasmgate_plugin_{}_{name}", plugin.replace('-', "_"));
            family(
                &mut enc,
                &metric,
                "A plugin's own counter",
                vec![(Vec::new(), ConstCounter::new(value))],
            )?;
        }
        for (plugin, name, count, sum) in services.metrics.histograms() {
            let metric = format!("wasmgate_plugin_{}_{name}", plugin.replace('-', "_"));
            family(
                &mut enc,
                &format!("{metric}_count"),
                "A plugin's own histogram: observations",
                vec![(Vec::new(), ConstCounter::new(count))],
            )?;
            family(
                &mut enc,
                &format!("{metric}_sum"),
                "A plugin's own histogram: sum",
                vec![(Vec::new(), ConstGauge::new(sum))],
            )?;
        }
        let store = services.store.health();
        family(
            &mut enc,
            "wasmgate_state_up",
            "1 while the state store answers",
            vec![(
                vec![("backend", services.store.kind().to_string())],
                ConstGauge::new(i64::from(store.is_up())),
            )],
        )?;
        family(
            &mut enc,
            "wasmgate_workers_active",
            "GPU workers with a fresh heartbeat",
            vec![(
                Vec::new(),
                ConstGauge::new(services.workers.active().len() as i64),
            )],
        )?;
        family(
            &mut enc,
            "wasmgate_build_info",
            "The running build",
            vec![(
                vec![("version", crate::VERSION.to_string())],
                ConstGauge::new(1i64),
            )],
        )?;
        Ok(())
    }
}

/// The exposition text of `gw` (Prometheus/OpenMetrics text format).
pub(crate) fn render(gw: &Gateway, metrics: &Arc<Metrics>) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &metrics.registry);
    let mut scrape = Registry::default();
    scrape.register_collector(Box::new(Scrape(gw.clone())));
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &scrape);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_capped_and_the_rest_counted_as_other() {
        let m = Metrics::new();
        let tokens = m.genai();
        let route: Arc<str> = Arc::from("llm");
        for i in 0..MAX_MODELS + 5 {
            let facts = crate::genai::Facts {
                response_model: Some(format!("model-{i}")),
                input_tokens: Some(2),
                output_tokens: None,
                ..Default::default()
            };
            tokens.add(&route, "chat", &facts, None);
        }
        // No usage reported: nothing counted, no label made.
        tokens.add(&route, "chat", &crate::genai::Facts::default(), None);
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &m.registry).unwrap();
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("wasmgate_genai_usage_tokens_total{"))
            .collect();
        assert_eq!(rows.len(), MAX_MODELS + 1, "{out}");
        assert!(
            rows.contains(&"wasmgate_genai_usage_tokens_total{route=\"llm\",operation=\"chat\",model=\"other\",token_type=\"input\"} 10"),
            "{out}"
        );
    }

    #[test]
    fn upstream_durations_keep_one_series_per_target() {
        let m = Metrics::new();
        let up: Arc<str> = Arc::from("llm");
        let (a, b): (Authority, Authority) = (
            "10.0.0.1:8000".parse().unwrap(),
            "10.0.0.2:8000".parse().unwrap(),
        );
        for t in [&a, &b, &a] {
            m.upstream_ok(&up, t, Duration::from_millis(1));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &m.registry).unwrap();
        for (target, n) in [("10.0.0.1:8000", 2), ("10.0.0.2:8000", 1)] {
            let row = format!("wasmgate_upstream_request_duration_seconds_count{{upstream=\"llm\",target=\"{target}\"}} {n}");
            assert!(out.lines().any(|l| l == row), "{row} in {out}");
        }
    }
}
