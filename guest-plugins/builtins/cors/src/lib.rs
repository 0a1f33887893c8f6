//! The `cors` built-in (docs/plugins/cors.md): preflights (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) are answered by the gateway; responses to allowed origins
//! get `Access-Control-Allow-Origin` (and credentials, exposed headers) and `Vary: Origin`.
use wasmgate_plugin_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
/// The plugin (a member of the built-in bundle, `guest-plugins/builtins/bundle`).
pub struct Cors {
    origins: Vec<String>,
    methods: Vec<String>,
    headers: Vec<String>,
    expose_headers: Vec<String>,
    credentials: bool,
    max_age_s: u64,
}

impl Cors {
    fn any(&self) -> bool {
        self.origins.iter().any(|o| o == "*")
    }

    fn allowed(&self, origin: &str) -> bool {
        self.any() || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// `*` for any origin without credentials; else the origin itself (with `Vary: Origin`).
    fn allow_origin_value(&self, origin: &str) -> String {
        if self.any() && !self.credentials {
            "*".into()
        } else {
            origin.to_string()
        }
    }
}

fn h(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: value.into(),
    }
}

impl Plugin for Cors {
    fn new(config: Config) -> Result<Self, String> {
        let c: Cors = config.parse()?;
        if c.credentials && c.any() {
            return Err(
                "credentials cannot be allowed for any origin (`*`): list the origins".into(),
            );
        }
        Ok(c)
    }

    fn info(&self) -> Info {
        Info::new("cors", env!("CARGO_PKG_VERSION")).phase(Phase::RequestHeaders)
    }

    fn on_request_headers(&mut self) -> Action {
        let Some(origin) = request::get_header("origin") else {
            return Action::Continue;
        };
        let preflight = request::method() == "OPTIONS"
            && request::get_header("access-control-request-method").is_some();
        if !preflight {
            // Queued for whatever the response is (the upstream's, or a plugin's 401/429), in
            // one host call. `Vary: Origin` is appended: the upstream's own `Vary` (say
            // `Accept-Encoding`) must survive, or a cache would mix up its variants.
            if self.allowed(&origin) {
                let mut set = vec![h(
                    "access-control-allow-origin",
                    &self.allow_origin_value(&origin),
                )];
                if self.credentials {
                    set.push(h("access-control-allow-credentials", "true"));
                }
                if !self.expose_headers.is_empty() {
                    set.push(h(
                        "access-control-expose-headers",
                        &self.expose_headers.join(", "),
                    ));
                }
                request::add_response_headers(&set, QueueMode::Replace);
                if !self.any() || self.credentials {
                    request::add_response_headers(&[h("vary", "Origin")], QueueMode::Append);
                }
            }
            return Action::Continue;
        }
        if !self.allowed(&origin) {
            return Action::error(403, "cors_forbidden", "this origin is not allowed");
        }
        let wanted = request::get_header("access-control-request-method").unwrap_or_default();
        if !self.methods.iter().any(|m| m.eq_ignore_ascii_case(&wanted)) {
            return Action::error(403, "cors_forbidden", "this method is not allowed");
        }
        let mut headers = vec![
            h(
                "access-control-allow-origin",
                &self.allow_origin_value(&origin),
            ),
            h("access-control-allow-methods", &self.methods.join(", ")),
            h("access-control-allow-headers", &self.headers.join(", ")),
            h("access-control-max-age", &self.max_age_s.to_string()),
            h(
                "vary",
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        ];
        if self.credentials {
            headers.push(h("access-control-allow-credentials", "true"));
        }
        Action::Respond(LocalResponse {
            status: 204,
            headers,
            body: Vec::new(),
        })
    }
}
