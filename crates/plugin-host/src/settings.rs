//! Per-plugin settings and the `<name>.toml` manifest that sets them for folder plugins.
use serde::{Deserialize, Serialize};

/// What the request gets when a plugin fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailPolicy {
    /// `500 plugin_error`.
    #[default]
    FailClosed,
    /// Continue as if the plugin were not there.
    FailOpen,
}

/// Everything the host needs to run one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginSettings {
    /// On failure.
    pub fail_policy: FailPolicy,
    /// CPU time per phase call, in ms (epoch deadline).
    pub cpu_budget_ms: u64,
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Live instances per (plugin, tenant).
    pub max_instances: usize,
    /// Requests an instance serves before it is retired.
    pub max_uses: u64,
    /// Traps within 60 s that disable the plugin (0 = never).
    pub disable_after_traps: u32,
    /// Capabilities the operator allows.
    pub grants: Vec<String>,
    /// The key namespace (`gateway:<namespace>:`); `None` = the plugin's name.
    pub namespace: Option<String>,
    /// Absolute keys outside the namespace the plugin may read (`shared-*` imports):
    /// exact keys, or prefixes ending in `*` (`queue:*`). Never writable.
    pub kv_read: Vec<String>,
    /// The configuration passed to `init`, as JSON.
    #[serde(skip)]
    pub config_json: String,
    /// Position in the chain (lower runs first; ties by name).
    pub order: i64,
    /// Routes it applies to (empty = every route).
    pub routes: Vec<String>,
    /// Tenants it applies to (empty = every request).
    pub tenants: Vec<String>,
    /// Start enabled.
    pub enabled: bool,
    /// Per-route configuration overrides: route name -> the full `init` config (JSON) for that
    /// route (`[config]` with `[routes_config.<route>]` merged over it).
    pub route_configs: std::collections::BTreeMap<String, String>,
    /// Routes this plugin does not run on (a variant with its own config runs there instead).
    pub exclude_routes: Vec<String>,
    /// For a per-route variant: the route whose config it carries.
    pub variant_route: Option<String>,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            fail_policy: FailPolicy::FailClosed,
            cpu_budget_ms: 50,
            memory_bytes: 64 << 20,
            max_instances: 64,
            max_uses: 10_000,
            disable_after_traps: 5,
            grants: Vec::new(),
            namespace: None,
            kv_read: Vec::new(),
            config_json: "{}".into(),
            order: 0,
            routes: Vec::new(),
            tenants: Vec::new(),
            enabled: true,
            route_configs: Default::default(),
            exclude_routes: Vec::new(),
            variant_route: None,
        }
    }
}

/// The memory past which an instance under a `memory_bytes` cap is retired: three quarters.
pub(crate) fn high_water(memory_bytes: usize) -> usize {
    memory_bytes / 4 * 3
}

impl PluginSettings {
    /// Instances whose memory grew past this are retired after their request (75% of the cap).
    pub fn memory_high_water(&self) -> usize {
        high_water(self.memory_bytes)
    }

    /// The settings of the variant that runs on `route` with its own config.
    pub fn variant_for(&self, route: &str, config_json: &str) -> PluginSettings {
        PluginSettings {
            config_json: config_json.to_string(),
            routes: vec![route.to_string()],
            route_configs: Default::default(),
            exclude_routes: Vec::new(),
            variant_route: Some(route.to_string()),
            ..self.clone()
        }
    }

    /// Whether the plugin runs on this route at all.
    pub fn runs_on(&self, route: &str) -> bool {
        (self.routes.is_empty() && !self.exclude_routes.iter().any(|r| r == route))
            || self.routes.iter().any(|r| r == route)
    }

    /// Whether the plugin runs for a request of this tenant.
    pub fn serves_tenant(&self, tenant: Option<&str>) -> bool {
        self.tenants.is_empty() || tenant.is_some_and(|t| self.tenants.iter().any(|x| x == t))
    }
}

/// `[budget]` of a manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Budget {
    cpu_ms: Option<u64>,
    memory_mb: Option<usize>,
    max_instances: Option<usize>,
    max_uses: Option<u64>,
    disable_after_traps: Option<u32>,
}

/// The manifest beside a plugin file: `<name>.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    order: Option<i64>,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    grant: Vec<String>,
    namespace: Option<String>,
    #[serde(default)]
    kv_read: Vec<String>,
    fail_policy: Option<FailPolicy>,
    enabled: Option<bool>,
    #[serde(default)]
    budget: Budget,
    config: Option<toml::Table>,
    #[serde(default)]
    routes_config: std::collections::BTreeMap<String, toml::Table>,
}

/// Parses a manifest (text) into settings. Errors name the key.
pub fn parse_manifest(text: &str) -> Result<PluginSettings, String> {
    let m: Manifest = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    for g in &m.grant {
        if !["kv", "workers", "metrics"].contains(&g.as_str()) {
            return Err(format!(
                "grant: unknown capability `{g}` (kv, workers, metrics)"
            ));
        }
    }
    if let Some(ns) = &m.namespace {
        valid_namespace(ns).map_err(|e| format!("namespace: {e}"))?;
    }
    for p in &m.kv_read {
        valid_read_pattern(p).map_err(|e| format!("kv_read: {e}"))?;
    }
    if !m.kv_read.is_empty() && !m.grant.iter().any(|g| g == "kv") {
        return Err("kv_read: needs the `kv` grant too (grant = [\"kv\"])".into());
    }
    let d = PluginSettings::default();
    let base = m.config.clone().unwrap_or_default();
    let mut route_configs = std::collections::BTreeMap::new();
    for (route, overrides) in &m.routes_config {
        let mut merged = base.clone();
        merged.extend(overrides.clone());
        let json =
            serde_json::to_string(&merged).map_err(|e| format!("routes_config.{route}: {e}"))?;
        route_configs.insert(route.clone(), json);
    }
    let exclude_routes = route_configs.keys().cloned().collect();
    let s = PluginSettings {
        fail_policy: m.fail_policy.unwrap_or(d.fail_policy),
        cpu_budget_ms: m.budget.cpu_ms.unwrap_or(d.cpu_budget_ms),
        memory_bytes: m
            .budget
            .memory_mb
            .map(|mb| mb << 20)
            .unwrap_or(d.memory_bytes),
        max_instances: m.budget.max_instances.unwrap_or(d.max_instances),
        max_uses: m.budget.max_uses.unwrap_or(d.max_uses),
        disable_after_traps: m
            .budget
            .disable_after_traps
            .unwrap_or(d.disable_after_traps),
        grants: m.grant,
        namespace: m.namespace,
        kv_read: m.kv_read,
        config_json: match m.config {
            Some(t) => serde_json::to_string(&t).map_err(|e| format!("config: {e}"))?,
            None => "{}".into(),
        },
        order: m.order.unwrap_or(d.order),
        routes: m.routes,
        tenants: m.tenants,
        enabled: m.enabled.unwrap_or(true),
        route_configs,
        exclude_routes,
        variant_route: None,
    };
    if s.cpu_budget_ms == 0 || s.memory_bytes == 0 || s.max_instances == 0 {
        return Err("budget: cpu_ms, memory_mb and max_instances must be greater than 0".into());
    }
    Ok(s)
}

/// A namespace: 1-64 of `[a-z0-9_-]`, so it can neither contain `:` nor climb out of
/// `gateway:`.
pub fn valid_namespace(ns: &str) -> Result<(), String> {
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{ns}` must be 1-64 characters of a-z, 0-9, `-` and `_`"
        ))
    }
}

/// A read pattern: an exact key or a prefix ending in `*`, with no other glob characters,
/// and not `*` alone (that would be every key).
fn valid_read_pattern(p: &str) -> Result<(), String> {
    let body = p.strip_suffix('*').unwrap_or(p);
    if body.is_empty() {
        return Err(format!(
            "`{p}` would allow every key: name a prefix, like `queue:*`"
        ));
    }
    if body.contains(['*', '?', '[', ']']) || body.chars().any(char::is_control) {
        return Err(format!(
            "`{p}`: only a trailing `*` is allowed (an exact key or a prefix)"
        ));
    }
    Ok(())
}

/// Whether `key` matches one of the `kv_read` patterns.
pub fn read_allowed(patterns: &[String], key: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => key == p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_sets_everything_and_refuses_unknown_keys() {
        let s = parse_manifest(
            r#"
            order = 5
            routes = ["llm"]
            grant = ["kv"]
            fail_policy = "fail-open"
            [budget]
            cpu_ms = 10
            memory_mb = 8
            [config]
            name = "x-a"
            "#,
        )
        .unwrap();
        assert_eq!(s.order, 5);
        assert_eq!(s.fail_policy, FailPolicy::FailOpen);
        assert_eq!(s.memory_bytes, 8 << 20);
        assert_eq!(s.config_json, r#"{"name":"x-a"}"#);
        assert!(s.runs_on("llm") && !s.runs_on("jobs"));
        assert!(s.serves_tenant(None), "no tenant list: every request");
        assert!(parse_manifest("ordr = 1").unwrap_err().contains("ordr"));
        let s = parse_manifest("[config]\na = 1\nb = 2\n[routes_config.llm]\nb = 3\n").unwrap();
        assert_eq!(s.route_configs["llm"], r#"{"a":1,"b":3}"#);
        assert!(
            !s.runs_on("llm") && s.runs_on("jobs"),
            "the base skips the overridden route"
        );
        let v = s.variant_for("llm", &s.route_configs["llm"]);
        assert!(v.runs_on("llm") && !v.runs_on("jobs"));
        assert!(parse_manifest("grant = [\"fs\"]")
            .unwrap_err()
            .contains("fs"));
    }

    #[test]
    fn namespaces_and_read_grants_are_checked() {
        let s = parse_manifest(
            "grant = [\"kv\"]\nnamespace = \"ratelimit\"\nkv_read = [\"worker:*\", \"queue:stats\"]",
        )
        .unwrap();
        assert_eq!(s.namespace.as_deref(), Some("ratelimit"));
        assert!(read_allowed(&s.kv_read, "worker:w1:status"));
        assert!(read_allowed(&s.kv_read, "queue:stats"));
        assert!(!read_allowed(&s.kv_read, "queue:stats2"));
        assert!(!read_allowed(&s.kv_read, "gateway:auth:keys"));
        for bad in [
            "namespace = \"a:b\"",
            "namespace = \"../x\"",
            "namespace = \"\"",
        ] {
            let e = parse_manifest(&format!("grant = [\"kv\"]\n{bad}")).unwrap_err();
            assert!(e.contains("namespace"), "{bad}: {e}");
        }
        for bad in ["*", "wor*ker:*", "queue:?"] {
            let e =
                parse_manifest(&format!("grant = [\"kv\"]\nkv_read = [\"{bad}\"]")).unwrap_err();
            assert!(e.contains("kv_read"), "{bad}: {e}");
        }
        let e = parse_manifest("kv_read = [\"queue:*\"]").unwrap_err();
        assert!(e.contains("needs the `kv` grant"), "{e}");
    }
}
