//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// A plain HTTP/1.1 client with no connection reuse surprises and a global timeout.
pub fn client() -> reqwest::Client {
    wasmgate_testkit::install_crypto_provider();
    reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Asserts the gateway's JSON error shape and returns the body.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "error responses are JSON"
    );
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: Value = resp.json().await.expect("JSON error body");
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(
        v["request_id"],
        rid.as_str(),
        "body and header carry the same id"
    );
    v
}

/// Health checks of `GET /health` every 50 ms on the `default` upstream, ejecting at the
/// first failure (restored after `healthy_threshold` passes).
pub fn fast_health_checks(c: &mut wasmgate_config::Config, healthy_threshold: u32) {
    let u = c.upstreams.get_mut("default").unwrap();
    u.health_check.path = Some("/health".into());
    u.health_check.interval_ms = Some(50);
    u.health_check.unhealthy_threshold = 1;
    u.health_check.healthy_threshold = healthy_threshold;
}

/// Asserts an admin endpoint's answer while no admin token is configured: `403 forbidden`,
/// saying how to set one.
pub async fn expect_admin_off(resp: reqwest::Response) {
    let v = expect_error(resp, 403, "forbidden").await;
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("GATEWAY_ADMIN_TOKEN"));
}

/// The upstream echo's view of the request headers: name → first value.
pub fn echoed_header<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    echo["headers"][name][0].as_str()
}

/// The `wasmgate` binary running as a child process, its stdout collected.
pub struct GatewayProcess {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl GatewayProcess {
    /// Starts `cmd` (stdout piped) and waits for the "wasmgate listening" line.
    pub fn spawn(mut cmd: std::process::Command) -> GatewayProcess {
        use std::io::BufRead;
        cmd.stdout(std::process::Stdio::piped());
        cmd.stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wasmgate");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<std::net::SocketAddr>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if line.contains("wasmgate listening") {
                        // Text (`address=…`) or JSON (`"address":"…"`) logs.
                        let json = line
                            .split("\"address\":\"")
                            .nth(1)
                            .and_then(|rest| rest.split('"').next());
                        if let Some(addr) = line
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("address="))
                            .or(json)
                            .and_then(|a| a.parse().ok())
                        {
                            let _ = tx.send(addr);
                        }
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                std::thread::sleep(Duration::from_millis(100));
                panic!("wasmgate did not start; output:\n{}", log.lock().unwrap());
            }
        };
        GatewayProcess { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`.
    pub async fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let end = std::time::Instant::now() + within;
        while std::time::Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// Sends a signal by name (`TERM`, `HUP`).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = std::time::Instant::now() + within;
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command for the `wasmgate` binary with a clean environment for the ACIP names.
pub fn wasmgate_command(cwd: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wasmgate"));
    cmd.current_dir(cwd);
    for (name, _) in wasmgate_config::ACIP_ENV_NAMES {
        cmd.env_remove(name);
    }
    cmd.env_remove("WASMGATE_CONFIG");
    cmd
}

/// Starts `wasmgate --config FILE` in `dir`.
pub fn spawn_with_file(dir: &Path, file: &Path) -> GatewayProcess {
    let mut cmd = wasmgate_command(dir);
    cmd.arg("--config").arg(file);
    GatewayProcess::spawn(cmd)
}

/// `wasmgate check --config FILE` (run in the file's folder) with `env` set.
pub fn wasmgate_check(file: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = wasmgate_command(file.parent().unwrap());
    cmd.args(["check", "--config"]).arg(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A fresh temporary directory.
pub fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("wasmgate-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Sends a request and parses the JSON answer (the upstream echo, or a gateway endpoint).
pub async fn json(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// The `GET /gateway/plugins` entry of plugin `name` (`plugins_url` is that endpoint).
pub async fn plugin_entry(plugins_url: String, name: &str) -> Value {
    let list = json(client().get(plugins_url)).await;
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no plugin {name}: {list}"))
        .clone()
}

/// Sends `n` GETs at once, the `i`-th to `url(i)`, and returns their statuses in order.
pub async fn burst(n: usize, url: impl Fn(usize) -> String) -> Vec<u16> {
    let c = client();
    let calls = (0..n).map(|i| {
        let (c, url) = (c.clone(), url(i));
        tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// Sends a request and returns the answer's body as text.
pub async fn text(req: reqwest::RequestBuilder) -> String {
    req.send().await.unwrap().text().await.unwrap()
}

/// Puts a plugin into the folder the way operators should: write elsewhere, then rename.
pub fn drop_plugin(dir: &Path, name: &str, wasm: &[u8], manifest: Option<&str>) {
    if let Some(m) = manifest {
        let tmp = dir.join(format!(".{name}.toml.tmp"));
        std::fs::write(&tmp, m).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.toml"))).unwrap();
    }
    let tmp = dir.join(format!(".{name}.wasm.tmp"));
    std::fs::write(&tmp, wasm).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
}

/// The bytes of a built guest plugin.
pub fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Polls `f` until it is true (plugin folder changes are picked up asynchronously).
pub async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}
