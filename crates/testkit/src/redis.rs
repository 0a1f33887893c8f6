//! A real `redis-server` on a free port, killed on drop. Stop and start it again to test
//! outages.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use fred::interfaces::{ClientLike, KeysInterface};
use fred::monitor::MonitorCommand;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many ports [`on_first_free_port`] tries, and how often [`RedisServer::restart`] tries
/// its own.
const START_ATTEMPTS: usize = 5;

/// Runs `start` on ports from `ports` (at most [`START_ATTEMPTS`]) until it starts `what` on
/// one. A port [`crate::free_port`] gives is free when asked, but a parallel test may bind it
/// before `redis-server` does: the server then exits at once, `start` returns `None`, and the
/// next port is tried.
async fn on_first_free_port<T>(
    ports: impl Iterator<Item = u16>,
    what: &str,
    mut start: impl AsyncFnMut(u16) -> Option<T>,
) -> T {
    for port in ports.take(START_ATTEMPTS) {
        if let Some(started) = start(port).await {
            return started;
        }
    }
    panic!("{what} did not start: each of {START_ATTEMPTS} ports was taken");
}

/// `child` is no longer running (a `redis-server` that could not bind its port exits at once).
fn has_exited(child: &mut Child) -> bool {
    !matches!(child.try_wait(), Ok(None))
}

/// A `redis-server` child process on `127.0.0.1`.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .finish()
    }
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    ///
    /// Panics with install instructions when `redis-server` is not on the PATH
    /// (`scripts/test.sh` installs it).
    pub async fn start() -> RedisServer {
        RedisServer::start_with(Vec::new()).await
    }

    /// Starts `redis-server` with extra arguments (after the test kit's own).
    pub async fn start_with(extra: Vec<String>) -> RedisServer {
        RedisServer::start_on(std::iter::repeat_with(crate::free_port), extra).await
    }

    /// Starts `redis-server` on the first of `ports` it can bind ([`on_first_free_port`]).
    async fn start_on(ports: impl Iterator<Item = u16>, extra: Vec<String>) -> RedisServer {
        let mut r = RedisServer {
            port: 0,
            child: None,
            extra,
        };
        on_first_free_port(ports, "redis-server", async |port| {
            r.port = port;
            r.spawn().await.then_some(())
        })
        .await;
        r
    }

    /// Starts `redis-server` on `self.port` and waits until it answers `PING`; false when it
    /// exited instead (it could not bind the port).
    async fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                // Tests make Redis slow on purpose with `DEBUG SLEEP`.
                "--enable-debug-command",
                "yes",
            ])
            .args(self.extra.iter().map(|a| a.replace("{port}", &self.port.to_string())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it: `apt-get install redis-server` (scripts/test.sh does this)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited() {
                return false;
            }
            if self.ping().await {
                // Another test's server on the port answers too: ours is the one still
                // running once its own bind has had time to fail.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return !self.exited();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    /// The child is not running.
    fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(has_exited)
    }

    /// True when the server answers `PING`.
    pub async fn ping(&self) -> bool {
        let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(("127.0.0.1", self.port)),
        )
        .await
        else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        // `+PONG`, or `-NOAUTH` from a server started with `--requirepass`: both are alive.
        let mut buf = [0u8; 5];
        matches!(
            tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf)).await,
            Ok(Ok(_)) if &buf == b"+PONG" || &buf == b"-NOAU"
        )
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connected client (for a test playing the Python backend, which owns `worker:*`).
    pub async fn client(&self) -> fred::clients::Client {
        let config = fred::types::config::Config::from_url(&self.url()).expect("redis url");
        let client = fred::types::Builder::from_config(config)
            .build()
            .expect("client");
        client.init().await.expect("client connects");
        client
    }

    /// Starts recording every command the server runs (`MONITOR`).
    pub async fn monitor(&self) -> Monitor {
        use futures_util::StreamExt;
        let config = fred::types::config::Config::from_url(&self.url()).expect("redis url");
        let mut stream = Box::pin(fred::monitor::run(config).await.expect("MONITOR starts"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let task = tokio::spawn(async move {
            while let Some(cmd) = stream.next().await {
                sink.lock().unwrap().push(cmd);
            }
        });
        let client = self.client().await;
        let m = Monitor { log, task, client };
        // MONITOR is live once it sees a command sent after it started.
        m.sync().await;
        m
    }

    /// Kills the server (an outage). Data is lost; nothing is persisted.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (a few tries: the port was just released).
    pub async fn restart(&mut self) {
        self.stop();
        for _ in 0..START_ATTEMPTS {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not start again on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `MONITOR` recording of every command the server ran (from every client, and the
/// commands Lua scripts ran, whose `client` is `lua`).
pub struct Monitor {
    log: Arc<Mutex<Vec<MonitorCommand>>>,
    task: tokio::task::JoinHandle<()>,
    client: fred::clients::Client,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

impl Monitor {
    /// Sends a marker (`GET monitor:marker:<uuid>`) and waits until the recording has it, so
    /// everything the server ran before is in the recording.
    async fn sync(&self) {
        let marker = format!("monitor:marker:{}", uuid::Uuid::new_v4());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let _: Option<String> = self.client.get(&marker).await.expect("marker GET");
            for _ in 0..20 {
                let seen = self.log.lock().unwrap().iter().any(|c| {
                    c.args
                        .first()
                        .and_then(|a| a.as_str())
                        .is_some_and(|a| a == marker)
                });
                if seen {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        panic!("MONITOR did not record the marker within 10 s");
    }

    /// Every command recorded so far (after a marker round trip), without the recorder's own
    /// (its markers and connection setup).
    pub async fn commands(&self) -> Vec<MonitorCommand> {
        self.sync().await;
        let log = self.log.lock().unwrap();
        let own: std::collections::HashSet<&str> = log
            .iter()
            .filter(|c| {
                c.args
                    .first()
                    .and_then(|a| a.as_str())
                    .is_some_and(|a| a.starts_with("monitor:marker:"))
            })
            .map(|c| c.client.as_str())
            .collect();
        log.iter()
            .filter(|c| !own.contains(c.client.as_str()))
            .cloned()
            .collect()
    }

    /// Forgets what was recorded so far.
    pub async fn clear(&self) {
        self.sync().await;
        self.log.lock().unwrap().clear();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); it comes with redis-server"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of `n` primaries (no replicas) on free ports, slots spread by
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits for `cluster_state:ok`.
    pub async fn start(n: usize) -> RedisCluster {
        let dir = std::env::temp_dir().join(format!("wasmgate-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for _ in 0..n {
            let conf = dir.join("nodes-{port}.conf").display().to_string();
            nodes.push(
                RedisServer::start_with(vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    conf,
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ])
                .await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(&args);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes.iter().all(|n| {
                redis_cli(&["-p", &n.port().to_string(), "cluster", "info"])
                    .contains("cluster_state:ok")
            });
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        RedisCluster { nodes, dir }
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=...`.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port()));
        }
        url
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary `redis-server` watched by one Sentinel (`redis-server --sentinel`) under the
/// service name `mymaster`.
pub struct RedisSentinel {
    primary: RedisServer,
    sentinel: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl std::fmt::Debug for RedisSentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSentinel")
            .field("port", &self.port)
            .finish()
    }
}

impl RedisSentinel {
    /// Starts the primary and the sentinel, and waits until the sentinel knows the primary.
    /// The sentinel moves to the next free port when a parallel test took its own
    /// ([`on_first_free_port`]), as [`RedisServer::start`] does.
    pub async fn start() -> RedisSentinel {
        let primary = RedisServer::start().await;
        let dir = std::env::temp_dir().join(format!("wasmgate-sentinel-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports = std::iter::repeat_with(crate::free_port);
        let (port, sentinel) = on_first_free_port(ports, "the sentinel", async |port| {
            let sentinel = start_sentinel(&dir, port, primary.port()).await?;
            Some((port, sentinel))
        })
        .await;
        RedisSentinel {
            primary,
            sentinel,
            port,
            dir,
        }
    }

    /// `redis-sentinel://127.0.0.1:PORT?sentinelServiceName=mymaster`.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName=mymaster",
            self.port
        )
    }

    /// The primary behind the sentinel.
    pub fn primary(&self) -> &RedisServer {
        &self.primary
    }
}

/// Starts a sentinel on `port` (its config in `dir`) watching the primary on `primary`, and
/// waits until it knows the primary; `None` when it exited first (it could not bind `port`).
async fn start_sentinel(dir: &std::path::Path, port: u16, primary: u16) -> Option<Child> {
    let conf = dir.join(format!("sentinel-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode no\nsentinel monitor mymaster 127.0.0.1 {primary} 1\nsentinel down-after-milliseconds mymaster 2000\n"
        ),
    )
    .unwrap();
    let mut sentinel = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server --sentinel");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if has_exited(&mut sentinel) {
            return None;
        }
        let reply = redis_cli(&[
            "-p",
            &port.to_string(),
            "sentinel",
            "get-master-addr-by-name",
            "mymaster",
        ]);
        // Another test's sentinel on the port names its own primary, not ours.
        if reply.contains(&primary.to_string()) {
            return Some(sentinel);
        }
        assert!(
            Instant::now() < deadline,
            "the sentinel did not start within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::RedisServer;

    /// A port someone else holds (a listener that never answers, or another test's Redis) is
    /// given up for the next one, instead of waiting 10 s for a PING or sharing that server.
    #[tokio::test]
    async fn a_taken_port_is_given_up_for_the_next() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let held = listener.local_addr().unwrap().port();
        let other = RedisServer::start().await;
        for taken in [held, other.port()] {
            let ports = std::iter::once(taken).chain(std::iter::repeat_with(crate::free_port));
            let r = RedisServer::start_on(ports, Vec::new()).await;
            assert_ne!(r.port(), taken);
            assert!(r.ping().await);
        }
        assert!(other.ping().await, "the other server is left alone");
    }

    /// A sentinel whose port another server holds gives up at once (its `redis-server` exits),
    /// so that [`super::RedisSentinel::start`] moves on to the next port.
    #[tokio::test]
    async fn a_sentinel_on_a_taken_port_gives_up() {
        let (other, primary) = (RedisServer::start().await, RedisServer::start().await);
        let dir = std::env::temp_dir().join(format!("wasmgate-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let started = std::time::Instant::now();
        let sentinel = super::start_sentinel(&dir, other.port(), primary.port()).await;
        assert!(sentinel.is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let free = crate::free_port();
        let mut sentinel = super::start_sentinel(&dir, free, primary.port())
            .await
            .expect("a sentinel on a free port");
        let _ = sentinel.kill();
        let _ = sentinel.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
