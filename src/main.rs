//! `wasmgate`: the gateway binary. Thin: parses the command line, loads the configuration,
//! starts the runtime and wires reload and shutdown. The work is in `crates/`.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod allocator;
mod demo;
mod install;
mod probe;
mod reload;
mod source;

use source::ConfigLoader;

/// A WebAssembly-extensible API gateway for GPU inference backends.
#[derive(Debug, Parser)]
#[command(name = "wasmgate", version, about)]
struct Cli {
    /// TOML configuration file. Without one, the ACIP `.env` names configure the gateway
    /// (the process environment, over a `.env` in the working directory).
    #[arg(long, short = 'c', env = "WASMGATE_CONFIG", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and exit: 0 when valid, 1 with the reason when not.
    Check,
    /// Work with plugin files.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Start two inference simulators with simulated GPU workers and the gateway in front of
    /// them with every built-in plugin, and print `curl` lines to try.
    Demo(demo::DemoArgs),
    /// Write the systemd unit, and a default configuration and secrets file when absent
    /// (`/etc/systemd/system/wasmgate.service`, `/etc/wasmgate/`); prints the next step.
    Install(install::InstallArgs),
    /// Ask a running gateway whether it is live (exit 0 on a 2xx answer): for container
    /// health checks in images with no shell or curl.
    Healthcheck(probe::HealthcheckArgs),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Print a component's imports, exports, phases and capabilities, and whether it fits the
    /// gateway-plugin world (exit 1 when it does not).
    Inspect {
        /// The `.wasm` file.
        file: PathBuf,
        /// JSON configuration passed to `init`.
        #[arg(long, default_value = "{}")]
        plugin_config: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Plugin(PluginCommand::Inspect {
        file,
        plugin_config,
        json,
    })) = &cli.command
    {
        return inspect(file, plugin_config, *json);
    }
    if let Some(Command::Demo(args)) = cli.command {
        return report("demo", demo::run(args));
    }
    if let Some(Command::Install(args)) = cli.command {
        return report("install", install::run(args));
    }
    let loader = ConfigLoader::new(cli.config.clone());
    if let Some(Command::Healthcheck(args)) = cli.command {
        // The address comes from the configuration when it loads; the probe must answer even
        // when it does not (the running gateway keeps its old config).
        let (host, port) = loader.load().map_or(("127.0.0.1".into(), 3000), |c| {
            (c.server.host, c.server.port)
        });
        return report("healthcheck", probe::run(args, &host, port));
    }
    let config = match loader.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wasmgate: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!(
                "{}: configuration is valid ({} routes, {} upstreams)",
                loader.describe(),
                config.routes.len(),
                config.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Command::Plugin(_) | Command::Demo(_) | Command::Install(_) | Command::Healthcheck(_) => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::Run => match run(loader, config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wasmgate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Exit status of a subcommand; its error on stderr.
fn report(command: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wasmgate {command}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(file: &std::path::Path, config: &str, json: bool) -> ExitCode {
    let wasm = match std::fs::read(file) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("wasmgate: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt.block_on(async {
        let (services, _) = wasmgate_plugin_host::HostServices::in_memory("gateway:");
        let runtime = wasmgate_plugin_host::PluginRuntime::new(Default::default(), services)?;
        anyhow::Ok(wasmgate_plugin_host::inspect::inspect(&runtime, &wasm, config).await)
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wasmgate: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!(
            "{}: {} bytes, sha256 {}",
            file.display(),
            report.size,
            report.sha256
        );
        println!("imports:");
        for (name, kind) in &report.imports {
            println!("  {name} ({kind})");
        }
        println!("exports:");
        for (name, kind) in &report.exports {
            println!("  {name} ({kind})");
        }
        if let Some(p) = &report.plugin {
            println!(
                "plugin: {} {}",
                p["name"].as_str().unwrap_or(""),
                p["version"].as_str().unwrap_or("")
            );
            println!("phases: {}", p["phases"]);
            println!("capabilities: {}", p["capabilities"]);
        }
        match &report.error {
            None => println!("fits the gateway-plugin world: yes"),
            Some(e) => println!("fits the gateway-plugin world: no: {e}"),
        }
    }
    if report.error.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Installs the log subscriber. Lines go to stdout through a background writer (the request
/// path never waits on a write); the returned guard flushes what is queued when dropped.
fn init_logging(cfg: &wasmgate_config::LogConfig) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|e| {
        eprintln!(
            "wasmgate: log.level `{}` is not a valid filter ({e}); using `info`",
            cfg.level
        );
        EnvFilter::new("info")
    });
    // Lossless: under a burst the queue grows rather than dropping lines. The writer thread
    // writes each batch it drains in one go (buffered, flushed when the queue is empty), not
    // a write per line.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    wasmgate_proxy::access::set_sink(
        cfg.format == wasmgate_config::LogFormat::Json,
        wasmgate_proxy::access::writer_sink(writer.clone()),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match cfg.format {
        wasmgate_config::LogFormat::Json => builder.json().flatten_event(true).init(),
        wasmgate_config::LogFormat::Text => builder.init(),
    }
    guard
}

fn run(loader: ConfigLoader, config: wasmgate_config::Config) -> anyhow::Result<()> {
    let _log_guard = init_logging(&config.log);
    for name in loader.unknown_env_names() {
        tracing::warn!(variable = %name, "environment variable looks like an ACIP setting but is not read (misspelt?)");
    }
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("wasmgate-worker")
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let state = wasmgate_state::open_state(&config)
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(backend = state.store.kind(), "state store ready");
        let services =
            wasmgate_plugin_host::HostServices::from_state(&state, &config.redis.key_prefix);
        // An identity provider's keys before the auth plugin starts, so the first requests
        // find them (the gateway refreshes them from then on).
        if let (true, Some(url)) = (config.auth.enabled, &config.auth.jwt_jwks_url) {
            match wasmgate_proxy::jwks::fetch_into_builtins(url).await {
                Ok(_) => tracing::info!(%url, "JWKS fetched"),
                Err(e) => tracing::warn!(%url, error = %e, "JWKS not fetched at start; JWTs are refused until a fetch succeeds (retried every 10 s)"),
            }
        }
        // The folder and the built-ins, unless plugins are off.
        let plugins = match config.plugins.enabled {
            true => wasmgate_plugin_host::folder::start_gateway_plugins(
                &config,
                Some(std::path::Path::new(&config.plugins.dir)),
                config
                    .plugins
                    .cache_dir
                    .as_ref()
                    .map(std::path::PathBuf::from),
                services.clone(),
            )
            .await
            .map_err(anyhow::Error::msg)?,
            false => None,
        };
        let gateway = wasmgate_proxy::Gateway::with_state(config, plugins, services)?;
        let server = wasmgate_proxy::Server::bind(&gateway).await?;
        tracing::info!(
            address = %server.local_addr(),
            workers,
            config = %loader.describe(),
            version = wasmgate_proxy::VERSION,
            "wasmgate listening"
        );
        reload::spawn(loader, gateway.clone())?;
        server.run(wasmgate_proxy::shutdown_signal()).await;
        // The access lines still batched (the log guard then drains the writer), and the
        // spans not yet exported.
        wasmgate_proxy::access::flush();
        let g = gateway.clone();
        let _ = tokio::task::spawn_blocking(move || g.shutdown_telemetry()).await;
        tracing::info!("wasmgate stopped");
        Ok(())
    })
}
