//! Reading a configuration: [`Config::load`] and [`Config::from_yaml`], and what is reported
//! when that fails: every [`Problem`], each naming the file, the key path and, where YAML gives
//! it, the line ([`ConfigError`]).

use std::fmt;
use std::path::{Path, PathBuf};

use super::{env, raw, Config};

/// A configuration that could not be loaded: every problem found, with where it is.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, such as `backends[1].url`; empty for the whole document.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

impl fmt::Display for ConfigError {
    /// One line a problem: `file:line: key.path: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}{p}", self.file.display())?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads, substitutes and validates the YAML file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let error = |problems| ConfigError {
            file: path.to_owned(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            error(vec![Problem {
                path: String::new(),
                line: None,
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Self::from_yaml(&text).map_err(error)
    }

    /// Parses and validates a YAML document, with `${NAME}` from the process environment.
    pub fn from_yaml(text: &str) -> Result<Config, Vec<Problem>> {
        raw::parse(text)?.validate()
    }

    /// [`Self::from_yaml`] with `${NAME}` (and the `AZURE_*` defaults of `auth`) read from
    /// `env` instead of the process environment, which is never changed.
    pub fn from_yaml_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String> + 'static,
    ) -> Result<Config, Vec<Problem>> {
        env::with_lookup(Box::new(env), || Self::from_yaml(text))
    }
}
