//! Where the configuration comes from: a file, or the ACIP environment names.
use std::path::PathBuf;

use wasmgate_config::{Config, DotEnvLayered, Env, ProcessEnv};

/// Loads (and reloads) the configuration from the same source.
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    file: Option<PathBuf>,
}

impl ConfigLoader {
    pub fn new(file: Option<PathBuf>) -> Self {
        ConfigLoader { file }
    }

    pub fn file(&self) -> Option<&PathBuf> {
        self.file.as_ref()
    }

    /// The environment: the process's, over `./.env` when present.
    fn env(&self) -> anyhow::Result<DotEnvLayered<ProcessEnv>> {
        DotEnvLayered::new(ProcessEnv, std::path::Path::new(".env")).map_err(anyhow::Error::msg)
    }

    pub fn load(&self) -> anyhow::Result<Config> {
        let env = self.env()?;
        Ok(match &self.file {
            Some(path) => wasmgate_config::load_file(path, &env)?,
            None => wasmgate_config::from_acip_env(&env)?,
        })
    }

    pub fn unknown_env_names(&self) -> Vec<String> {
        match (&self.file, self.env()) {
            (None, Ok(env)) => wasmgate_config::unknown_acip_names(&env as &dyn Env),
            _ => Vec::new(),
        }
    }

    pub fn describe(&self) -> String {
        match &self.file {
            Some(p) => p.display().to_string(),
            None => "environment (ACIP .env names)".into(),
        }
    }
}
