//! Longest-prefix route matching on path-segment boundaries.
use wasmgate_config::RouteConfig;

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name for logs and metrics (shared with every request's plugin state).
    pub name: std::sync::Arc<str>,
    /// Normalized prefix (no trailing slash except the root).
    pub prefix: String,
    /// The upstream it points at.
    pub upstream: String,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
}

impl Route {
    /// The path to send upstream (query not included).
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.strip_prefix || self.prefix == "/" {
            return path.into();
        }
        let rest = &path[self.prefix.len()..];
        if rest.is_empty() {
            "/".into()
        } else {
            rest.into()
        }
    }
}

/// Routes sorted longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Compiles the configured routes.
    pub fn new(configs: &[RouteConfig]) -> RouteTable {
        let mut routes: Vec<Route> = configs
            .iter()
            .map(|r| {
                let prefix = if r.prefix.len() > 1 {
                    r.prefix.trim_end_matches('/').to_string()
                } else {
                    r.prefix.clone()
                };
                Route {
                    name: r.display_name().into(),
                    prefix,
                    upstream: r.upstream.clone(),
                    strip_prefix: r.strip_prefix,
                }
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes }
    }

    /// The longest route whose prefix matches `path` on a segment boundary:
    /// `/api` matches `/api` and `/api/x`, never `/apix`.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.find_index(path).map(|i| &self.routes[i])
    }

    /// The index in [`RouteTable::routes`] of the route [`RouteTable::find`] returns.
    pub fn find_index(&self, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| {
            r.prefix == "/"
                || (path.starts_with(r.prefix.as_str())
                    && matches!(path.as_bytes().get(r.prefix.len()), None | Some(b'/')))
        })
    }

    /// All routes, longest first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(prefixes: &[(&str, bool)]) -> RouteTable {
        RouteTable::new(
            &prefixes
                .iter()
                .map(|(p, strip)| RouteConfig {
                    name: None,
                    prefix: p.to_string(),
                    upstream: format!("up{p}"),
                    strip_prefix: *strip,
                })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table(&[("/api", false), ("/api/v1", false), ("/", false)]);
        assert_eq!(t.find("/api").unwrap().prefix, "/api");
        assert_eq!(t.find("/api/x").unwrap().prefix, "/api");
        assert_eq!(t.find("/api/v1/jobs").unwrap().prefix, "/api/v1");
        assert_eq!(t.find("/apix").unwrap().prefix, "/");
        let t = table(&[("/api/", false)]);
        assert_eq!(t.find("/api").unwrap().prefix, "/api");
        assert!(t.find("/apix").is_none());
        assert!(t.find("/").is_none());
    }

    #[test]
    fn strip_prefix() {
        let t = table(&[("/openai", true), ("/", true)]);
        let r = t.find("/openai/v1/chat").unwrap();
        assert_eq!(r.upstream_path("/openai/v1/chat"), "/v1/chat");
        assert_eq!(r.upstream_path("/openai"), "/");
        let root = t.find("/x").unwrap();
        assert_eq!(root.upstream_path("/x"), "/x");
    }
}
