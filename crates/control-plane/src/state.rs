//! Shared state every handler and worker receives.

use crate::agents::AgentPool;
use crate::auth::jwt::JwtKeys;
use crate::email::Mailer;
use crate::events::EventHub;
use crate::internal_pki::InternalPki;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Settings that outlive start-up parsing.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base of links in emails (`{public_url}/activate?token=…`).
    pub public_url: String,
    /// Suffix of port-proxy hosts; `None` accepts any `{port}-{id}.` host.
    pub proxy_domain: Option<String>,
    pub signup_enabled: bool,
    pub host_monitor_period: Duration,
    pub heartbeat_timeout: Duration,
    /// Positive capsule inactivity timeouts below this are raised to it (60 s; tests lower it).
    pub min_capsule_timeout_sec: i32,
    /// Pause, resume and create answer within this (the SDK's HTTP timeout is 30 s); a VM still
    /// being paused or resumed then is reported `pausing`/`resuming` and finishes in the
    /// background. Tests shorten it.
    pub answer_within: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            public_url: "http://localhost:8080".into(),
            proxy_domain: None,
            signup_enabled: true,
            host_monitor_period: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(90),
            min_capsule_timeout_sec: 60,
            answer_within: Duration::from_secs(20),
        }
    }
}

#[derive(Debug)]
pub struct App {
    pub db: PgPool,
    pub jwt: JwtKeys,
    pub settings: Settings,
    pub agents: AgentPool,
    pub events: EventHub,
    pub mailer: Mailer,
    pub pki: Arc<InternalPki>,
}

pub type AppState = Arc<App>;
