//! Command line and environment. Every option has a flag and an environment variable (the names
//! upstream used where it had one); `.env.example` at the repository root documents them.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "wrenn-cp", version, about = "Wrenn control plane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (applies pending migrations first).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create (or reuse) an active admin user, an API key and a host registration token, and
    /// print them as KEY=VALUE lines. Used by the all-in-one script.
    Bootstrap(BootstrapArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Maximum connections in the pool.
    #[arg(long, env = "WRENN_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Address the API (and the subdomain port proxy) listens on.
    #[arg(long, env = "WRENN_CP_LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// HS256 secret for session and host tokens, at least 32 characters.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Data directory (logs).
    #[arg(long, env = "WRENN_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
    /// The public URL of the dashboard/API, used in emailed links.
    #[arg(long, env = "CP_PUBLIC_URL", default_value = "http://localhost:8080")]
    pub public_url: String,
    /// Domain suffix of port-proxy hosts (`{port}-{capsule}.{domain}`). When unset, any host
    /// of that shape is proxied.
    #[arg(long, env = "WRENN_PROXY_DOMAIN")]
    pub proxy_domain: Option<String>,
    /// The internal CA (PEM files). When unset, a CA is generated on first start and kept in the
    /// database, shared by every control-plane instance.
    #[arg(long, env = "WRENN_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    #[arg(long, env = "WRENN_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    #[command(flatten)]
    pub smtp: SmtpArgs,
    /// Host monitor period in seconds (reconciles capsule states with the agents).
    #[arg(long, env = "WRENN_HOST_MONITOR_SECS", default_value_t = 15)]
    pub host_monitor_secs: u64,
    /// A host without a heartbeat for this long is marked unreachable.
    #[arg(long, env = "WRENN_HEARTBEAT_TIMEOUT_SECS", default_value_t = 90)]
    pub heartbeat_timeout_secs: u64,
    /// Allow signups (the first activated user becomes the platform admin).
    #[arg(long, env = "WRENN_SIGNUP_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub signup_enabled: bool,
}

#[derive(Debug, Clone, Args, Default)]
pub struct SmtpArgs {
    /// SMTP server; without it emails are logged instead of sent.
    #[arg(long, env = "SMTP_HOST")]
    pub smtp_host: Option<String>,
    /// 465 = implicit TLS, 587 = STARTTLS, anything else (e.g. 25, 1025) = plain.
    #[arg(long, env = "SMTP_PORT", default_value_t = 587)]
    pub smtp_port: u16,
    #[arg(long, env = "SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    #[arg(long, env = "SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,
    #[arg(long, env = "SMTP_FROM_EMAIL", default_value = "noreply@wrenn.local")]
    pub smtp_from: String,
}

#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[arg(long, env = "WRENN_ADMIN_EMAIL", default_value = "admin@wrenn.local")]
    pub email: String,
    /// Password for the admin; generated (and printed) when absent and the user is new.
    #[arg(long, env = "WRENN_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Also add a shared host and print a one-time registration token for its agent
    /// (`WRENN_HOST_TOKEN=…`).
    #[arg(long)]
    pub register_host: bool,
}
