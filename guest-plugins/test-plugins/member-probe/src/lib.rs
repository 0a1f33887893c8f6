//! Test plugin run both as a built-in bundle member (`bundle-probe`) and as a plugin of its
//! own (`member-probe-plugin`), so that host tests can check a member behaves exactly as the
//! same plugin alone. Config: `{"tag": "a", "set_tenant": false, "kv": false, "view": false}`.
//!
//! On each request it:
//! - panics when the request's `x-panic` header is its tag;
//! - counts the requests this instance served (`x-member-<tag>-uses`);
//! - appends its tag to the `probe-trail` property;
//! - with `set_tenant`, sets the `tenant` property from `x-tenant`;
//! - reports the tenant it sees (`x-member-<tag>-tenant`);
//! - with `kv`, increments the kv counter `hits` (`x-member-<tag>-kv`: the value, or the error);
//! - adds 1 to its counter `runs`;
//! - with `view`, runs a fixed script of `request` calls (edge cases of header names and values,
//!   repeated headers, properties, queued response headers, the route's targets borrowed and
//!   owned) and writes what each returned to the `view-trace` property;
//! - answers `418` when `x-answer` is its tag, and names `x-route-to` as the target when
//!   `x-route` is its tag.
use wasmgate_plugin_sdk::prelude::*;

/// The probe.
#[derive(serde::Deserialize)]
pub struct Probe {
    tag: String,
    #[serde(default)]
    set_tenant: bool,
    #[serde(default)]
    kv: bool,
    #[serde(default)]
    view: bool,
    #[serde(skip)]
    uses: u64,
}

fn show(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// The `view` script: every call's answer, in order.
fn view_script() -> String {
    let mut out = Vec::new();
    let mut note = |k: &str, v: String| out.push(format!("{k}={v}"));
    note("method", request::method());
    note("path", request::path());
    note("query", show(request::query()));
    note("client", request::client_addr());
    note("route", request::route());
    note("id", request::request_id());
    note("tenant", show(request::tenant()));
    note("key", show(request::get_header("X-Api-Key")));
    request::set_header("X-Mixed-Case", "v1");
    note("mixed", show(request::get_header("x-mixed-case")));
    request::set_header("bad name", "v");
    note("bad-name", show(request::get_header("bad name")));
    request::set_header("x-ctl", "a\u{1}b");
    note("ctl", show(request::get_header("x-ctl")));
    request::set_header("x-obs", "caf\u{e9}");
    note("obs", show(request::get_header("x-obs")));
    note("hidden", show(request::get_header("x-hidden")));
    note("multi", show(request::get_header("x-multi")));
    request::remove_header("x-remove-me");
    note("removed", show(request::get_header("x-remove-me")));
    request::remove_header("bad name");
    request::set_header("x-multi", "one");
    request::set_header("x-late", "new");
    request::remove_header("host");
    request::set_header("host", "again");
    let all: Vec<String> = request::get_headers()
        .into_iter()
        .map(|h| format!("{}:{}", h.name, h.value))
        .collect();
    note("all", all.join(","));
    request::set_property("p", "1");
    request::set_property("p", "2");
    note("p", show(request::get_property("p")));
    note("missing", show(request::get_property("missing")));
    request::add_response_header("x-q1", "1");
    request::add_response_headers(
        &[
            Header {
                name: "x-q2".into(),
                value: "2".into(),
            },
            Header {
                name: "bad name".into(),
                value: "3".into(),
            },
        ],
        QueueMode::KeepExisting,
    );
    request::add_response_headers(
        &[Header {
            name: "vary".into(),
            value: "Origin".into(),
        }],
        QueueMode::Append,
    );
    note(
        "status",
        request::response_status().map_or("-".into(), |s| s.to_string()),
    );
    note("response", show(request::get_response_header("x-q1")));
    let show_target = |t: upstream::TargetRef<'_>| {
        let workers: Vec<&str> = t.workers().collect();
        format!(
            "{} {} {} {} {}",
            t.address,
            if t.healthy { "up" } else { "down" },
            t.in_flight,
            t.region.unwrap_or("-"),
            workers.join("+")
        )
    };
    let borrowed = upstream::with_targets(|all| {
        // Another SDK call from inside: the targets are not the request state's borrow.
        let _ = request::method();
        all.iter().map(|t| show_target(*t)).collect::<Vec<_>>()
    });
    note("targets", borrowed.join(","));
    let owned: Vec<String> = upstream::targets()
        .iter()
        .map(|t| show_target(t.into()))
        .collect();
    note("targets-owned", owned.join(","));
    out.join("|")
}

impl Plugin for Probe {
    fn new(config: Config) -> Result<Self, String> {
        config.parse()
    }

    fn info(&self) -> Info {
        let info = Info::new(&format!("tp-member-{}", self.tag), "0.1.0")
            .phase(Phase::RequestHeaders)
            .capability("metrics");
        if self.kv {
            info.capability("kv")
        } else {
            info
        }
    }

    fn on_request_headers(&mut self) -> Action {
        let tag = self.tag.clone();
        if request::get_header("x-panic").as_deref() == Some(&tag) {
            panic!("member {tag} was asked to panic");
        }
        self.uses += 1;
        request::set_header(&format!("x-member-{tag}-uses"), &self.uses.to_string());
        let trail = request::get_property("probe-trail").unwrap_or_default();
        request::set_property("probe-trail", &format!("{trail}{tag};"));
        if self.set_tenant {
            if let Some(t) = request::get_header("x-tenant") {
                request::set_property("tenant", &t);
            }
        }
        request::set_header(&format!("x-member-{tag}-tenant"), &show(request::tenant()));
        if self.kv {
            let v = match kv::incr("hits", 1, None) {
                Ok(n) => n.to_string(),
                Err(kv::KvError::Denied(_)) => "denied".into(),
                Err(e) => format!("{e:?}"),
            };
            request::set_header(&format!("x-member-{tag}-kv"), &v);
        }
        metrics::counter_add("runs", 1);
        if self.view {
            request::set_property("view-trace", &view_script());
        }
        if request::get_header("x-answer").as_deref() == Some(&tag) {
            let mut a = Action::error(418, "probe_answered", &format!("{tag} answered"));
            if let Action::Respond(r) = &mut a {
                r.headers.push(Header {
                    name: "x-answered-by".into(),
                    value: tag.clone(),
                });
            }
            return a;
        }
        if request::get_header("x-route").as_deref() == Some(&tag) {
            if let Some(to) = request::get_header("x-route-to") {
                return Action::ContinueTo(to);
            }
        }
        Action::Continue
    }
}
