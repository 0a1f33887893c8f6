use crate::ConfigSource;

/// Why a configuration was refused. Every variant names where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config file: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{source_name}: invalid TOML: {message}")]
    Syntax {
        /// The file.
        source_name: ConfigSource,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key is unknown, has the wrong type, or fails validation.
    #[error("{source_name}: `{key}`: {message}")]
    Invalid {
        /// The file, or `environment`.
        source_name: ConfigSource,
        /// The dotted key path (`upstreams.backend.targets[0]`) or the environment variable name.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Result alias for configuration operations.
pub type Result<T> = std::result::Result<T, ConfigError>;

impl ConfigError {
    pub(crate) fn invalid(
        source_name: &ConfigSource,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            source_name: source_name.clone(),
            key: key.into(),
            message: message.into(),
        }
    }
}
