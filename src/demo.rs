//! `wasmgate demo`: two inference simulators with simulated GPU workers, and the gateway in
//! front of them with every built-in plugin on, on this machine with nothing else running
//! (in-memory state; `--redis-url` to use Redis instead). Prints `curl` lines to try.
use std::time::Duration;

use wasmgate_config::{Config, RouteConfig, RouterStrategy, Secret, TargetTags, UpstreamConfig};
use wasmgate_sim::{prefixed_worker_ids, SimOptions, Simulator};

/// The API key the demo accepts.
pub const DEMO_KEY: &str = "demo-key";

/// `wasmgate demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Gateway port (0 picks a free one).
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Use this Redis (the simulated workers heartbeat into it) instead of in-memory state.
    #[arg(long)]
    redis_url: Option<String>,
    /// Requests per minute per caller.
    #[arg(long, default_value_t = 10)]
    rate_limit: u64,
}

/// The demo's gateway configuration over two simulators.
fn config(args: &DemoArgs, sims: &[(String, Vec<String>, &str)]) -> Config {
    let mut c = Config::default();
    c.server.host = "127.0.0.1".into();
    c.server.port = args.port;
    c.log.level = "info,wasmgate_proxy=warn".into();
    if let Some(url) = &args.redis_url {
        c.redis.url = Some(Secret::new(url.clone()));
    }
    let mut upstream = UpstreamConfig {
        targets: sims.iter().map(|(url, _, _)| url.clone()).collect(),
        retries: 1,
        ..Default::default()
    };
    upstream.health_check.path = Some("/health".into());
    for (url, workers, region) in sims {
        upstream.target_tags.insert(
            url.clone(),
            TargetTags {
                region: Some(region.to_string()),
                workers: workers.clone(),
            },
        );
    }
    c.upstreams.insert("inference".into(), upstream);
    c.routes.push(RouteConfig {
        name: Some("api".into()),
        prefix: "/".into(),
        upstream: "inference".into(),
        strip_prefix: false,
    });
    c.auth.enabled = true;
    c.auth.api_keys = vec![Secret::new(DEMO_KEY)];
    c.rate_limit.enabled = true;
    c.rate_limit.max_requests = args.rate_limit;
    c.rate_limit.window_ms = 60_000;
    c.cache.enabled = true;
    c.cache.ttl_seconds = 30;
    c.cache.exclude_paths = vec!["/api/v1/jobs".into(), "/api/v1/queue".into()];
    c.router.strategy = RouterStrategy::LeastLoaded;
    c.router.health_check_interval_ms = 1_000;
    c.cors.enabled = true;
    c.security_headers.enabled = true;
    c.request_signing.secret = Some(Secret::new("demo-signing-secret"));
    c.admin.token = Some(Secret::new("demo-admin"));
    c
}

/// Runs the demo until Ctrl-C.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // The gateway's store first: without Redis the workers heartbeat straight into it.
        let mut probe = Config::default();
        if let Some(url) = &args.redis_url {
            probe.redis.url = Some(Secret::new(url.clone()));
        }
        probe.router.health_check_interval_ms = 1_000;
        let state = wasmgate_state::open_state(&probe)
            .await
            .map_err(anyhow::Error::msg)?;
        let mut sims = Vec::new();
        let mut targets = Vec::new();
        for (name, region) in [("a", "us-east"), ("b", "eu-west")] {
            let prefix = format!("sim-{name}-worker-");
            let sim = Simulator::spawn(SimOptions {
                redis_url: args.redis_url.clone(),
                store: Some(state.store.clone()),
                worker_prefix: prefix.clone(),
                workers: 2,
                regions: vec![region.to_string()],
                heartbeat_interval: Duration::from_secs(1),
                token_delay: Duration::from_millis(40),
                ..Default::default()
            })
            .await?;
            targets.push((sim.url(), prefixed_worker_ids(&prefix, 2), region));
            sims.push(sim);
        }
        let config = config(&args, &targets);
        wasmgate_config::validate(&config, &wasmgate_config::ConfigSource::Environment)?;
        let _log_guard = crate::init_logging(&config.log);
        let services =
            wasmgate_plugin_host::HostServices::from_state(&state, &config.redis.key_prefix);
        let plugins = wasmgate_plugin_host::folder::start_gateway_plugins(
            &config,
            None,
            None,
            services.clone(),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let gateway = wasmgate_proxy::Gateway::with_state(config, plugins, services)?;
        let server = wasmgate_proxy::Server::bind(&gateway).await?;
        tracing::info!(address = %server.local_addr(), "wasmgate listening");
        print_guide(&format!("http://{}", server.local_addr()), &targets);
        server.run(wasmgate_proxy::shutdown_signal()).await;
        drop(sims);
        Ok(())
    })
}

fn print_guide(gw: &str, targets: &[(String, Vec<String>, &str)]) {
    let k = format!("-H 'X-API-Key: {DEMO_KEY}'");
    println!(
        r#"
wasmgate demo: gateway on {gw}
  upstream: two inference simulators ({} and {}), two simulated GPU workers each
  built-ins: auth (key `{DEMO_KEY}`), rate-limit, cache, router (least-loaded), cors,
             security-headers, request-signing; admin token `demo-admin`

Try:
  # refused: no credential (401)
  curl -i {gw}/v1/models
  # accepted; the second call is a cache hit (X-Gateway-Cache: HIT)
  curl -i {k} {gw}/v1/models
  curl -i {k} {gw}/v1/models
  # a streamed completion (SSE), routed to the least-loaded simulator
  curl -N {k} -H 'content-type: application/json' \
    -d '{{"model":"sim-llama-3-8b","stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}' \
    {gw}/v1/chat/completions
  # a GPU job, then its status
  curl {k} -H 'content-type: application/json' -d '{{"type":"llm","params":{{"prompt":"hi"}}}}' {gw}/api/v1/jobs
  # the GPU workers the gateway sees (from their heartbeats)
  curl {k} {gw}/api/v1/workers
  # the rate limit: 429 with Retry-After once the minute's budget is spent
  for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}} ' {k} {gw}/v1/models; done; echo
  # health and plugins
  curl {gw}/gateway/health
  curl {gw}/gateway/plugins

Ctrl-C stops everything."#,
        targets[0].0, targets[1].0
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
