use std::collections::HashMap;
use std::path::Path;

/// Read access to environment variables. Tests use [`MapEnv`]; the binary uses
/// [`DotEnvLayered`] over [`ProcessEnv`].
pub trait Env: Send + Sync {
    /// The variable's value, if set.
    fn get(&self, name: &str) -> Option<String>;
    /// Every variable name (used to warn about misspelt ACIP names).
    fn names(&self) -> Vec<String>;
    /// Where a variable came from, for error messages.
    fn origin(&self, _name: &str) -> &'static str {
        "environment"
    }
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
}

/// A fixed map of variables.
#[derive(Debug, Default, Clone)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    /// Builds from pairs.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        MapEnv(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl Env for MapEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// An environment overlaid on a `.env` file: a variable set in `inner` wins, as with dotenv.
pub struct DotEnvLayered<E> {
    inner: E,
    file: HashMap<String, String>,
}

impl<E: Env> DotEnvLayered<E> {
    /// Reads `path` if it exists. A malformed `.env` is an error naming the file.
    pub fn new(inner: E, path: &Path) -> Result<Self, String> {
        let mut file = HashMap::new();
        if path.exists() {
            let iter = dotenvy::from_path_iter(path)
                .map_err(|e| format!("{}: cannot read .env file: {e}", path.display()))?;
            for item in iter {
                let (k, v) = item.map_err(|e| format!("{}: {e}", path.display()))?;
                file.insert(k, v);
            }
        }
        Ok(DotEnvLayered { inner, file })
    }
}

impl<E: Env> Env for DotEnvLayered<E> {
    fn get(&self, name: &str) -> Option<String> {
        self.inner
            .get(name)
            .or_else(|| self.file.get(name).cloned())
    }
    fn names(&self) -> Vec<String> {
        let mut n = self.inner.names();
        n.extend(self.file.keys().cloned());
        n.sort();
        n.dedup();
        n
    }
    fn origin(&self, name: &str) -> &'static str {
        if self.inner.get(name).is_none() && self.file.contains_key(name) {
            ".env"
        } else {
            "environment"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_env_wins_over_dotenv_file() {
        let dir = std::env::temp_dir().join(format!("wg-dotenv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(
            &path,
            "GATEWAY_PORT=4000\nFASTAPI_URL=http://a:1\n# comment\n",
        )
        .unwrap();
        let env =
            DotEnvLayered::new(MapEnv::from_pairs([("GATEWAY_PORT", "5000")]), &path).unwrap();
        assert_eq!(env.get("GATEWAY_PORT").as_deref(), Some("5000"));
        assert_eq!(env.get("FASTAPI_URL").as_deref(), Some("http://a:1"));
        assert_eq!(env.origin("FASTAPI_URL"), ".env");
        assert_eq!(env.origin("GATEWAY_PORT"), "environment");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
