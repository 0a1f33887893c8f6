//! `wasmgate install`: writes the systemd unit, and a default configuration and secrets file
//! when they are absent, then prints the next step. It enables nothing itself: the operator
//! reads the config first. The templates are the files in `deploy/systemd/`.
use std::path::{Path, PathBuf};

const UNIT: &str = include_str!("../deploy/systemd/wasmgate.service");
const CONFIG: &str = include_str!("../deploy/systemd/wasmgate.toml");
const ENV: &str = include_str!("../deploy/systemd/wasmgate.env");

/// `wasmgate install` options.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Where the unit file goes.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// The configuration file the service runs with (written when absent). Its folder also
    /// gets `wasmgate.env` (secrets, mode 0600) and `plugins/`.
    #[arg(long, default_value = "/etc/wasmgate/wasmgate.toml")]
    config_path: PathBuf,
    /// The binary the unit starts (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
}

/// What `install` did to one file.
enum Outcome {
    Written,
    Updated,
    Unchanged,
    Kept,
}

impl Outcome {
    fn describe(&self) -> &'static str {
        match self {
            Outcome::Written => "wrote",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Kept => "kept (exists)",
        }
    }
}

pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let binary = match args.binary {
        Some(b) => b,
        None => {
            std::env::current_exe().context("cannot tell where this binary is; pass --binary")?
        }
    };
    let binary = std::path::absolute(&binary)?;
    let config_path = std::path::absolute(&args.config_path)?;
    let config_dir = config_path
        .parent()
        .context("--config-path needs a folder")?
        .to_path_buf();
    let fill = |template: &str| {
        template
            .replace("@BINARY@", &binary.display().to_string())
            .replace("@CONFIG@", &config_path.display().to_string())
            .replace("@CONFIG_DIR@", &config_dir.display().to_string())
    };
    let hint = |e: std::io::Error, path: &Path| {
        let mut msg = format!("{}: {e}", path.display());
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            msg.push_str(" (run as root: sudo wasmgate install)");
        }
        anyhow::anyhow!(msg)
    };

    std::fs::create_dir_all(&args.unit_dir).map_err(|e| hint(e, &args.unit_dir))?;
    let unit_path = args.unit_dir.join("wasmgate.service");
    let unit = fill(UNIT);
    let unit_outcome = match std::fs::read_to_string(&unit_path) {
        Ok(old) if old == unit => Outcome::Unchanged,
        Ok(_) => Outcome::Updated,
        Err(_) => Outcome::Written,
    };
    if !matches!(unit_outcome, Outcome::Unchanged) {
        std::fs::write(&unit_path, unit).map_err(|e| hint(e, &unit_path))?;
    }

    let plugins = config_dir.join("plugins");
    std::fs::create_dir_all(&plugins).map_err(|e| hint(e, &plugins))?;
    let config_outcome =
        write_if_absent(&config_path, &fill(CONFIG), 0o644).map_err(|e| hint(e, &config_path))?;
    let env_path = config_dir.join("wasmgate.env");
    let secrets = fill(ENV)
        .replace("@ADMIN_TOKEN@", &random_secret())
        .replace("@API_KEY@", &random_secret());
    let env_outcome =
        write_if_absent(&env_path, &secrets, 0o600).map_err(|e| hint(e, &env_path))?;

    println!("{} {}", unit_outcome.describe(), unit_path.display());
    println!("{} {}", config_outcome.describe(), config_path.display());
    println!(
        "{} {} (secrets: the admin token and a first API key)",
        env_outcome.describe(),
        env_path.display()
    );
    println!("plugin folder {}", plugins.display());
    println!();
    println!("Next: point the config at your backend (FASTAPI_URL in the secrets file, or the");
    println!("[upstreams.fastapi] targets), check it, and start the service:");
    println!(
        "  sudo sh -c 'set -a; . {}; {} check --config {}'",
        env_path.display(),
        binary.display(),
        config_path.display()
    );
    println!("  sudo systemctl daemon-reload && sudo systemctl enable --now wasmgate");
    println!("  curl http://127.0.0.1:3000/gateway/health");
    Ok(())
}

/// Writes `contents` unless `path` exists (an operator's file is never overwritten).
fn write_if_absent(path: &Path, contents: &str, mode: u32) -> std::io::Result<Outcome> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(contents.as_bytes())?;
            Ok(Outcome::Written)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Outcome::Kept),
        Err(e) => Err(e),
    }
}

/// 244 random bits from the OS generator (two v4 UUIDs), as 64 hex digits.
fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}
