//! The gateway in-process on `127.0.0.1:0`, built from a [`Config`] the test shapes.
use std::net::SocketAddr;

use tokio::sync::oneshot;
use wasmgate_config::{Config, RouteConfig, UpstreamConfig};
use wasmgate_proxy::{Gateway, Server};

use crate::TestUpstream;

/// Builds a [`TestGateway`].
pub struct GatewayBuilder {
    config: Config,
    plugins_dir: Option<std::path::PathBuf>,
}

/// Starts building a gateway with no routes, listening on `127.0.0.1:0`.
pub fn gateway() -> GatewayBuilder {
    let mut config = Config::default();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.server.shutdown_grace_ms = 2_000;
    GatewayBuilder {
        config,
        plugins_dir: None,
    }
}

impl GatewayBuilder {
    /// Routes everything (`/`) to `up`.
    pub fn upstream(self, up: &TestUpstream) -> Self {
        self.route("/", "default", &[up.url()])
    }

    /// Adds a route `prefix`, named `name`, to a new upstream `name` with `targets`.
    pub fn route(mut self, prefix: &str, name: &str, targets: &[String]) -> Self {
        self.config.upstreams.insert(
            name.to_string(),
            UpstreamConfig {
                targets: targets.to_vec(),
                ..Default::default()
            },
        );
        self.config.routes.push(RouteConfig {
            name: Some(name.to_string()),
            prefix: prefix.to_string(),
            upstream: name.to_string(),
            strip_prefix: false,
        });
        self
    }

    /// Edits the configuration directly.
    pub fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Runs plugins from `dir` (loaded now and watched), with the configured state (in memory
    /// unless `redis.url` is set).
    pub fn plugins_dir(mut self, dir: &std::path::Path) -> Self {
        self.plugins_dir = Some(dir.to_path_buf());
        self
    }

    /// Uses the Redis at `url` for state (`redis.url`).
    pub fn redis(mut self, url: &str) -> Self {
        self.config.redis.url = Some(wasmgate_config::Secret::new(url.to_string()));
        self
    }

    /// The configuration as it stands.
    pub fn build_config(&self) -> Config {
        self.config.clone()
    }

    /// Validates the configuration and starts serving.
    pub async fn spawn(self) -> TestGateway {
        wasmgate_config::validate(&self.config, &wasmgate_config::ConfigSource::Environment)
            .expect("test gateway config is valid");
        let state = wasmgate_state::open_state(&self.config)
            .await
            .expect("state store opens");
        let services =
            wasmgate_plugin_host::HostServices::from_state(&state, &self.config.redis.key_prefix);
        let plugins = wasmgate_plugin_host::folder::start_gateway_plugins(
            &self.config,
            self.plugins_dir.as_deref(),
            None,
            services.clone(),
        )
        .await
        .expect("plugins start");
        let gateway = Gateway::with_state(self.config, plugins, services).expect("gateway builds");
        let server = Server::bind(&gateway).await.expect("gateway binds");
        let addr = server.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            gateway,
            stop: Some(tx),
            task: Some(task),
        }
    }
}

/// A running gateway; shut down when dropped.
pub struct TestGateway {
    addr: SocketAddr,
    gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The gateway, for reloads.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
