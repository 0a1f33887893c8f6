//! The deploy files (`deploy/`) hold together: the compose file validates and sets only names
//! the gateway reads, the Kubernetes manifests probe the gateway's real endpoints and give it
//! time to drain, every shipped config passes `wasmgate check`, `wasmgate install` writes a
//! working unit and config without overwriting an operator's, and `wasmgate healthcheck`
//! (the image's HEALTHCHECK) tells a live gateway from a dead one.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{spawn_with_file, tempdir, wasmgate_check, wasmgate_command};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A (one-document) YAML file as a JSON value.
fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn acip_names() -> Vec<&'static str> {
    wasmgate_config::ACIP_ENV_NAMES
        .iter()
        .map(|(n, _)| *n)
        .collect()
}

/// `wasmgate check --config FILE` with `env`; panics with the reason when it fails.
fn check(file: &Path, env: &[(&str, &str)]) {
    let out = wasmgate_check(file, env);
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `wasmgate install` (run in `cwd`) writing the unit into `units` and the config at `config`.
fn install(cwd: &Path, units: &Path, config: &Path) -> std::process::Output {
    wasmgate_command(cwd)
        .arg("install")
        .arg("--unit-dir")
        .arg(units)
        .arg("--config-path")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn the_compose_file_validates_and_sets_only_names_the_gateway_reads() {
    let out = std::process::Command::new("docker-compose")
        .args(["-f", "deploy/docker-compose.yml", "config", "-q"])
        .current_dir(repo(""))
        .env_remove("AUTH_API_KEYS")
        .output()
        .expect("docker-compose (Debian's docker-compose package; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compose = &yaml("deploy/docker-compose.yml");
    let services = compose["services"].as_object().unwrap();
    for name in ["redis", "inference", "gateway"] {
        assert!(services.contains_key(name), "service {name}");
    }
    let gateway = &services["gateway"];
    let known = acip_names();
    let env = gateway["environment"].as_object().unwrap();
    assert!(env.contains_key("REDIS_URL") && env.contains_key("FASTAPI_URL"));
    for name in env.keys() {
        assert!(
            known.contains(&name.as_str()),
            "the gateway does not read {name}"
        );
    }
    // The plugin folder is mounted where the image's PLUGINS_DIR points.
    let dockerfile = std::fs::read_to_string(repo("deploy/Dockerfile")).unwrap();
    let plugins_dir = dockerfile
        .split("PLUGINS_DIR=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the image sets PLUGINS_DIR");
    assert!(
        gateway["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str().unwrap().contains(&format!(":{plugins_dir}"))),
        "plugins mounted at {plugins_dir}"
    );
    // Every variable the image sets is one the gateway reads.
    let env_block = dockerfile.split("\nENV ").nth(1).expect("an ENV block");
    let mut set = Vec::new();
    for line in env_block.lines() {
        set.extend(
            line.split_whitespace()
                .filter_map(|w| w.split_once('=').map(|(k, _)| k.to_string())),
        );
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    assert!(set.len() >= 4, "{set:?}");
    for name in &set {
        assert!(
            known.contains(&name.as_str()),
            "the image sets {name}, which is not read"
        );
    }
    assert!(
        dockerfile.contains(r#"HEALTHCHECK"#)
            && dockerfile.contains(r#"["/usr/local/bin/wasmgate", "healthcheck""#),
        "the image's health check runs `wasmgate healthcheck`"
    );
    assert!(dockerfile.contains("\nUSER 65532"), "runs as non-root");
}

#[test]
fn kubernetes_manifests_probe_the_gateway_and_outlast_its_shutdown_grace() {
    let k = "deploy/k8s/";
    let deploy = &yaml(&format!("{k}deployment.yaml"));
    let pod = &deploy["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(deploy["spec"]["selector"]["matchLabels"], *labels);
    let c = &pod["spec"]["containers"][0];

    // The config the ConfigMap carries is valid with the Secret's names set...
    let config_file = repo(&format!("{k}wasmgate.toml"));
    let secrets = [
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("GATEWAY_ADMIN_TOKEN", "t"),
        ("WASMGATE_API_KEY", "k"),
    ];
    check(&config_file, &secrets);
    let env = wasmgate_config::MapEnv::from_pairs(secrets);
    let config = wasmgate_config::load_file(&config_file, &env).unwrap();
    // ...and refused without REDIS_URL (replicas must share state), naming the variable.
    let out = wasmgate_check(
        &config_file,
        &[("GATEWAY_ADMIN_TOKEN", "t"), ("WASMGATE_API_KEY", "k")],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("REDIS_URL"));

    // Probes hit the gateway's own endpoints on the port the config listens on.
    let port = &c["ports"][0];
    assert_eq!(port["containerPort"], config.server.port);
    let probe = |name: &str| {
        (
            c[name]["httpGet"]["path"].clone(),
            c[name]["httpGet"]["port"].clone(),
        )
    };
    assert_eq!(
        probe("livenessProbe"),
        ("/gateway/health/live".into(), port["name"].clone())
    );
    assert_eq!(
        probe("readinessProbe"),
        ("/gateway/health/ready".into(), port["name"].clone())
    );
    assert_eq!(probe("startupProbe").0, "/gateway/health/live");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/path"],
        config.metrics.path
    );

    // Graceful termination: the pause before SIGTERM plus the drain fit in the grace period.
    let grace_s = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let pause_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    assert!(
        (pause_s * 1000 + config.server.shutdown_grace_ms) < grace_s * 1000,
        "preStop {pause_s}s + drain {}ms must fit in {grace_s}s",
        config.server.shutdown_grace_ms
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);

    // The container runs with the mounted config; the plugin folder and the compile cache
    // are where that config says.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mounts: BTreeMap<&str, &str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
            )
        })
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    assert_eq!(mounts.get(config_path), Some(&"config"));
    assert_eq!(mounts.get(config.plugins.dir.as_str()), Some(&"plugins"));
    assert_eq!(
        mounts.get(config.plugins.cache_dir.as_deref().unwrap()),
        Some(&"cache")
    );
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "wasmgate-secrets");

    // The Service, autoscaler and disruption budget select these pods.
    let service = &yaml(&format!("{k}service.yaml"));
    assert_eq!(service["spec"]["selector"], *labels);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
    let hpa = &yaml(&format!("{k}hpa.yaml"));
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deploy["metadata"]["name"]
    );
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let pdb = &yaml(&format!("{k}pdb.yaml"));
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *labels);

    // The kustomization lists every manifest and generates the two ConfigMaps mounted.
    let kust = &yaml(&format!("{k}kustomization.yaml"));
    let resources: Vec<&str> = kust["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for f in ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"] {
        assert!(resources.contains(&f), "{f} in the kustomization");
    }
    let generated: Vec<&str> = kust["configMapGenerator"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for v in pod["spec"]["volumes"].as_array().unwrap() {
        if let Some(cm) = v["configMap"]["name"].as_str() {
            assert!(generated.contains(&cm), "ConfigMap {cm} is generated");
        }
    }
    // Where kubectl is installed, kustomize renders the whole set.
    if let Ok(out) = std::process::Command::new("kubectl")
        .args(["kustomize", "deploy/k8s"])
        .current_dir(repo(""))
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8_lossy(&out.stdout);
        for kind in [
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ConfigMap",
        ] {
            assert!(
                rendered.contains(&format!("kind: {kind}\n")),
                "{kind} rendered"
            );
        }
    }
}

fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn install_writes_the_unit_and_a_default_config_and_never_overwrites_the_operators() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempdir("install");
    let units = root.join("systemd");
    let config = root.join("etc/wasmgate/wasmgate.toml");
    let install_ok = || {
        let out = install(&root, &units, &config);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = install_ok();
    assert!(
        first.contains("systemctl enable --now wasmgate"),
        "prints the next step: {first}"
    );

    let unit = std::fs::read_to_string(units.join("wasmgate.service")).unwrap();
    let bin = env!("CARGO_BIN_EXE_wasmgate");
    assert!(
        unit.contains(&format!(
            "ExecStart={bin} run --config {}",
            config.display()
        )),
        "{unit}"
    );
    assert!(unit.contains(&format!(
        "ExecStartPre={bin} check --config {}",
        config.display()
    )));
    assert!(!unit.contains('@'), "every placeholder filled: {unit}");
    let env_path = root.join("etc/wasmgate/wasmgate.env");
    assert!(unit.contains(&format!("EnvironmentFile=-{}", env_path.display())));
    assert!(root.join("etc/wasmgate/plugins").is_dir());
    // Where systemd's analyzer is installed, it finds nothing to complain about.
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("wasmgate.service"))
        .output()
    {
        let complaints = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && complaints.trim().is_empty(),
            "{complaints}"
        );
    }

    // Fresh random secrets, readable by root only.
    let mode = std::fs::metadata(&env_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secrets = env_file(&env_path);
    let admin = secrets["GATEWAY_ADMIN_TOKEN"].clone();
    assert_eq!(admin.len(), 64);
    assert!(admin.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(admin, secrets["WASMGATE_API_KEY"]);

    // The default config is valid with those secrets, as the unit's ExecStartPre runs it.
    let env: Vec<(&str, &str)> = secrets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    check(&config, &env);

    // Running it again keeps the operator's edits and secrets; the unit is unchanged.
    std::fs::write(&config, "# edited by the operator\n").unwrap();
    let second = install_ok();
    assert!(
        second.contains(&format!("kept (exists) {}", config.display())),
        "{second}"
    );
    assert!(second.contains("unchanged"), "{second}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# edited by the operator\n"
    );
    assert_eq!(env_file(&env_path)["GATEWAY_ADMIN_TOKEN"], admin);

    // Another install elsewhere gets other secrets.
    let other = tempdir("install-other");
    let out = install(&other, &other.join("systemd"), &other.join("wasmgate.toml"));
    assert!(out.status.success());
    assert_ne!(
        env_file(&other.join("wasmgate.env"))["GATEWAY_ADMIN_TOKEN"],
        admin
    );

    // A folder it may not write is refused with the reason.
    let ro = tempdir("install-ro");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    let out = install(&ro, &ro.join("systemd"), &ro.join("wasmgate.toml"));
    // Root ignores directory permissions (the folder's owner is who runs the test); everyone
    // else gets the reason.
    let is_root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&root).unwrap()) == 0;
    if !is_root {
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("sudo wasmgate install"));
    }
    for d in [root, other, ro] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_passes_on_a_live_gateway_and_fails_on_an_unhealthy_or_absent_one() {
    let dir = tempdir("healthcheck");
    let file = dir.join("gw.toml");
    // The only target refuses connections and is health-checked: the gateway is alive but
    // unhealthy (no upstream has a healthy target).
    let refusing = wasmgate_testkit::RefusingTarget::bind();
    let dead = refusing.port();
    std::fs::write(
        &file,
        format!(
            "[server]\nhost = \"127.0.0.1\"\nport = 0\n[plugins]\nenabled = false\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"u\"\n\
             [upstreams.u]\ntargets = [\"http://127.0.0.1:{dead}\"]\n\
             health_check = {{ path = \"/health\", interval_ms = 100, unhealthy_threshold = 1 }}\n"
        ),
    )
    .unwrap();
    let gw = spawn_with_file(&dir, &file);
    let probe = |url: String| {
        let out = wasmgate_command(&dir)
            .args(["healthcheck", "--url", &url, "--timeout-ms", "2000"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = probe(gw.url("/gateway/health/live"));
    assert_eq!(code, Some(0), "{out}");
    common::eventually("the gateway reports unhealthy", async || {
        probe(gw.url("/gateway/health")).0 == Some(1)
    })
    .await;
    let (_, out) = probe(gw.url("/gateway/health"));
    assert!(out.contains("503"), "{out}");
    drop(gw);
    let (code, out) = probe(format!("http://127.0.0.1:{dead}/gateway/health/live"));
    assert_eq!(code, Some(1), "nothing listening: {out}");

    // With no --url, the port comes from the configuration.
    let live = spawn_with_file(&dir, &file);
    let fixed = dir.join("fixed.toml");
    std::fs::write(
        &fixed,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("port = 0", &format!("port = {}", live.addr.port())),
    )
    .unwrap();
    let out = wasmgate_command(&dir)
        .args(["healthcheck", "--config"])
        .arg(&fixed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("/gateway/health/live"));
    std::fs::remove_dir_all(dir).ok();
}
