//! `GET /gateway/ui` in a real browser: Debian's Chromium, headless, loads the page from the
//! gateway, is handed the admin token, and renders routes (rate, errors, p50/p99), upstream
//! targets with health, plugins with state and cost, token usage by model, and GPU workers
//! with region, GPU and heartbeat age. A screenshot goes to `test-output/dashboard.png`.
mod common;

use common::{client, eventually, json};
use fred::interfaces::KeysInterface;
use wasmgate_config::Secret;
use wasmgate_testkit::{gateway, RedisServer};

const ADMIN: &str = "dash-admin-token";

/// Runs headless Chromium on `url` with `args` (after the page's scripts ran for a while).
fn chromium(args: &[&str], url: &str) -> std::process::Output {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Chromium (Debian's `chromium` package; scripts/test.sh installs it)");
    let profile = common::tempdir("chromium-profile");
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    std::fs::remove_dir_all(profile).ok();
    out
}

/// The rows of the rendered table `id`, as cell texts (tags stripped).
fn table(dom: &str, id: &str) -> Vec<Vec<String>> {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id}"));
    let end = start + dom[start..].find("</table>").unwrap();
    let body = &dom[start..end];
    let body = &body[body.find("<tbody").unwrap_or(0)..];
    body.split("<tr")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let inner = &cell[cell.find('>').map_or(0, |i| i + 1)..];
                    inner[..inner.find('<').unwrap_or(inner.len())].to_string()
                })
                .collect()
        })
        .collect()
}

/// The row of `rows` whose first cell (or, with `col`, that cell) is `key`.
fn row<'a>(rows: &'a [Vec<String>], col: usize, key: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r.get(col).is_some_and(|c| c == key))
        .unwrap_or_else(|| panic!("no row with {key}: {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_routes_targets_plugins_and_workers_in_chromium() {
    let redis = RedisServer::start().await;
    let py = redis.client().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let put = async |k: &str, v: &str| {
        let _: () = py.set(k, v, None, None, false).await.unwrap();
    };
    put(
        "worker:gpu-a:status",
        r#"{"status":"busy","region":"eu-west"}"#,
    )
    .await;
    put(
        "worker:gpu-a:gpu",
        r#"{"name":"NVIDIA H100","utilization":0.62}"#,
    )
    .await;
    put("worker:gpu-a:heartbeat", &now.as_millis().to_string()).await;

    // An OpenAI-style backend (the inference simulator) and a dead target.
    let up = wasmgate_testkit::sim::Simulator::spawn(wasmgate_testkit::sim::SimOptions {
        token_delay: std::time::Duration::from_millis(5),
        ..Default::default()
    })
    .await
    .unwrap();
    let refusing = wasmgate_testkit::RefusingTarget::bind();
    let dead = refusing.url();
    let gw = gateway()
        .route("/v1", "llm", &[up.url(), dead.clone()])
        .redis(&redis.url())
        .config(|c| {
            c.admin.token = Some(Secret::new(ADMIN));
            c.metrics.token = Some(Secret::new("scrape-only"));
            // The page reads the metrics where this gateway serves them.
            c.metrics.path = "/internal/metrics".into();
            c.router.health_check_interval_ms = 100;
            let u = c.upstreams.get_mut("llm").unwrap();
            u.health_check.path = Some("/health".into());
            u.health_check.interval_ms = Some(100);
            u.health_check.unhealthy_threshold = 1;
            c.security_headers.enabled = true;
        })
        .spawn()
        .await;
    let c = client();
    // Traffic, and the dead target ejected by its health check.
    for _ in 0..40 {
        assert_eq!(
            c.get(gw.url("/v1/models")).send().await.unwrap().status(),
            200
        );
    }
    // Two completions (token usage by model) and a stream (time to first token).
    let mut usage = (0, 0);
    let mut chat = serde_json::json!({"model": "llama-3-8b",
        "messages": [{"role": "user", "content": "three word prompt"}]});
    for _ in 0..2 {
        let answer = json(c.post(gw.url("/v1/chat/completions")).json(&chat)).await;
        usage.0 += answer["usage"]["prompt_tokens"].as_u64().unwrap();
        usage.1 += answer["usage"]["completion_tokens"].as_u64().unwrap();
    }
    chat["stream"] = serde_json::json!(true);
    let r = c.post(gw.url("/v1/chat/completions")).json(&chat);
    let stream = r.send().await.unwrap().text().await.unwrap();
    // The simulator reports usage in a stream's last event.
    let last: serde_json::Value = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .rfind(|v| v["usage"].is_object())
        .expect("usage in the stream");
    usage.0 += last["usage"]["prompt_tokens"].as_u64().unwrap();
    usage.1 += last["usage"]["completion_tokens"].as_u64().unwrap();
    eventually("the dead target is ejected", async || {
        json(c.get(gw.url("/gateway/health"))).await["status"] == "degraded"
    })
    .await;
    eventually("the worker registry has read the heartbeat", async || {
        let r = c
            .get(gw.url("/gateway/workers"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        r.json::<serde_json::Value>().await.unwrap()["total"] == 1
    })
    .await;

    // The page itself carries no data and is served with a strict CSP.
    let page = c.get(gw.url("/gateway/ui")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("connect-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    // The worker list needs the admin token.
    let r = c.get(gw.url("/gateway/workers")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Without the token the page renders no data and says why.
    let url = gw.url("/gateway/ui");
    let out = tokio::task::spawn_blocking(move || chromium(&["--dump-dom"], &url))
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dom.contains("Admin token refused or missing"), "{dom}");
    assert!(!table(&dom, "workers").iter().any(|r| r[0] == "gpu-a"));

    // With the token (handed over in the fragment, never sent to the server).
    let url = format!("{}#token={ADMIN}", gw.url("/gateway/ui"));
    let dump_url = url.clone();
    let out = tokio::task::spawn_blocking(move || chromium(&["--dump-dom"], &dump_url))
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page loaded its data: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dom
    );
    let status = dom.split("id=\"status\"").nth(1).unwrap();
    assert!(status.contains(">degraded<"), "{status}");

    let routes = table(&dom, "routes");
    // route, req/s, errors, p50 ms, p99 ms, requests
    let llm = row(&routes, 0, "llm");
    assert_eq!(llm[2], "0.0 %", "no errors: {llm:?}");
    let p50: f64 = llm[3].parse().unwrap_or_else(|_| panic!("p50: {llm:?}"));
    let p99: f64 = llm[4].parse().unwrap_or_else(|_| panic!("p99: {llm:?}"));
    assert!(p50 > 0.0 && p99 >= p50, "{llm:?}");
    assert_eq!(llm[5], "43", "40 model lists and 3 completions: {llm:?}");

    // model, route, input tokens, output tokens, output tok/s, TTFT p50 ms
    let models = table(&dom, "models");
    let m = row(&models, 0, "llama-3-8b");
    assert_eq!(m[1], "llm", "{m:?}");
    assert_eq!(
        (m[2].as_str(), m[3].as_str()),
        (usage.0.to_string().as_str(), usage.1.to_string().as_str()),
        "{m:?}"
    );
    let ttft: f64 = m[5].parse().unwrap_or_else(|_| panic!("TTFT: {m:?}"));
    assert!(ttft >= 5.0, "after the simulator's 5 ms prefill: {m:?}");

    // upstream, target, health, in flight
    let targets = table(&dom, "targets");
    assert_eq!(
        row(&targets, 1, &up.url()[7..])[2],
        "healthy",
        "{targets:?}"
    );
    assert_eq!(row(&targets, 1, &dead[7..])[2], "ejected", "{targets:?}");

    // plugin, state, source, calls, traps, p50 µs
    let plugins = table(&dom, "plugins");
    let sh = row(&plugins, 0, "security-headers");
    assert_eq!(
        (sh[1].as_str(), sh[2].as_str()),
        ("active", "builtin"),
        "{sh:?}"
    );
    assert!(sh[3].parse::<u64>().unwrap() >= 40, "{sh:?}");

    // worker, status, region, GPU, heartbeat age
    let workers = table(&dom, "workers");
    let w = row(&workers, 0, "gpu-a");
    assert_eq!(w[1], "busy");
    assert_eq!(w[2], "eu-west");
    assert_eq!(w[3], "NVIDIA H100 · 62 %");
    assert!(w[4].ends_with(" s"), "{w:?}");

    // A screenshot for people.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("dashboard.png");
    std::fs::remove_file(&shot).ok();
    let arg = format!("--screenshot={}", shot.display());
    let out =
        tokio::task::spawn_blocking(move || chromium(&[&arg, "--window-size=1280,800"], &url))
            .await
            .unwrap();
    let png = std::fs::read(&shot)
        .unwrap_or_else(|_| panic!("no screenshot: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "a rendered page, not a blank one");
}
