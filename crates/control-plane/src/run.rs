//! Start-up: database, keys, background workers, and the HTTP server.

use crate::agents::{AgentPool, AgentTransport};
use crate::auth::jwt::JwtKeys;
use crate::config::{BootstrapArgs, ServeArgs};
use crate::email::Mailer;
use crate::events::EventHub;
use crate::internal_pki::{InternalPki, load_ca};
use crate::state::{App, AppState, Settings};
use crate::{api, db};
use anyhow::Context;
use sqlx::PgPool;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wrenn_http::server::{ServerLimits, serve as serve_http};

/// Builds the shared state from the command line (connects and migrates the database).
pub async fn build(args: &ServeArgs) -> anyhow::Result<AppState> {
    let jwt = JwtKeys::new(&args.jwt_secret)?;
    let pool = db::connect(&args.db.database_url, args.db.db_max_connections).await?;
    db::migrate(&pool).await?;
    let ca_files = args.ca_cert.as_deref().zip(args.ca_key.as_deref());
    let settings = Settings {
        public_url: args.public_url.trim_end_matches('/').to_string(),
        proxy_domain: args.proxy_domain.clone(),
        signup_enabled: args.signup_enabled,
        host_monitor_period: Duration::from_secs(args.host_monitor_secs.max(1)),
        heartbeat_timeout: Duration::from_secs(args.heartbeat_timeout_secs.max(1)),
        ..Settings::default()
    };
    assemble(
        pool,
        jwt,
        settings,
        ca_files,
        true,
        Mailer::from_config(&args.smtp)?,
    )
    .await
}

/// Assembles the state around a migrated pool. Without `mutual_tls` agents are called over plain
/// HTTP (only for tests of one layer).
pub async fn assemble(
    db: PgPool,
    jwt: JwtKeys,
    settings: Settings,
    ca_files: Option<(&Path, &Path)>,
    mutual_tls: bool,
    mailer: Mailer,
) -> anyhow::Result<AppState> {
    let pki = Arc::new(InternalPki::new(load_ca(&db, ca_files).await?)?);
    let transport = if mutual_tls {
        AgentTransport::MutualTls(pki.client_config.clone())
    } else {
        AgentTransport::Plain
    };
    Ok(Arc::new(App {
        db,
        jwt,
        settings,
        agents: AgentPool::new(transport),
        events: EventHub::new(),
        mailer,
        pki,
    }))
}

pub fn spawn_workers(app: &AppState, stop: CancellationToken) {
    // The SSE feed: events stored by any instance reach this instance's subscribers.
    app.events.spawn_listener(app.db.clone(), stop.clone());
    // Reservation sampler, daily usage rollup, event pruning, host monitor.
    crate::workers::spawn(app, &stop);
}

/// Serves until SIGINT/SIGTERM. Read-header and idle timeouts apply to every connection;
/// requests in progress (streams, WebSockets, SSE) are never cut.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let app = build(&args).await?;
    let stop = CancellationToken::new();
    spawn_workers(&app, stop.clone());
    app.pki.spawn_renewal(stop.clone());
    let router = api::router(app.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "binding {} (is another control plane running?)",
                args.listen
            )
        })?;
    tracing::info!(listen = %args.listen, "control plane serving");
    serve_http(
        listener,
        router,
        None,
        ServerLimits::default(),
        shutdown_signal(),
    )
    .await;
    stop.cancel();
    Ok(())
}

/// `wrenn-cp bootstrap`: an admin, an API key and optionally a host registration token, as
/// `KEY=VALUE` lines on stdout.
pub async fn bootstrap(args: BootstrapArgs) -> anyhow::Result<()> {
    let pool = db::connect(&args.db.database_url, 2).await?;
    db::migrate(&pool).await?;
    let outcome =
        crate::service::accounts::bootstrap_admin(&pool, &args.email, args.password.clone())
            .await?;
    println!("WRENN_ADMIN_EMAIL={}", outcome.email);
    if let Some(password) = &outcome.password_if_generated {
        println!("WRENN_ADMIN_PASSWORD={password}");
    }
    println!("WRENN_API_KEY={}", outcome.api_key);
    if args.register_host {
        let host = crate::service::hosts::insert_pending(
            &pool,
            None,
            "all-in-one",
            "",
            Some(outcome.user_id),
        )
        .await
        .map_err(|e| anyhow::anyhow!("adding the host: {e}"))?;
        let token = crate::service::hosts::registration_token(&pool, host, Some(outcome.user_id))
            .await
            .map_err(|e| anyhow::anyhow!("registration token: {e}"))?;
        println!("WRENN_HOST_TOKEN={token}");
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
