//! Test plugin for chains, properties, tenants and instance reuse. Config:
//! `{"tag": "a", "set_tenant": "acme"}`.
//! - request: counts requests this instance served (`x-probe-<tag>-uses`), copies the previous
//!   probe's `probe-trail` property and appends its tag, optionally sets the `tenant` property,
//!   and reports the tenant it sees (`x-probe-<tag>-tenant`);
//! - response: `x-probe-<tag>-status` = the upstream status, and the trail;
//! - log: increments the kv counter `logged` and the metric `logged`.
use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct Probe {
    tag: String,
    set_tenant: Option<String>,
    #[serde(skip)]
    uses: u64,
}

impl Plugin for Probe {
    fn new(config: Config) -> Result<Self, String> {
        config.parse()
    }
    fn info(&self) -> Info {
        Info::new(&format!("tp-probe-{}", self.tag), "0.1.0")
            .phase(Phase::RequestHeaders)
            .phase(Phase::ResponseHeaders)
            .phase(Phase::Log)
            .capability("kv")
            .capability("metrics")
    }
    fn on_request_headers(&mut self) -> Action {
        self.uses += 1;
        let tag = &self.tag;
        request::set_header(&format!("x-probe-{tag}-uses"), &self.uses.to_string());
        let trail = request::get_property("probe-trail").unwrap_or_default();
        request::set_property("probe-trail", &format!("{trail}{tag};"));
        if let Some(t) = &self.set_tenant {
            request::set_property("tenant", t);
        }
        let tenant = request::tenant().unwrap_or_else(|| "-".into());
        request::set_header(&format!("x-probe-{tag}-tenant"), &tenant);
        Action::Continue
    }
    fn on_response_headers(&mut self) -> Action {
        let status = request::response_status().unwrap_or(0);
        let tag = &self.tag;
        request::set_response_header(&format!("x-probe-{tag}-status"), &status.to_string());
        let trail = request::get_property("probe-trail").unwrap_or_default();
        request::set_response_header(&format!("x-probe-{tag}-trail"), &trail);
        Action::Continue
    }
    fn on_log(&mut self) {
        let _ = kv::incr("logged", 1, None);
        metrics::counter_add("logged", 1);
    }
}

export_plugin!(Probe);
