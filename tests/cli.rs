//! The `wasmgate` binary: `check`, ACIP `.env` mode, worker threads, live reload (file change
//! and SIGHUP, bad files refused), graceful shutdown on SIGTERM (streams cut at its end are
//! still logged).
mod common;

use std::time::Duration;

use common::{client, spawn_with_file, tempdir, wasmgate_check, wasmgate_command, GatewayProcess};
use wasmgate_testkit::upstream;

fn config_with(route_prefixes: &[(&str, &str)]) -> String {
    let mut s = String::from("[server]\nhost = \"127.0.0.1\"\nport = 0\n[log]\nlevel = \"info\"\n");
    for (i, (prefix, url)) in route_prefixes.iter().enumerate() {
        s.push_str(&format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"u{i}\"\n[upstreams.u{i}]\ntargets = [\"{url}\"]\n"
        ));
    }
    s
}

#[test]
fn check_accepts_a_valid_file_and_names_key_and_file_otherwise() {
    let dir = tempdir("check");
    let good = dir.join("good.toml");
    std::fs::write(&good, config_with(&[("/", "http://127.0.0.1:9")])).unwrap();
    let out = wasmgate_check(&good, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        config_with(&[("/", "http://127.0.0.1:9")]).replace("[log]", "[log]\nlevl = \"x\""),
    )
    .unwrap();
    let out = wasmgate_check(&bad, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("log.levl"),
        "{err}"
    );

    // WASMGATE_CONFIG selects the file too.
    let out = wasmgate_command(&dir)
        .arg("check")
        .env("WASMGATE_CONFIG", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // ACIP mode validates the environment.
    let out = wasmgate_command(&dir)
        .arg("check")
        .env("GATEWAY_PORT", "http")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GATEWAY_PORT"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/wasmgate.toml");
    let out = wasmgate_check(&example, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What jemalloc writes on stderr when the binary runs `--version` with `_RJEM_MALLOC_CONF=conf`
/// (tikv-jemallocator's prefixed name for `MALLOC_CONF`).
#[cfg(not(target_env = "msvc"))]
fn jemalloc_stderr(tag: &str, conf: &str) -> String {
    let dir = tempdir(tag);
    let out = wasmgate_command(&dir)
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", conf)
        .output()
        .unwrap();
    std::fs::remove_dir_all(dir).ok();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The binary allocates through jemalloc (src/allocator.rs), not the system malloc: jemalloc reads
/// its options from `_RJEM_MALLOC_CONF` and names one it does not know on stderr. glibc's malloc
/// ignores the variable.
#[test]
#[cfg(not(target_env = "msvc"))]
fn the_binary_allocates_through_jemalloc() {
    let err = jemalloc_stderr("allocator", "wasmgate_probe:true");
    assert!(
        err.contains("<jemalloc>") && err.contains("wasmgate_probe"),
        "jemalloc did not read its options: {err:?}"
    );
}

/// jemalloc's options compiled into the binary (src/allocator.rs) are the ones in effect, and
/// `_RJEM_MALLOC_CONF` still overrides them: `stats_print` makes jemalloc list its options at exit.
#[test]
#[cfg(not(target_env = "msvc"))]
fn jemalloc_options_are_compiled_in_and_the_environment_overrides_them() {
    let shipped = jemalloc_stderr("allocator-conf", "stats_print:true");
    assert!(
        shipped.contains("opt.tcache_gc_incr_bytes: 8388608"),
        "the compiled-in tcache_gc_incr_bytes is not in effect: {shipped}"
    );
    let overridden = jemalloc_stderr(
        "allocator-conf",
        "stats_print:true,tcache_gc_incr_bytes:65536",
    );
    assert!(
        overridden.contains("opt.tcache_gc_incr_bytes: 65536"),
        "_RJEM_MALLOC_CONF did not override the compiled-in option: {overridden}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acip_env_mode_reads_dotenv_and_sets_worker_threads() {
    let up = upstream().spawn().await;
    let dir = tempdir("acip");
    std::fs::write(
        dir.join(".env"),
        format!("FASTAPI_URL={}\nGATEWAY_HOST=127.0.0.1\nGATEWAY_PORT=0\nGATEWAY_WORKERS=3\nAUTH_TOKEN_SALT=distributed-gpu-inference-v1\nAUTH_API_KEYS=acip-key-1,acip-key-2\n", up.url()),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(wasmgate_command(&dir));
    let refused = client()
        .get(gw.url("/api/v1/queue/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "auth is on by default in ACIP mode");
    let echo: serde_json::Value = common::json(
        client()
            .get(gw.url("/api/v1/queue/stats"))
            .header("x-api-key", "acip-key-2"),
    )
    .await;
    assert_eq!(
        echo["uri"], "/api/v1/queue/stats",
        "catch-all route / to FASTAPI_URL"
    );

    let workers = std::fs::read_dir(format!("/proc/{}/task", gw.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.trim() == "wasmgate-worker")
        .count();
    assert_eq!(
        workers, 3,
        "GATEWAY_WORKERS sets the runtime's worker threads"
    );
    for secret in ["distributed-gpu-inference-v1", "acip-key-1", "acip-key-2"] {
        assert!(!gw.log().contains(secret), "secrets never logged");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_changes_go_live_and_bad_files_are_refused() {
    let a = upstream().route("/", "a").spawn().await;
    let b = upstream().route("/", "b").spawn().await;
    let dir = tempdir("reload");
    let file = dir.join("wasmgate.toml");
    std::fs::write(&file, config_with(&[("/a", &a.url())])).unwrap();
    let gw = spawn_with_file(&dir, &file);
    let c = client();
    assert_eq!(c.get(gw.url("/b")).send().await.unwrap().status(), 404);

    std::fs::write(&file, config_with(&[("/a", &a.url()), ("/b", &b.url())])).unwrap();
    assert!(
        gw.wait_log("configuration reloaded", Duration::from_secs(10))
            .await,
        "{}",
        gw.log()
    );
    assert_eq!(common::text(c.get(gw.url("/b"))).await, "b");

    // A bad file: refused with the key and the file named; the old config keeps serving.
    std::fs::write(
        &file,
        config_with(&[("/a", &a.url())]).replace("[server]", "[server]\nbogus_key = 1"),
    )
    .unwrap();
    assert!(
        gw.wait_log("reload refused", Duration::from_secs(10)).await,
        "{}",
        gw.log()
    );
    let log = gw.log();
    assert!(
        log.contains("server.bogus_key") && log.contains("wasmgate.toml"),
        "{log}"
    );
    assert_eq!(common::text(c.get(gw.url("/b"))).await, "b");
    assert_eq!(common::text(c.get(gw.url("/a"))).await, "a");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_environment_configuration() {
    let a = upstream().route("/", "a").spawn().await;
    let b = upstream().route("/", "b").spawn().await;
    let dir = tempdir("hup");
    let env = |url: &str| {
        // The cache (on by default in ACIP mode) would rightly keep serving `a`.
        format!(
            "FASTAPI_URL={url}\nGATEWAY_HOST=127.0.0.1\nGATEWAY_PORT=0\nAUTH_ENABLED=false\nCACHE_ENABLED=false\n"
        )
    };
    std::fs::write(dir.join(".env"), env(&a.url())).unwrap();
    let gw = GatewayProcess::spawn(wasmgate_command(&dir));
    let c = client();
    assert_eq!(common::text(c.get(gw.url("/"))).await, "a");
    std::fs::write(dir.join(".env"), env(&b.url())).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        common::text(c.get(gw.url("/"))).await,
        "a",
        "env mode reloads on SIGHUP only"
    );
    gw.signal("HUP");
    assert!(
        gw.wait_log("configuration reloaded", Duration::from_secs(10))
            .await,
        "{}",
        gw.log()
    );
    assert_eq!(common::text(c.get(gw.url("/"))).await, "b");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_in_flight_requests() {
    let up = upstream()
        .slow("/slow", Duration::from_millis(1000))
        .spawn()
        .await;
    let dir = tempdir("term");
    let file = dir.join("wasmgate.toml");
    std::fs::write(&file, config_with(&[("/", &up.url())])).unwrap();
    let mut gw = spawn_with_file(&dir, &file);
    let in_flight = tokio::spawn(client().get(gw.url("/slow")).send());
    up.wait_for_requests(1).await;
    gw.signal("TERM");
    assert!(
        gw.wait_log("shutting down", Duration::from_secs(5)).await,
        "{}",
        gw.log()
    );
    let refused = client().get(gw.url("/")).send().await;
    assert!(refused.is_err(), "no new connections once shutting down");
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(resp.status(), 200);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits after draining");
    assert!(status.success(), "{status:?}\n{}", gw.log());
    // The drained request's access line was still batched at exit: flushed, not lost.
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("wasmgate::access")
            && l.contains("path=\"/slow\"")
            && l.contains("status=200")),
        "{log}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_at_the_end_of_the_grace_period_is_still_logged() {
    // HTTP/1.1, and HTTP/2 (prior knowledge), whose streams hyper runs as tasks of their own.
    for http2 in [false, true] {
        let (up, events) = upstream().paced("/stream", "text/event-stream");
        let up = up.spawn().await;
        let dir = tempdir("cut");
        let file = dir.join("wasmgate.toml");
        let config = config_with(&[("/", &up.url())])
            .replace("[server]\n", "[server]\nshutdown_grace_ms = 300\n");
        std::fs::write(&file, config).unwrap();
        let mut gw = spawn_with_file(&dir, &file);
        let c = if http2 {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        } else {
            client()
        };
        let mut resp = c.get(gw.url("/stream")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version() == reqwest::Version::HTTP_2, http2);
        events.send("data: first\n\n".into()).unwrap();
        let first = resp.chunk().await.unwrap().expect("the first event");
        assert_eq!(&first[..], b"data: first\n\n");
        // The stream never ends: the grace period runs out and the gateway cuts it.
        gw.signal("TERM");
        let status = gw
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("exits after the grace period");
        assert!(status.success(), "{status:?}\n{}", gw.log());
        let log = gw.log();
        assert!(
            log.contains("cutting remaining connections"),
            "the grace period ran out: {log}"
        );
        let line = log
            .lines()
            .find(|l| l.contains("wasmgate::access") && l.contains("path=\"/stream\""))
            .unwrap_or_else(|| {
                panic!("http2 {http2}: the cut stream's access line was lost:\n{log}")
            });
        assert!(line.contains("response_end=shutdown"), "{line}");
        assert!(line.contains("bytes_sent=13"), "{line}");
        drop(events);
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn plugin_inspect_says_whether_a_file_fits_the_world() {
    let dir = tempdir("inspect");
    let out = wasmgate_command(&dir)
        .args([
            "plugin",
            "inspect",
            wasmgate_plugin_host::guests::ADD_HEADER,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("on-request-headers (func)"), "{text}");
    assert!(text.contains("wasmgate:plugin/request@0.1.0"), "{text}");
    assert!(text.contains("plugin: add-header 0.1.0"), "{text}");
    assert!(
        text.contains("fits the gateway-plugin world: yes"),
        "{text}"
    );

    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").unwrap(); // a core module, not a component
    let out = wasmgate_command(&dir)
        .args(["plugin", "inspect", "--json"])
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("does not compile"),
        "{v}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_what_its_guide_promises() {
    let dir = tempdir("demo");
    let mut cmd = wasmgate_command(&dir);
    cmd.args(["demo", "--port", "0", "--rate-limit", "8"]);
    let gw = GatewayProcess::spawn(cmd);
    assert!(
        gw.wait_log("Ctrl-C stops everything", Duration::from_secs(10))
            .await,
        "{}",
        gw.log()
    );
    let guide = gw.log();
    assert!(guide.contains("curl -i http://") && guide.contains("X-API-Key: demo-key"));
    let c = client();
    let key = ("x-api-key", "demo-key");
    let models = || async {
        c.get(gw.url("/v1/models"))
            .header(key.0, key.1)
            .send()
            .await
            .unwrap()
    };

    // A rejected call, an accepted one, a cache hit.
    let r = c.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = models().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-gateway-cache"], "MISS");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let r = models().await;
    assert_eq!(r.headers()["x-gateway-cache"], "HIT");

    // A streamed completion.
    let body = r#"{"model":"sim-llama-3-8b","stream":true,"messages":[{"role":"user","content":"Hello"}]}"#;
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header(key.0, key.1)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let stream = r.text().await.unwrap();
    assert!(stream.contains("data: [DONE]"), "{stream}");

    // The worker list, from heartbeats written into the gateway's in-memory store.
    let mut workers = serde_json::Value::Null;
    for _ in 0..100 {
        workers = common::json(c.get(gw.url("/api/v1/workers")).header(key.0, key.1)).await;
        if workers["total"] == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(workers["total"], 4, "{workers}");

    // The rate limit: 8 per minute (the calls above counted).
    let mut codes = Vec::new();
    for _ in 0..8 {
        let r = models().await;
        codes.push(r.status().as_u16());
    }
    assert!(codes.contains(&429), "{codes:?}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_name_every_request_and_never_a_credential() {
    // At TRACE, the most verbose level an operator can set (the compiler's own chatter aside):
    // no level may log a credential.
    let up = upstream().spawn().await;
    let dir = tempdir("logs");
    let secrets = [
        "api-key-7f3a9c",
        "salt-51bd2e",
        "jwt-secret-90ac4f",
        "signing-secret-2c8e1d",
        "admin-token-6b4f0a",
        "worker-token-e1d93b",
        "session-cookie-77aa01",
        "bearer-guess-3c5d7e",
    ];
    let env = format!(
        "FASTAPI_URL={}\nGATEWAY_HOST=127.0.0.1\nGATEWAY_PORT=0\nLOG_FORMAT=json\nLOG_LEVEL=\"trace,cranelift_codegen=info,cranelift_frontend=info,wasmtime=info,wasmtime_cranelift=info\"\n\
         AUTH_API_KEYS={}\nAUTH_TOKEN_SALT={}\nJWT_SECRET={}\nREQUEST_SIGNING_SECRET={}\n\
         GATEWAY_ADMIN_TOKEN={}\nCACHE_ENABLED=false\n",
        up.url(),
        secrets[0],
        secrets[1],
        secrets[2],
        secrets[3],
        secrets[4]
    );
    std::fs::write(dir.join(".env"), env).unwrap();
    let gw = GatewayProcess::spawn(wasmgate_command(&dir));
    let c = client();
    let ok = c
        .get(gw.url("/v1/models?api_key=query-secret-1"))
        .header("x-api-key", secrets[0])
        .header("cookie", format!("session={}", secrets[6]))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let rid = ok.headers()["x-request-id"].to_str().unwrap().to_string();
    let refused = c
        .get(gw.url("/v1/models"))
        .header("authorization", format!("Bearer {}", secrets[7]))
        .header("x-worker-token", secrets[5])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let config = c
        .get(gw.url("/gateway/config"))
        .bearer_auth(secrets[4])
        .send()
        .await
        .unwrap();
    assert_eq!(config.status(), 200);
    assert!(
        gw.wait_log(&rid, Duration::from_secs(5)).await,
        "{}",
        gw.log()
    );
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains(&rid) && l.contains("\"status\":200"))
        .unwrap_or_else(|| panic!("no access line for {rid}:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["target"], "wasmgate::access");
    assert_eq!(v["path"], "/v1/models");
    assert_eq!(v["route"], "default");
    assert_eq!(v["upstream"], "fastapi");
    assert_eq!(v["upstream_target"], up.url()[7..]);
    assert_eq!(v["attempts"], 1);
    assert!(v["trace_id"].as_str().unwrap().len() == 32);
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
    // Each plugin's outcome, in chain order.
    assert_eq!(v["plugins"]["auth"], "continue", "{line}");
    assert_eq!(v["plugins"]["rate-limit"], "continue", "{line}");
    assert_eq!(v["plugins"]["security-headers"], "continue", "{line}");
    assert!(
        gw.wait_log("\"status\":401", Duration::from_secs(5)).await,
        "the refused request is logged too"
    );
    let log = gw.log();
    let refused_line = log.lines().find(|l| l.contains("\"status\":401")).unwrap();
    let r: serde_json::Value = serde_json::from_str(refused_line).unwrap();
    assert_eq!(r["plugins"]["auth"], "answered", "{refused_line}");
    assert!(
        r["plugins"].get("rate-limit").is_none(),
        "the chain stopped at auth: {refused_line}"
    );
    assert_eq!(r["answered_by_plugin"], true);
    // Everything written by now, the admin request's line included.
    assert!(
        gw.wait_log("\"route\":\"gateway\"", Duration::from_secs(5))
            .await
    );
    let log = gw.log();
    for s in secrets.iter().chain(&["query-secret-1"]) {
        assert!(!log.contains(s), "`{s}` reached the log:\n{log}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_completion_is_logged_when_its_stream_ends() {
    use wasmgate_testkit::sim::{SimOptions, Simulator};
    let sim = Simulator::spawn(SimOptions {
        token_delay: Duration::from_millis(30),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempdir("stream-log");
    std::fs::write(
        dir.join(".env"),
        format!(
            "FASTAPI_URL={}\nGATEWAY_HOST=127.0.0.1\nGATEWAY_PORT=0\nLOG_FORMAT=json\nAUTH_ENABLED=false\nRATE_LIMIT_ENABLED=false\nCACHE_ENABLED=false\n",
            sim.url()
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(wasmgate_command(&dir));
    let c = client();
    let chat = serde_json::json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "hello"}]});
    let line_of = async |rid: &str| -> serde_json::Value {
        assert!(
            gw.wait_log(rid, Duration::from_secs(5)).await,
            "{}",
            gw.log()
        );
        let log = gw.log();
        let line = log
            .lines()
            .find(|l| l.contains(rid) && l.contains("wasmgate::access"))
            .unwrap();
        serde_json::from_str(line).unwrap()
    };

    let stream = async || {
        let resp = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat)
            .send()
            .await
            .unwrap();
        let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        (resp, rid)
    };

    // Read to its end: the line covers the whole stream.
    let (resp, rid) = stream().await;
    let head_at = std::time::Instant::now();
    let text = resp.text().await.unwrap();
    let body_ms = head_at.elapsed().as_secs_f64() * 1e3;
    let v = line_of(&rid).await;
    assert_eq!(v["response_end"], "complete", "{v}");
    assert_eq!(v["bytes_sent"], text.len(), "{v}");
    let (duration, ttfb) = (
        v["duration_ms"].as_f64().unwrap(),
        v["ttfb_ms"].as_f64().unwrap(),
    );
    // Logged at the response head, it would say a few ms of the ~300 ms stream (the two
    // clocks differ by delivery jitter, so not an exact bound).
    assert!(
        duration >= body_ms / 2.0,
        "the line waited for the stream ({body_ms} ms): {v}"
    );
    assert!(ttfb < duration, "{v}");

    // A client that hangs up after the first event.
    let (mut resp, rid) = stream().await;
    let first = resp.chunk().await.unwrap().unwrap();
    drop(resp);
    let v = line_of(&rid).await;
    assert_eq!(v["response_end"], "client_disconnected", "{v}");
    let sent = v["bytes_sent"].as_u64().unwrap();
    assert!(
        sent >= first.len() as u64 && sent < text.len() as u64,
        "{v}"
    );
    std::fs::remove_dir_all(dir).ok();
}
