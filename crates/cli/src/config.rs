//! Where the base URL and API key come from: the flag or environment variable first, then
//! `$XDG_CONFIG_HOME/wrenn/config.json` (or `~/.config/wrenn/config.json`), then the default
//! base URL. The file holds a secret, so it is written 0600 in a 0700 directory.

use crate::error::{CliError, CliResult};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Used when neither flag, environment nor config file names a control plane.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8080";

/// The config file's content. Unknown keys are kept, so a newer CLI's settings survive an
/// older CLI's `login`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> CliResult<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| CliError::Config {
                path: path.display().to_string(),
                detail: format!("not valid JSON: {error}"),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(error) => Err(CliError::Config {
                path: path.display().to_string(),
                detail: error.to_string(),
            }),
        }
    }

    /// Writes atomically (temp file + rename) with mode 0600; the directory is created 0700.
    pub fn save(&self, path: &Path) -> CliResult<()> {
        let config_error = |detail: String| CliError::Config {
            path: path.display().to_string(),
            detail,
        };
        let dir = path
            .parent()
            .ok_or_else(|| config_error("has no parent directory".into()))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| config_error(format!("creating {}: {error}", dir.display())))?;
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|error| config_error(format!("encoding: {error}")))?;
        json.push(b'\n');
        let temp_path = dir.join(format!(".config.json.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp_path)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&temp_path, path)
        };
        write().map_err(|error| {
            // Best effort: the temp file is ours and useless now.
            let _ = std::fs::remove_file(&temp_path);
            config_error(error.to_string())
        })
    }

    /// True when nothing worth keeping is left (logout then deletes the file).
    pub fn is_empty(&self) -> bool {
        self.base_url.is_none() && self.api_key.is_none() && self.other.is_empty()
    }
}

/// `$XDG_CONFIG_HOME/wrenn/config.json`, else `$HOME/.config/wrenn/config.json`. Takes the
/// variables as arguments so tests need not touch the process environment. An empty or relative
/// `XDG_CONFIG_HOME` is ignored, as the XDG spec says.
pub fn config_path(
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> CliResult<PathBuf> {
    let base = match xdg_config_home.map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => match home.map(PathBuf::from) {
            Some(home) if !home.as_os_str().is_empty() => home.join(".config"),
            _ => {
                return Err(CliError::Usage(
                    "cannot locate the config file: neither XDG_CONFIG_HOME nor HOME is set".into(),
                ));
            }
        },
    };
    Ok(base.join("wrenn").join("config.json"))
}

/// The config path from the real environment.
pub fn default_config_path() -> CliResult<PathBuf> {
    config_path(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

/// The resolved connection settings every command uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub base_url: String,
    pub api_key: Option<String>,
}

impl Settings {
    /// Flag/env (clap merges the two) wins over the file, the file over the default. Empty
    /// values count as unset, so `WRENN_API_KEY=` does not shadow a stored key.
    pub fn resolve(
        base_url_arg: Option<&str>,
        api_key_arg: Option<&str>,
        file: &ConfigFile,
    ) -> Self {
        let non_empty =
            |value: Option<&str>| value.filter(|v| !v.trim().is_empty()).map(str::to_owned);
        Self {
            base_url: non_empty(base_url_arg)
                .or_else(|| non_empty(file.base_url.as_deref()))
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned()),
            api_key: non_empty(api_key_arg).or_else(|| non_empty(file.api_key.as_deref())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(base_url: Option<&str>, api_key: Option<&str>) -> ConfigFile {
        ConfigFile {
            base_url: base_url.map(Into::into),
            api_key: api_key.map(Into::into),
            other: Default::default(),
        }
    }

    #[test]
    fn flag_or_env_wins_over_file() {
        let stored = file(Some("http://stored:1"), Some("wrn_stored"));
        let settings = Settings::resolve(Some("http://flag:2"), Some("wrn_flag"), &stored);
        assert_eq!(settings.base_url, "http://flag:2");
        assert_eq!(settings.api_key.as_deref(), Some("wrn_flag"));
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let stored = file(Some("http://stored:1"), Some("wrn_stored"));
        let settings = Settings::resolve(None, Some(""), &stored);
        assert_eq!(settings.base_url, "http://stored:1");
        assert_eq!(settings.api_key.as_deref(), Some("wrn_stored"));
    }

    #[test]
    fn default_base_url_and_no_key() {
        let settings = Settings::resolve(None, None, &ConfigFile::default());
        assert_eq!(settings.base_url, DEFAULT_BASE_URL);
        assert_eq!(settings.api_key, None);
    }

    #[test]
    fn config_path_prefers_absolute_xdg() {
        let path = config_path(Some("/xdg".into()), Some("/home/u".into())).expect("path");
        assert_eq!(path, PathBuf::from("/xdg/wrenn/config.json"));
        let relative = config_path(Some("rel".into()), Some("/home/u".into())).expect("path");
        assert_eq!(relative, PathBuf::from("/home/u/.config/wrenn/config.json"));
        let home = config_path(None, Some("/home/u".into())).expect("path");
        assert_eq!(home, PathBuf::from("/home/u/.config/wrenn/config.json"));
        assert!(config_path(None, None).is_err());
    }

    #[test]
    fn save_writes_0600_and_round_trips_unknown_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wrenn").join("config.json");
        let mut config = file(Some("http://cp:8080/api"), Some("wrn_secret"));
        config
            .other
            .insert("future".into(), serde_json::json!({"x": 1}));
        config.save(&path).expect("save");

        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("parent"))
            .expect("stat dir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(ConfigFile::load(&path).expect("load"), config);
    }

    #[test]
    fn missing_file_is_empty_and_bad_json_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        assert!(ConfigFile::load(&path).expect("load").is_empty());
        std::fs::write(&path, b"{not json").expect("write");
        assert!(matches!(
            ConfigFile::load(&path),
            Err(CliError::Config { .. })
        ));
    }
}
