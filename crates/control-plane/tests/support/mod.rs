//! Test harness: the control plane served on a loopback port over a fresh database.
//!
//! Tests use `#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]`, which creates a
//! database per test on the server named by `DATABASE_URL` (the test script starts a private
//! PostgreSQL and sets it) and passes its pool in.
#![allow(dead_code)]

pub mod platform;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wrenn_control_plane::auth::jwt::JwtKeys;
use wrenn_control_plane::auth::secrets::{api_key_display_prefix, hash_secret, new_api_key};
use wrenn_control_plane::email::Mailer;
use wrenn_control_plane::ids::{self, IdKind};
use wrenn_control_plane::state::{AppState, Settings};

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
        Self::launch(db, settings, mtls, mailer, true).await
    }

    /// A control plane without its periodic workers (sampler, rollup, monitor), for tests that
    /// write the tables those workers write and drive the workers' functions themselves.
    pub async fn start_quiet(db: PgPool) -> Self {
        Self::start_quiet_with(db, Settings::default()).await
    }

    /// [`TestApp::start_quiet`] with `settings`.
    pub async fn start_quiet_with(db: PgPool, settings: Settings) -> Self {
        Self::launch(db, settings, false, Mailer::default(), false).await
    }

    async fn launch(
        db: PgPool,
        settings: Settings,
        mtls: bool,
        mailer: Mailer,
        workers: bool,
    ) -> Self {
        let app = wrenn_control_plane::run::assemble(
            db,
            JwtKeys::new(JWT_SECRET).expect("jwt keys"),
            settings,
            None,
            mtls,
            mailer,
        )
        .await
        .expect("app state");
        let stop = CancellationToken::new();
        if workers {
            wrenn_control_plane::run::spawn_workers(&app, stop.clone());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = wrenn_control_plane::api::router(app.clone());
        let shutdown = stop.clone();
        // The production server: read-header and idle timeouts, connection info for the proxy.
        tokio::spawn(wrenn_http::server::serve(
            listener,
            router,
            None,
            wrenn_http::server::ServerLimits::default(),
            async move { shutdown.cancelled().await },
        ));
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

/// The JSON body of a response.
pub async fn json_of(resp: reqwest::Response) -> serde_json::Value {
    resp.json().await.expect("json body")
}

/// The status and `error.code` of a response (an empty code when the body has none).
pub async fn status_and_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, code)
}

impl TestApp {
    /// A request with a session token and an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        jwt: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(jwt);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.expect("send")
    }
}

/// `error.code` of a response, after checking its status.
pub async fn expect_error(resp: reqwest::Response, status: u16) -> String {
    let (got, code) = status_and_code(resp).await;
    assert_eq!(got, status, "status");
    code
}

impl TestApp {
    /// `POST /v1/auth/login`.
    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/v1/auth/login"))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("login")
    }
}
