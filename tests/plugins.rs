//! Plugins in the request path, loaded from a watched folder: the example plugin, hostile
//! plugins under budgets, refusals, live reload under load, local answers, admin endpoints.
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, drop_plugin, echoed_header, eventually, expect_error, read, tempdir};
use serde_json::Value;
use wasmgate_plugin_host::guests;
use wasmgate_testkit::{gateway, upstream};

async fn plugins_json(url: String) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A fresh plugin folder holding the add-header example with [`ADD_HEADER_MANIFEST`].
fn add_header_folder(tag: &str) -> std::path::PathBuf {
    let dir = tempdir(tag);
    drop_plugin(
        &dir,
        "add-header",
        &read(guests::ADD_HEADER),
        Some(ADD_HEADER_MANIFEST),
    );
    dir
}

const ADD_HEADER_MANIFEST: &str = r#"
[config]
name = "x-team"
value = "gpu-platform"
response_name = "x-seen-by"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_plugin_dropped_in_the_folder_edits_requests_and_responses() {
    let up = upstream().spawn().await;
    let dir = add_header_folder("plugins-example");
    let gw = gateway().upstream(&up).plugins_dir(&dir).spawn().await;

    let resp = client().get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(
        resp.headers()["x-seen-by"],
        "gpu-platform",
        "response phase ran"
    );
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(
        echoed_header(&echo, "x-team"),
        Some("gpu-platform"),
        "request phase ran"
    );

    let list = plugins_json(gw.url("/gateway/plugins")).await;
    let p = &list["plugins"][0];
    assert_eq!(p["name"], "add-header");
    assert_eq!(p["version"], "0.1.0");
    assert_eq!(p["source"]["kind"], "file");
    assert!(p["source"]["path"]
        .as_str()
        .unwrap()
        .ends_with("add-header.wasm"));
    assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        p["phases"],
        serde_json::json!(["request-headers", "response-headers"])
    );
    assert_eq!(p["state"], "active");
    assert!(p["calls"].as_u64().unwrap() >= 2);
    assert!(p["p50_us"].as_f64().is_some());

    // A new file goes live without a restart.
    drop_plugin(
        &dir,
        "tp-read-file",
        &read(guests::TP_READ_FILE),
        Some("routes = [\"snoop\"]"),
    );
    let url = gw.url("/gateway/plugins");
    eventually("second plugin loaded", async || {
        plugins_json(url.clone()).await["plugins"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    // Removing a file unloads it.
    std::fs::remove_file(dir.join("add-header.wasm")).unwrap();
    eventually("add-header unloaded", async || {
        let echo: Value = common::json(client().get(gw.url("/x"))).await;
        echoed_header(&echo, "x-team").is_none()
    })
    .await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_cost_one_request_and_other_routes_keep_full_success() {
    let up = upstream().spawn().await;
    let dir = tempdir("plugins-hostile");
    // Each plugin gets one budget that can stop it: the epoch deadline is wall time, so the
    // memory bomb gets a CPU budget it cannot reach first, even on a loaded machine.
    for (name, path, route, budget) in [
        ("tp-loop", guests::TP_LOOP, "loop", "cpu_ms = 20"),
        (
            "tp-memory-bomb",
            guests::TP_MEMORY_BOMB,
            "bomb",
            "cpu_ms = 10000\nmemory_mb = 16",
        ),
        ("tp-panic", guests::TP_PANIC, "panic", "cpu_ms = 1000"),
    ] {
        let manifest =
            format!("routes = [\"{route}\"]\n[budget]\n{budget}\ndisable_after_traps = 0\n");
        drop_plugin(&dir, name, &read(path), Some(&manifest));
    }
    let gw = gateway()
        .route("/loop", "loop", &[up.url()])
        .route("/bomb", "bomb", &[up.url()])
        .route("/panic", "panic", &[up.url()])
        .route("/ok", "ok", &[up.url()])
        .plugins_dir(&dir)
        .spawn()
        .await;
    let c = client();

    // Healthy traffic on another route, all the while.
    let ok_url = gw.url("/ok/ping");
    let healthy = tokio::spawn(async move {
        let c = client();
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(c.get(&ok_url).send().await.unwrap().status().as_u16());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        statuses
    });
    for route in ["/loop", "/bomb", "/panic"] {
        let resp = c
            .get(gw.url(route))
            .header("x-trigger", "1")
            .send()
            .await
            .unwrap();
        let v = expect_error(resp, 500, "plugin_error").await;
        assert!(v["message"].as_str().unwrap().contains("tp-"), "{v}");
        // The very next request through the same plugin is served by a fresh instance.
        assert_eq!(
            c.get(gw.url(route)).send().await.unwrap().status(),
            200,
            "{route}"
        );
    }
    let statuses = healthy.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "other routes keep 100% success: {statuses:?}"
    );

    let list = plugins_json(gw.url("/gateway/plugins")).await;
    let by_name = |n: &str| {
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("tp-loop")["cpu_kills"], 1);
    assert_eq!(by_name("tp-memory-bomb")["memory_kills"], 1);
    assert_eq!(by_name("tp-panic")["traps"], 1);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_are_refused_with_the_reason_and_the_old_chain_keeps_serving() {
    let up = upstream().spawn().await;
    let dir = add_header_folder("plugins-bad");
    let gw = gateway().upstream(&up).plugins_dir(&dir).spawn().await;
    let url = gw.url("/gateway/plugins");

    drop_plugin(&dir, "add-header", b"\0asm garbage", None);
    eventually("refusal reported", async || {
        !plugins_json(url.clone()).await["refused"]
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
    let list = plugins_json(url.clone()).await;
    assert!(
        list["refused"][0]["error"]
            .as_str()
            .unwrap()
            .contains("does not compile"),
        "{list}"
    );
    assert_eq!(
        list["plugins"][0]["name"], "add-header",
        "the running version stays"
    );
    let echo: Value = common::json(client().get(gw.url("/x"))).await;
    assert_eq!(echoed_header(&echo, "x-team"), Some("gpu-platform"));

    // A manifest with an unknown key names it.
    drop_plugin(&dir, "tp-panic", &read(guests::TP_PANIC), Some("ordr = 1"));
    eventually("manifest refusal", async || {
        plugins_json(url.clone()).await["refused"]
            .to_string()
            .contains("ordr")
    })
    .await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_plugin_50_times_under_load_fails_no_request() {
    let up = upstream().spawn().await;
    let dir = tempdir("plugins-reload");
    let manifest = |n: usize| format!("[config]\nname = \"x-version\"\nvalue = \"v{n}\"\n");
    drop_plugin(
        &dir,
        "add-header",
        &read(guests::ADD_HEADER),
        Some(&manifest(0)),
    );
    let gw = gateway().upstream(&up).plugins_dir(&dir).spawn().await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let versions = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop, ok, failed, versions) = (
            gw.url("/load"),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            versions.clone(),
        );
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let echo: Value = r.json().await.unwrap();
                        if let Some(v) = echoed_header(&echo, "x-version") {
                            versions.lock().unwrap().insert(v.to_string());
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let wasm = read(guests::ADD_HEADER);
    for n in 1..=50 {
        drop_plugin(&dir, "add-header", &wasm, Some(&manifest(n)));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let url = gw.url("/after");
    eventually("the last version serves", async || {
        let echo: Value = common::json(client().get(url.clone())).await;
        echoed_header(&echo, "x-version") == Some("v50")
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during 50 replacements"
    );
    assert!(ok.load(Ordering::Relaxed) > 50, "load ran throughout");
    let seen = versions.lock().unwrap().len();
    assert!(
        seen >= 5,
        "requests were served by many successive versions (saw {seen})"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_can_answer_locally_and_chains_run_in_order_with_shared_properties() {
    let up = upstream().spawn().await;
    let dir = tempdir("plugins-chain");
    let probe = read(guests::TP_CHAIN_PROBE);
    drop_plugin(&dir, "probe-a", &probe, Some("order = 1\ngrant = [\"kv\", \"metrics\"]\n[config]\ntag = \"a\"\nset_tenant = \"acme\"\n"));
    drop_plugin(
        &dir,
        "probe-b",
        &probe,
        Some("order = 2\ngrant = [\"kv\", \"metrics\"]\n[config]\ntag = \"b\"\n"),
    );
    drop_plugin(
        &dir,
        "tp-kv-escape",
        &read(guests::TP_KV_ESCAPE),
        Some("routes = [\"local\"]\ngrant = [\"kv\"]\n"),
    );
    let gw = gateway()
        .route("/local", "local", &[up.url()])
        .route("/", "main", &[up.url()])
        .plugins_dir(&dir)
        .spawn()
        .await;
    let c = client();

    let resp = c.get(gw.url("/v1/x")).send().await.unwrap();
    assert_eq!(resp.headers()["x-probe-a-status"], "200");
    assert_eq!(resp.headers()["x-probe-b-trail"], "a;b;");
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(
        echoed_header(&echo, "x-probe-b-tenant"),
        Some("acme"),
        "a property set by a earlier plugin"
    );

    let before = up.request_count();
    let resp = c.get(gw.url("/local")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let report: Value = resp.json().await.unwrap();
    assert_eq!(
        report["write_worker"], "ok:()",
        "the plugin answered itself"
    );
    assert_eq!(
        up.request_count(),
        before,
        "a local answer never reaches the upstream"
    );

    // on-log ran after each response, off the request path (kv and metrics from the guest).
    let rt = gw.gateway().plugins().unwrap().clone();
    eventually("on-log counted every request", async || {
        rt.services().metrics.counter("tp-probe-a", "logged") >= 2
    })
    .await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_admin_token() {
    let up = upstream().spawn().await;
    let dir = add_header_folder("plugins-admin");
    let open = gateway().upstream(&up).plugins_dir(&dir).spawn().await;
    let resp = client()
        .post(open.url("/gateway/plugins/add-header/disable"))
        .send()
        .await
        .unwrap();
    common::expect_admin_off(resp).await;

    let gw = gateway()
        .upstream(&up)
        .config(|c| c.admin.token = Some(wasmgate_config::Secret::new("s3cret-admin")))
        .plugins_dir(&dir)
        .spawn()
        .await;
    let c = client();
    let disable = gw.url("/gateway/plugins/add-header/disable");
    expect_error(c.post(&disable).send().await.unwrap(), 401, "unauthorized").await;
    expect_error(
        c.post(&disable).bearer_auth("wrong").send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let v: Value = common::json(c.post(&disable).bearer_auth("s3cret-admin")).await;
    assert_eq!(v["state"], "disabled");
    let echo: Value = common::json(c.get(gw.url("/x"))).await;
    assert!(
        echoed_header(&echo, "x-team").is_none(),
        "a disabled plugin does not run"
    );
    let v: Value = common::json(
        c.post(gw.url("/gateway/plugins/add-header/enable"))
            .bearer_auth("s3cret-admin"),
    )
    .await;
    assert_eq!(v["state"], "active");
    let echo: Value = common::json(c.get(gw.url("/x"))).await;
    assert_eq!(echoed_header(&echo, "x-team"), Some("gpu-platform"));
    let v: Value = common::json(
        c.post(gw.url("/gateway/plugins/add-header/reload"))
            .bearer_auth("s3cret-admin"),
    )
    .await;
    assert_eq!(v["name"], "add-header");
    let resp = c
        .post(gw.url("/gateway/plugins/nope/enable"))
        .bearer_auth("s3cret-admin")
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "not_found").await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_built_with_componentize_py_runs_from_the_folder() {
    let up = upstream().spawn().await;
    let dir = tempdir("plugins-python");
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-plugins/examples/python-header");
    let built = dir.join("python-header.build");
    let status = std::process::Command::new("componentize-py")
        .current_dir(&example)
        .args(["-q", "-d", "../../../wit", "-w", "gateway-plugin", "componentize", "app", "-o"])
        .arg(&built)
        .status()
        .expect("componentize-py is needed for this test: pip install componentize-py (scripts/test.sh installs it)");
    assert!(status.success(), "componentize-py failed");
    // The defaults (64 MiB memory cap, 50 ms CPU per call, pool sizes) suit an 18 MB Python
    // component too: no budget section.
    let manifest = "[config]\nname = \"x-lang\"\nvalue = \"python\"\n";
    drop_plugin(
        &dir,
        "python-header",
        &std::fs::read(&built).unwrap(),
        Some(manifest),
    );
    std::fs::remove_file(&built).unwrap();
    let gw = gateway().upstream(&up).plugins_dir(&dir).spawn().await;

    let c = client();
    for _ in 0..3 {
        let echo: Value = common::json(c.get(gw.url("/v1/models"))).await;
        assert_eq!(echoed_header(&echo, "x-lang"), Some("python"));
    }
    let list = plugins_json(gw.url("/gateway/plugins")).await;
    assert_eq!(list["plugins"][0]["name"], "python-header");
    assert_eq!(list["plugins"][0]["state"], "active");
    assert!(list["refused"].as_array().unwrap().is_empty(), "{list}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_phases_see_every_chunk_and_can_answer_or_transform() {
    let (builder, pace) = upstream().paced("/stream", "text/event-stream");
    let up = builder.spawn().await;
    let dir = tempdir("plugins-body");
    drop_plugin(&dir, "tp-body", &read(guests::TP_BODY), None);
    let gw = gateway().upstream(&up).plugins_dir(&dir).spawn().await;
    let c = client();

    // Request chunks reach the plugin; the response is transformed chunk by chunk.
    let text = common::text(c.post(gw.url("/echo")).body("hello world")).await;
    assert!(text.contains(r#""BODY":"HELLO WORLD""#), "{text}");
    assert!(text.ends_with("|req=11|chunks=1"), "{text}");
    assert_eq!(
        up.requests().last().unwrap().body,
        "hello world",
        "the upstream got the body unchanged"
    );

    // A chunk with a blocked word: the plugin answers and the upstream's answer never arrives.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Ok("fine part; ".into()), Ok("now BLOCK this".into())];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = c.post(gw.url("/echo")).body(body).send().await.unwrap();
    let v = expect_error(resp, 403, "blocked").await;
    assert!(v["message"].as_str().unwrap().contains("blocked word"));

    // Streaming stays streaming through a response-body plugin.
    let mut resp = c.get(gw.url("/stream")).send().await.unwrap();
    for n in 1..=3 {
        pace.send(bytes::Bytes::from(format!("data: event {n}\n\n")))
            .unwrap();
        let chunk = tokio::time::timeout(Duration::from_secs(3), resp.chunk())
            .await
            .expect("chunk streams through")
            .unwrap()
            .unwrap();
        assert_eq!(chunk, bytes::Bytes::from(format!("DATA: EVENT {n}\n\n")));
    }
    drop(pace);
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8(rest).unwrap(), "|req=0|chunks=3");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_override_a_plugins_config() {
    let up = upstream().spawn().await;
    let dir = tempdir("plugins-route-config");
    let manifest = "[config]\nname = \"x-team\"\nvalue = \"platform\"\n[routes_config.llm]\nvalue = \"llm-team\"\n";
    drop_plugin(
        &dir,
        "add-header",
        &read(guests::ADD_HEADER),
        Some(manifest),
    );
    let gw = gateway()
        .route("/v1", "llm", &[up.url()])
        .route("/", "jobs", &[up.url()])
        .plugins_dir(&dir)
        .spawn()
        .await;
    let c = client();
    let echo: Value = common::json(c.get(gw.url("/v1/models"))).await;
    assert_eq!(
        echoed_header(&echo, "x-team"),
        Some("llm-team"),
        "the route's override"
    );
    let echo: Value = common::json(c.get(gw.url("/api/v1/jobs"))).await;
    assert_eq!(
        echoed_header(&echo, "x-team"),
        Some("platform"),
        "the plugin's own config elsewhere"
    );

    let list = plugins_json(gw.url("/gateway/plugins")).await;
    let entries = list["plugins"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "the plugin and its llm variant: {list}");
    assert!(entries.iter().any(|p| p["route_override"] == "llm"));
    assert!(list["refused"].as_array().unwrap().is_empty(), "{list}");
    std::fs::remove_dir_all(dir).ok();
}
