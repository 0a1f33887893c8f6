//! wasmgate configuration.
//!
//! Two sources produce the same [`Config`]:
//! - a TOML file ([`load_file`]) with `${ENV}` / `${ENV:-default}` interpolation in string values;
//!   unknown keys are refused with an error naming the key and the file;
//! - no file at all ([`from_acip_env`]): the `.env` names of the ACIP GPU gateway
//!   (`FASTAPI_URL`, `REDIS_URL`, `AUTH_*`, ...) plus wasmgate's own (`GATEWAY_WORKERS`, ...).
//!
//! Environment access goes through the [`Env`] trait so tests never touch the process
//! environment. Secrets are held in [`Secret`], which never prints or serializes its value.
#![deny(missing_docs)]

mod acip;
mod env;
mod error;
mod interpolate;
mod load;
mod model;
mod secret;
mod validate;

pub use acip::{from_acip_env, unknown_acip_names, ACIP_ENV_NAMES, ACIP_UPSTREAM};
pub use env::{DotEnvLayered, Env, MapEnv, ProcessEnv};
pub use error::{ConfigError, Result};
pub use interpolate::interpolate;
pub use load::{load_file, parse_str};
pub use model::*;
pub use secret::Secret;
pub use validate::{parse_trusted_proxy, validate};

/// Where a configuration came from, used in error messages and `/gateway/config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A TOML file at this path.
    File(std::path::PathBuf),
    /// The ACIP `.env` names (process environment, overlaid on a `.env` file when present).
    Environment,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Environment => f.write_str("environment"),
        }
    }
}
