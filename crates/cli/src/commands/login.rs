//! `wrenn login`: stores a base URL and API key in the config file.
//!
//! - `--api-key KEY` (or `WRENN_API_KEY`): checks it with `GET /v1/capsules`, then stores it.
//! - `--email E`: `POST /v1/auth/login {email,password}` → JWT; then
//!   `POST /v1/api-keys {"name":"wrenn-cli@<hostname>"}` with `Authorization: Bearer <jwt>` →
//!   the new key, which is stored (the JWT is not).

use crate::cli::Context;
use crate::client::{ApiClient, RESPONSE_TIMEOUT, decode_json};
use crate::config::ConfigFile;
use crate::error::{CliError, CliResult};
use crate::terminal::{prompt_password, trim_line_end};
use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use std::io::BufRead;
use wrenn_api_types::auth::{ApiKey, AuthResponse, CreateApiKeyRequest, LoginRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Log in with this account's email and create an API key for this machine.
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long, requires = "email")]
    pub password_stdin: bool,
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    let (key, who) = match &args.email {
        Some(email) => {
            let password = read_password(args.password_stdin)?;
            (
                login_with_password(context, email, password).await?,
                email.clone(),
            )
        }
        None => {
            let key = context.api_key_arg.clone().ok_or_else(|| {
                CliError::Usage("give --api-key KEY (or WRENN_API_KEY), or --email EMAIL".into())
            })?;
            verify_key(context, &key).await?;
            (key, "API key".to_owned())
        }
    };

    let mut config = ConfigFile::load(&context.config_path)?;
    config.base_url = Some(context.settings.base_url.clone());
    config.api_key = Some(key);
    config.save(&context.config_path)?;
    eprintln!(
        "Logged in to {} ({who}); credentials saved in {}",
        context.settings.base_url,
        context.config_path.display()
    );
    Ok(0)
}

fn read_password(from_stdin: bool) -> CliResult<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|error| CliError::io("reading the password from stdin", error))?;
        trim_line_end(line)
    } else {
        prompt_password("Password: ")?
    };
    if password.is_empty() {
        return Err(CliError::Usage("empty password".into()));
    }
    Ok(password)
}

/// A key works if it can list capsules.
async fn verify_key(context: &Context, key: &str) -> CliResult<()> {
    let client = ApiClient::new(&context.settings.base_url, Some(key.to_owned()))?;
    let _: serde_json::Value = client.get_json(&["v1", "capsules"]).await?;
    Ok(())
}

async fn login_with_password(
    context: &Context,
    email: &str,
    password: String,
) -> CliResult<String> {
    let client = ApiClient::new(&context.settings.base_url, None)?;
    let login = client
        .request(Method::POST, client.url(&["v1", "auth", "login"]))
        .json(&LoginRequest {
            email: email.to_owned(),
            password,
        })
        .timeout(RESPONSE_TIMEOUT);
    let session: AuthResponse = decode_json(client.send(login).await?).await?;

    let create_key = client
        .request(Method::POST, client.url(&["v1", "api-keys"]))
        .header(AUTHORIZATION, format!("Bearer {}", session.token))
        .json(&CreateApiKeyRequest {
            name: Some(key_name()),
        })
        .timeout(RESPONSE_TIMEOUT);
    let api_key: ApiKey = decode_json(client.send(create_key).await?).await?;
    api_key.key.ok_or_else(|| CliError::Decode {
        url: client.url(&["v1", "api-keys"]).to_string(),
        detail: "the created API key has no `key` field".into(),
    })
}

/// `wrenn-cli@<hostname>`, so the key is recognisable in the dashboard.
fn key_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("wrenn-cli@{host}")
}
