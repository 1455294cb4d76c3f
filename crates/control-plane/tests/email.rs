//! Email through a real SMTP server: aiosmtpd (Debian's `python3-aiosmtpd`) started on a free
//! loopback port with its Maildir handler. The activation link is read from the delivered
//! message, not from the mailer.

mod support;

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{TestApp, link_token};
use wrenn_control_plane::config::SmtpArgs;
use wrenn_control_plane::email::Mailer;

/// An aiosmtpd process, killed (and reaped) on drop.
struct SmtpServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first interpreter that can import aiosmtpd: Debian's python3 first (the package
/// installs there), then whatever `python3` is on PATH.
fn python_with_aiosmtpd() -> String {
    for candidate in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(candidate)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return candidate.to_string();
        }
    }
    panic!("aiosmtpd is missing: install Debian's python3-aiosmtpd (scripts/test.sh does)");
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl SmtpServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // The Maildir handler creates cur/new/tmp only for a directory that does not exist yet.
        let maildir = dir.path().join("maildir");
        let port = free_port();
        let child = Command::new(python_with_aiosmtpd())
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let server = Self {
            child,
            port,
            maildir,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "aiosmtpd did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn mailer(&self) -> Mailer {
        Mailer::from_config(&SmtpArgs {
            smtp_host: Some("127.0.0.1".into()),
            smtp_port: self.port,
            smtp_username: None,
            smtp_password: None,
            smtp_from: "Wrenn <wrenn@cp.test>".into(),
        })
        .expect("mailer")
    }

    /// The delivered message addressed to `to` whose text contains `needle`, waiting for it.
    async fn wait_for(&self, to: &str, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = read_maildir(&self.maildir.join("new"))
                .into_iter()
                .find(|m| m.contains(&format!("X-RcptTo: {to}")) && m.contains(needle))
            {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no mail to {to} containing {needle:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn read_maildir(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

/// Undoes quoted-printable soft line breaks and `=3D`, which a transfer encoding may add to a
/// long line holding a link.
fn unfold_quoted_printable(text: &str) -> String {
    text.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn activation_link_arrives_over_real_smtp(db: sqlx::PgPool) {
    let smtp = SmtpServer::start().await;
    let t = TestApp::start_with_mailer(db, Default::default(), false, smtp.mailer()).await;
    let email = "smtp-user@example.test";
    let resp = t
        .http
        .post(t.url("/v1/auth/signup"))
        .json(&json!({"email": email, "password": "long enough", "name": "Zoë"}))
        .send()
        .await
        .expect("signup");
    assert_eq!(resp.status(), 201);

    let raw = smtp.wait_for(email, "Activate").await;
    assert!(raw.contains("From: Wrenn <wrenn@cp.test>"), "{raw}");
    assert!(
        raw.contains("Subject: Activate your Wrenn account"),
        "{raw}"
    );
    let text = unfold_quoted_printable(&raw);
    assert!(
        text.contains("http://localhost:8080/activate?token="),
        "{text}"
    );
    let token = link_token(&text).expect("token in the delivered mail");
    let activated = t
        .http
        .post(t.url("/v1/auth/activate"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .expect("activate");
    assert_eq!(activated.status(), 200);

    // The reset link comes the same way and works once.
    let reset = t
        .http
        .post(t.url("/v1/me/password/reset"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status(), 204);
    let raw = unfold_quoted_printable(&smtp.wait_for(email, "reset-password").await);
    let token = link_token(&raw).expect("reset token");
    let confirm = json!({ "token": token, "new_password": "brand new password" });
    let url = t.url("/v1/me/password/reset/confirm");
    assert_eq!(
        t.http
            .post(&url)
            .json(&confirm)
            .send()
            .await
            .expect("confirm")
            .status(),
        204
    );
    assert_eq!(
        t.http
            .post(&url)
            .json(&confirm)
            .send()
            .await
            .expect("confirm")
            .status(),
        400
    );
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn an_unreachable_mail_server_does_not_fail_signup(db: sqlx::PgPool) {
    // Nothing listens on this port once the probe socket is closed.
    let mailer = Mailer::from_config(&SmtpArgs {
        smtp_host: Some("127.0.0.1".into()),
        smtp_port: free_port(),
        smtp_username: None,
        smtp_password: None,
        smtp_from: "wrenn@cp.test".into(),
    })
    .expect("mailer");
    assert!(
        mailer.send("x@example.test", "s", "t").await.is_err(),
        "a direct send reports the failure"
    );
    let t = TestApp::start_with_mailer(db, Default::default(), false, mailer).await;
    let resp = t
        .http
        .post(t.url("/v1/auth/signup"))
        .json(&json!({"email": "offline@example.test", "password": "long enough", "name": "O"}))
        .send()
        .await
        .expect("signup");
    assert_eq!(resp.status(), 201);
}
