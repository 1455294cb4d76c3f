//! Test harness: the control plane served on a loopback port over a fresh database.
//!
//! Tests use `#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]`, which creates a
//! database per test on the server named by `DATABASE_URL` (the test script starts a private
//! PostgreSQL and sets it) and passes its pool in.
#![allow(dead_code)]

pub mod platform;

use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wrenn_control_plane::agents::{AgentPool, AgentTransport};
use wrenn_control_plane::auth::jwt::JwtKeys;
use wrenn_control_plane::auth::secrets::{api_key_display_prefix, hash_secret, new_api_key};
use wrenn_control_plane::email::Mailer;
use wrenn_control_plane::events::EventHub;
use wrenn_control_plane::ids::{self, IdKind};
use wrenn_control_plane::internal_pki::InternalPki;
use wrenn_control_plane::state::{App, AppState, Settings};

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// A running control plane.
pub struct TestApp {
    pub app: AppState,
    pub base: String,
    pub http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A team with an owner and an API key, created directly in the database.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub team_id: Uuid,
    pub user_id: Uuid,
    pub email: String,
    pub api_key: String,
    /// A session token for the owner.
    pub jwt: String,
}

impl TestApp {
    pub async fn start(db: PgPool) -> Self {
        Self::start_with(db, Settings::default(), false).await
    }

    /// With `mtls`, agents are called over mutual TLS from the internal CA (as in production).
    pub async fn start_with(db: PgPool, settings: Settings, mtls: bool) -> Self {
        Self::start_with_mailer(db, settings, mtls, Mailer::default()).await
    }

    /// Like [`TestApp::start_with`], sending email with `mailer` (e.g. a capturing one, whose
    /// outbox holds the activation links).
    pub async fn start_with_mailer(
        db: PgPool,
        settings: Settings,
        mtls: bool,
        mailer: Mailer,
    ) -> Self {
        let ca = wrenn_control_plane::internal_pki::load_ca(&db, None)
            .await
            .expect("internal CA");
        let pki = Arc::new(InternalPki::new(ca).expect("pki"));
        let transport = if mtls {
            AgentTransport::MutualTls(pki.client_config.clone())
        } else {
            AgentTransport::Plain
        };
        let app = Arc::new(App {
            db,
            jwt: JwtKeys::new(JWT_SECRET).expect("jwt keys"),
            settings,
            agents: AgentPool::new(transport),
            events: EventHub::new(),
            mailer,
            pki,
        });
        let stop = CancellationToken::new();
        wrenn_control_plane::run::spawn_workers(&app, stop.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = wrenn_control_plane::api::router(app.clone());
        let shutdown = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .expect("serve");
        });
        Self {
            app,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .expect("client"),
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates an active user owning a new team, with an API key and a session token.
    pub async fn tenant(&self, name: &str) -> Tenant {
        let db = &self.app.db;
        let team_id = Uuid::new_v4();
        let user_id = Uuid::new_v4();
        let email = format!("{name}-{}@example.test", &team_id.simple().to_string()[..8]);
        sqlx::query("INSERT INTO teams (id, name, slug) VALUES ($1, $2, $3)")
            .bind(team_id)
            .bind(format!("{name}'s Team"))
            .bind(team_id.simple().to_string())
            .execute(db)
            .await
            .expect("team");
        sqlx::query("INSERT INTO users (id, email, name, status) VALUES ($1, $2, $3, 'active')")
            .bind(user_id)
            .bind(&email)
            .bind(name)
            .execute(db)
            .await
            .expect("user");
        sqlx::query(
            "INSERT INTO users_teams (user_id, team_id, is_default, role) VALUES ($1, $2, true, 'owner')",
        )
        .bind(user_id)
        .bind(team_id)
        .execute(db)
        .await
        .expect("membership");
        let api_key = new_api_key();
        sqlx::query(
            "INSERT INTO team_api_keys (id, team_id, name, key_hash, key_prefix, created_by)
             VALUES ($1, $2, 'test', $3, $4, $5)",
        )
        .bind(Uuid::new_v4())
        .bind(team_id)
        .bind(hash_secret(&api_key))
        .bind(api_key_display_prefix(&api_key))
        .bind(user_id)
        .execute(db)
        .await
        .expect("api key");
        let jwt = self
            .app
            .jwt
            .sign_user(
                &ids::encode(IdKind::User, user_id),
                &ids::encode(IdKind::Team, team_id),
                "owner",
                &email,
                name,
                false,
            )
            .expect("jwt");
        Tenant {
            team_id,
            user_id,
            email,
            api_key,
            jwt,
        }
    }
}

/// An account created through the API (signup, emailed link, activate).
#[derive(Debug, Clone)]
pub struct Account {
    pub email: String,
    pub password: String,
    /// The session from activation.
    pub jwt: String,
    pub user_id: String,
    pub team_id: String,
}

/// The `token` query parameter of the first `…?token=` link in an email body.
pub fn link_token(text: &str) -> Option<String> {
    let start = text.find("?token=")? + "?token=".len();
    let token: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!token.is_empty()).then_some(token)
}

impl TestApp {
    /// A control plane whose (log-only) mailer records every message in the returned outbox.
    pub async fn start_capturing(db: PgPool) -> (Self, wrenn_control_plane::email::Outbox) {
        let (mailer, outbox) = Mailer::default().capturing();
        let t = Self::start_with_mailer(db, Settings::default(), false, mailer).await;
        (t, outbox)
    }

    /// Signs `name` up through the API and activates the account with the emailed token.
    pub async fn register(
        &self,
        outbox: &wrenn_control_plane::email::Outbox,
        name: &str,
    ) -> Account {
        let email = format!(
            "{name}-{}@example.test",
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let password = format!("pw-{name}-0123456789");
        let resp = self
            .http
            .post(self.url("/v1/auth/signup"))
            .json(&serde_json::json!({ "email": email, "password": password, "name": name }))
            .send()
            .await
            .expect("signup");
        assert_eq!(
            resp.status(),
            201,
            "signup: {}",
            resp.text().await.unwrap_or_default()
        );
        let mail = outbox
            .wait_for(&email, std::time::Duration::from_secs(10))
            .await
            .expect("activation email");
        let token = link_token(&mail.text).expect("activation link");
        let resp = self
            .http
            .post(self.url("/v1/auth/activate"))
            .json(&serde_json::json!({ "token": token }))
            .send()
            .await
            .expect("activate");
        assert_eq!(resp.status(), 200, "activate");
        let auth: serde_json::Value = resp.json().await.expect("auth json");
        let text = |k: &str| auth[k].as_str().expect("auth field").to_string();
        Account {
            email,
            password,
            jwt: text("token"),
            user_id: text("user_id"),
            team_id: text("team_id"),
        }
    }
}
