//! `wasmgate-sim`: the inference simulator as a process, for the demo, the benchmarks and
//! manual testing. See `wasmgate_testkit::sim`.
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use wasmgate_sim::{SimOptions, Simulator};

/// A stand-in for the FastAPI GPU inference server and its workers.
#[derive(Debug, Parser)]
#[command(name = "wasmgate-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    bind: SocketAddr,
    /// Redis for the simulated workers' heartbeats (unset = no workers).
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Number of simulated GPU workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Comma-separated regions assigned to workers in turn.
    #[arg(long, default_value = "us-east,eu-west", value_delimiter = ',')]
    regions: Vec<String>,
    /// Milliseconds between heartbeats.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Milliseconds between streamed tokens.
    #[arg(long, default_value_t = 20)]
    token_delay_ms: u64,
    /// Milliseconds a job takes.
    #[arg(long, default_value_t = 2000)]
    job_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let sim = Simulator::spawn(SimOptions {
        bind: a.bind,
        redis_url: a.redis_url.clone(),
        workers: a.workers,
        regions: a.regions,
        heartbeat_interval: Duration::from_millis(a.heartbeat_ms),
        token_delay: Duration::from_millis(a.token_delay_ms),
        job_duration: Duration::from_millis(a.job_ms),
        ..Default::default()
    })
    .await?;
    eprintln!(
        "wasmgate-sim listening on {} ({} workers heartbeating into {})",
        sim.url(),
        if a.redis_url.is_some() { a.workers } else { 0 },
        a.redis_url.as_deref().unwrap_or("nothing: no --redis-url")
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
