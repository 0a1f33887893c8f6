//! Live reload: the config file is watched (and SIGHUP forces a reload); a new configuration
//! is swapped in atomically, a bad one is refused with the reason and the old one keeps serving.
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use wasmgate_proxy::Gateway;

use crate::source::ConfigLoader;

/// Events closer together than this are one reload (editors write files in several steps).
const DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy)]
enum Trigger {
    FileChanged,
    Sighup,
}

pub fn spawn(loader: ConfigLoader, gateway: Gateway) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Trigger>();

    let watcher = match loader.file() {
        Some(file) => {
            let file = std::path::absolute(file)?;
            let dir = file
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| ".".into());
            let name = file.file_name().map(|n| n.to_os_string());
            let tx = tx.clone();
            let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    // The directory is watched so replace-by-rename is seen too.
                    if ev
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
                    {
                        let _ = tx.send(Trigger::FileChanged);
                    }
                }
            })?;
            w.watch(&dir, RecursiveMode::NonRecursive)?;
            Some(w)
        }
        None => None,
    };

    #[cfg(unix)]
    {
        let tx = tx.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if tx.send(Trigger::Sighup).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    tokio::spawn(async move {
        let _watcher = watcher; // dropped (and unwatched) when the loop ends
        while let Some(first) = rx.recv().await {
            let mut trigger = first;
            // Debounce: wait for the burst to end.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(t)) => trigger = t,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            reload_once(&loader, &gateway, trigger);
        }
    });
    Ok(())
}

fn reload_once(loader: &ConfigLoader, gateway: &Gateway, trigger: Trigger) {
    let source = loader.describe();
    let config = match loader.load() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(?trigger, config = %source, error = %e,
                "configuration reload refused; the previous configuration keeps serving");
            return;
        }
    };
    match gateway.reload(config) {
        Ok(needs_restart) => {
            tracing::info!(?trigger, config = %source, "configuration reloaded");
            for key in needs_restart {
                tracing::warn!(key, "changed, but takes effect only after a restart");
            }
        }
        Err(e) => tracing::error!(?trigger, config = %source, error = %e,
            "configuration reload refused; the previous configuration keeps serving"),
    }
}
