//! Start-up: database, keys, background workers, and the HTTP server.

use crate::agents::{AgentPool, AgentTransport};
use crate::auth::jwt::JwtKeys;
use crate::config::ServeArgs;
use crate::email::Mailer;
use crate::events::EventHub;
use crate::internal_pki::{InternalPki, load_ca};
use crate::state::{App, AppState, Settings};
use crate::{api, db};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Builds the shared state from the command line (connects and migrates the database).
pub async fn build(args: &ServeArgs) -> anyhow::Result<AppState> {
    let jwt = JwtKeys::new(&args.jwt_secret)?;
    let pool = db::connect(&args.db.database_url, args.db.db_max_connections).await?;
    db::migrate(&pool).await?;
    let ca_files = args.ca_cert.as_deref().zip(args.ca_key.as_deref());
    let pki = Arc::new(InternalPki::new(load_ca(&pool, ca_files).await?)?);
    Ok(Arc::new(App {
        db: pool,
        jwt,
        settings: Settings {
            public_url: args.public_url.trim_end_matches('/').to_string(),
            proxy_domain: args.proxy_domain.clone(),
            signup_enabled: args.signup_enabled,
            host_monitor_period: Duration::from_secs(args.host_monitor_secs.max(1)),
            heartbeat_timeout: Duration::from_secs(args.heartbeat_timeout_secs.max(1)),
        },
        agents: AgentPool::new(AgentTransport::MutualTls(pki.client_config.clone())),
        events: EventHub::new(),
        mailer: Mailer::default(),
        pki,
    }))
}

/// Runs the background workers until `stop`.
pub fn spawn_workers(app: &AppState, stop: CancellationToken) {
    // The SSE feed: events stored by any instance reach this instance's subscribers.
    app.events.spawn_listener(app.db.clone(), stop.clone());
    // Reservation sampler, daily usage rollup, event pruning.
    crate::workers::spawn(app, &stop);
}

/// Serves until SIGINT/SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let app = build(&args).await?;
    let stop = CancellationToken::new();
    spawn_workers(&app, stop.clone());
    app.pki.spawn_renewal(stop.clone());
    let router = api::router(app.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "control plane serving");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    stop.cancel();
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
