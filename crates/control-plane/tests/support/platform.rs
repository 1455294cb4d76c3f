//! The whole platform for end-to-end tests: the control plane (mTLS to agents, fast host
//! monitor) and a real `wrenn-agent` process that registers itself with a one-time token, then
//! boots real QEMU guests.

use super::{Tenant, TestApp};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use wrenn_control_plane::state::Settings;
use wrenn_testing::{AgentOptions, AgentProcess, workspace_binary};

/// Each platform in a test binary gets its own slots (tests in one binary run concurrently).
static NEXT_SLOTS: AtomicU32 = AtomicU32::new(0);
/// Control-plane tests use slots 400–599 (agent tests use 200–399).
const SLOT_BASE: u32 = 400;
const SLOTS_EACH: u32 = 8;

pub struct Platform {
    pub cp: TestApp,
    /// Every email the control plane sent (activation links).
    pub outbox: wrenn_control_plane::email::Outbox,
    pub agent: AgentProcess,
    pub admin: Tenant,
    pub host_id: String,
}

impl Platform {
    /// Starts the control plane on `db`, registers a real agent with it, and waits until the
    /// host is online.
    pub async fn start(db: PgPool) -> Self {
        let settings = Settings {
            host_monitor_period: Duration::from_secs(1),
            // Four missed 1 s heartbeats; generous enough that a loaded CI machine does not
            // flip a healthy host to unreachable mid-test.
            heartbeat_timeout: Duration::from_secs(8),
            min_capsule_timeout_sec: 2,
            ..Settings::default()
        };
        let (mailer, outbox) = wrenn_control_plane::email::Mailer::default().capturing();
        let cp = TestApp::start_with_mailer(db, settings, true, mailer).await;
        let admin = cp.tenant("admin").await;
        sqlx::query("UPDATE users SET is_admin = true WHERE id = $1")
            .bind(admin.user_id)
            .execute(&cp.app.db)
            .await
            .expect("make admin");
        let created: Value = cp
            .http
            .post(cp.url("/v1/hosts"))
            .bearer_auth(&admin.jwt)
            .json(&json!({"type": "regular"}))
            .send()
            .await
            .expect("create host")
            .json()
            .await
            .expect("host json");
        let token = created["registration_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no registration token in {created}"))
            .to_string();
        let host_id = created["host"]["id"].as_str().expect("host id").to_string();
        let n = NEXT_SLOTS.fetch_add(1, Ordering::SeqCst);
        let first = SLOT_BASE + n * SLOTS_EACH;
        let port = wrenn_testing::free_port();
        let mut agent = AgentProcess::launch(AgentOptions {
            binary: workspace_binary("wrenn-agent"),
            slots: format!("{first}-{}", first + SLOTS_EACH - 1),
            port: Some(port),
            extra_args: vec![
                "--cp-url".into(),
                cp.base.clone(),
                "--register".into(),
                token,
                "--address".into(),
                format!("127.0.0.1:{port}"),
                "--heartbeat-secs".into(),
                "1".into(),
            ],
        });
        wait_listening(&mut agent).await;
        let platform = Self {
            cp,
            outbox,
            agent,
            admin,
            host_id,
        };
        platform.wait_host_status("online").await;
        platform
    }

    /// Restarts a crashed or stopped agent on its data directory (it reuses its credentials).
    pub async fn restart_agent(&mut self) {
        let args = &mut self.agent.options.extra_args;
        if let Some(i) = args.iter().position(|a| a == "--register") {
            args.drain(i..i + 2);
        }
        self.agent.respawn();
        wait_listening(&mut self.agent).await;
    }

    pub async fn host_status(&self) -> String {
        let id =
            wrenn_control_plane::ids::decode(wrenn_control_plane::ids::IdKind::Host, &self.host_id)
                .expect("host id");
        sqlx::query_scalar("SELECT status FROM hosts WHERE id = $1")
            .bind(id)
            .fetch_one(&self.cp.app.db)
            .await
            .expect("host status")
    }

    pub async fn wait_host_status(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.host_status().await;
            if status == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host stayed {status}, expected {want}; agent log:\n{}",
                self.agent.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates a capsule for `tenant` through the API and waits until it runs.
    pub async fn create_capsule(&self, tenant: &Tenant) -> String {
        self.create_capsule_with(tenant, json!({})).await
    }

    /// Like [`Platform::create_capsule`] with a create body (template, timeout, …).
    pub async fn create_capsule_with(&self, tenant: &Tenant, body: Value) -> String {
        let resp = self
            .cp
            .http
            .post(self.cp.url("/v1/capsules"))
            .header("X-API-Key", &tenant.api_key)
            .json(&body)
            .send()
            .await
            .expect("create capsule");
        let status = resp.status();
        let body: Value = resp.json().await.expect("capsule json");
        assert_eq!(
            status,
            201,
            "create: {body}\nagent log:\n{}",
            self.agent.log_tail()
        );
        let id = body["id"].as_str().expect("capsule id").to_string();
        self.wait_capsule_status(tenant, &id, "running").await;
        id
    }

    /// An API call as `tenant` (API key); the status and the JSON body (null if none).
    pub async fn api(
        &self,
        tenant: &Tenant,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .cp
            .http
            .request(method, self.cp.url(path))
            .header("X-API-Key", &tenant.api_key);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Runs `script` with `/bin/sh -c` in the capsule (foreground); its stdout.
    pub async fn sh(&self, tenant: &Tenant, id: &str, script: &str) -> String {
        let (status, body) = self
            .api(
                tenant,
                reqwest::Method::POST,
                &format!("/v1/capsules/{id}/exec"),
                Some(json!({"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": 60})),
            )
            .await;
        assert_eq!(
            status,
            200,
            "{script}: {body}\nagent log:\n{}",
            self.agent.log_tail()
        );
        body["stdout"].as_str().expect("stdout").to_string()
    }

    /// `GET path` through the port proxy (Host `{port}-{id}.localhost`): status and body.
    pub async fn proxy_get(&self, id: &str, port: u16, path: &str) -> (u16, String) {
        let resp = self
            .cp
            .http
            .get(self.cp.url(path))
            .header("Host", format!("{port}-{id}.localhost"))
            .send()
            .await
            .expect("proxy");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    pub async fn capsule(&self, tenant: &Tenant, id: &str) -> Value {
        self.cp
            .http
            .get(self.cp.url(&format!("/v1/capsules/{id}")))
            .header("X-API-Key", &tenant.api_key)
            .send()
            .await
            .expect("get capsule")
            .json()
            .await
            .expect("capsule json")
    }

    pub async fn wait_capsule_status(&self, tenant: &Tenant, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let capsule = self.capsule(tenant, id).await;
            if capsule["status"] == want {
                return capsule;
            }
            assert!(
                Instant::now() < deadline,
                "capsule {id} is {}, expected {want}; agent log:\n{}",
                capsule["status"],
                self.agent.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn wait_listening(agent: &mut AgentProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agent.listening() {
        assert!(
            Instant::now() < deadline,
            "agent did not listen:\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
