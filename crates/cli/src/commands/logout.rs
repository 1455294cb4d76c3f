//! `wrenn logout`: removes the stored base URL and API key (the file goes when nothing else is
//! left in it, or when it is unreadable).

use crate::config::{ConfigFile, default_config_path};
use crate::error::{CliError, CliResult};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> CliResult<i32> {
    let path = default_config_path()?;
    if !path.exists() {
        eprintln!("Not logged in (no {}).", path.display());
        return Ok(0);
    }
    let remove = || {
        std::fs::remove_file(&path).map_err(|error| CliError::Config {
            path: path.display().to_string(),
            detail: error.to_string(),
        })
    };
    match ConfigFile::load(&path) {
        Ok(mut config) => {
            config.base_url = None;
            config.api_key = None;
            if config.is_empty() {
                remove()?;
            } else {
                config.save(&path)?;
            }
        }
        Err(_unreadable) => remove()?,
    }
    eprintln!(
        "Logged out; removed the credentials from {}.",
        path.display()
    );
    Ok(0)
}
