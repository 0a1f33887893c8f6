use std::path::Path;

use crate::{interpolate, validate, Config, ConfigError, ConfigSource, Env, Result};

/// Reads, interpolates, parses and validates a TOML config file.
pub fn load_file(path: &Path, env: &dyn Env) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, &ConfigSource::File(path.to_path_buf()), env)
}

/// Parses and validates TOML text; `source` names it in errors.
pub fn parse_str(text: &str, source: &ConfigSource, env: &dyn Env) -> Result<Config> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        source_name: source.clone(),
        message: e.to_string().trim_end().to_string(),
    })?;
    for (key, value) in table.iter_mut() {
        interpolate_value(value, key, source, env)?;
    }
    let config: Config =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::invalid(source, key, e.into_inner().to_string())
        })?;
    validate(&config, source)?;
    Ok(config)
}

fn interpolate_value(
    value: &mut toml::Value,
    path: &str,
    source: &ConfigSource,
    env: &dyn Env,
) -> Result<()> {
    match value {
        toml::Value::String(s) => {
            *s = interpolate(s, env).map_err(|m| ConfigError::invalid(source, path, m))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), source, env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                interpolate_value(v, &format!("{path}.{k}"), source, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MapEnv;

    fn src() -> ConfigSource {
        ConfigSource::File("gw.toml".into())
    }

    const GOOD: &str = r#"
        [server]
        port = 8080
        [[routes]]
        prefix = "/v1"
        upstream = "llm"
        [upstreams.llm]
        targets = ["http://127.0.0.1:8000"]
        inject_headers = { Authorization = "Bearer ${OPENAI_API_KEY}" }
    "#;

    #[test]
    fn interpolates_and_parses() {
        let env = MapEnv::from_pairs([("OPENAI_API_KEY", "sk-test")]);
        let c = parse_str(GOOD, &src(), &env).unwrap();
        assert_eq!(c.server.port, 8080);
        assert_eq!(
            c.upstreams["llm"].inject_headers["Authorization"].expose(),
            "Bearer sk-test"
        );
        assert_eq!(c.routes[0].upstream, "llm");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let text = GOOD.replace("targets =", "tagets = [] \ntargets =");
        let env = MapEnv::from_pairs([("OPENAI_API_KEY", "k")]);
        let err = parse_str(&text, &src(), &env).unwrap_err().to_string();
        assert!(err.starts_with("gw.toml:"), "{err}");
        assert!(err.contains("upstreams.llm"), "{err}");
        assert!(err.contains("tagets"), "{err}");
    }

    #[test]
    fn missing_env_names_variable_and_key() {
        let err = parse_str(GOOD, &src(), &MapEnv::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("OPENAI_API_KEY"), "{err}");
        assert!(
            err.contains("upstreams.llm.inject_headers.Authorization"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_and_syntax_errors_are_reported() {
        let env = MapEnv::default();
        let err = parse_str("[server]\nport = \"x\"", &src(), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.port"), "{err}");
        let err = parse_str("[server\n", &src(), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid TOML"), "{err}");
    }
}
