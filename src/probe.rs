//! `wasmgate healthcheck`: asks a running gateway whether it is live, for container
//! `HEALTHCHECK`s in images with no shell or curl (the Dockerfile's runtime image has neither).
//! Exit 0 on a 2xx answer, 1 otherwise.
use std::time::Duration;

/// `wasmgate healthcheck` options.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The URL to ask (default: `http://{server.host}:{server.port}/gateway/health/live` from
    /// the configuration, `--config` or the ACIP `.env` names; 127.0.0.1 when the gateway
    /// listens on every address). A gateway listening with TLS needs `--url` to a plain
    /// listener: this probe speaks cleartext HTTP only.
    #[arg(long)]
    url: Option<String>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

pub fn run(args: HealthcheckArgs, host: &str, port: u16) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.to_string(),
    };
    let url = args
        .url
        .unwrap_or_else(|| format!("http://{host}:{port}/gateway/health/live"));
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{url}: not a URL ({e})"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let ask = async {
            let resp = client.get(uri).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(Duration::from_millis(args.timeout_ms), ask)
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no answer in {} ms", args.timeout_ms))?
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        let body = String::from_utf8_lossy(&body);
        if status.is_success() {
            println!("{url}: {status} {body}");
            Ok(())
        } else {
            anyhow::bail!("{url}: {status} {body}")
        }
    })
}
