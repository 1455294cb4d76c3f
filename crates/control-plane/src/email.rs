//! Outgoing email (activation and password-reset links). Without an SMTP host the message is
//! logged instead, so a single-machine install works without a mail server.
//!
//! Sending never fails a request: callers use [`Mailer::send_later`], which sends off the request
//! path and logs a failure.

use crate::config::SmtpArgs;
use anyhow::Context;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connecting, greeting and each SMTP command give up after this long.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// One message as handed to the mailer (kept by [`Outbox`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentEmail {
    pub to: String,
    pub subject: String,
    pub text: String,
}

/// Every message a [`Mailer::capturing`] mailer was asked to send, for tests and diagnostics.
#[derive(Debug, Clone, Default)]
pub struct Outbox(Arc<Mutex<Vec<SentEmail>>>);

impl Outbox {
    pub fn messages(&self) -> Vec<SentEmail> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn push(&self, email: SentEmail) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(email);
    }

    /// The newest message to `to`, waiting up to `timeout` for it (sends are asynchronous).
    pub async fn wait_for(&self, to: &str, timeout: Duration) -> Option<SentEmail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.messages().into_iter().rev().find(|m| m.to == to) {
                return Some(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Clone)]
enum Transport {
    /// No SMTP server configured: messages are written to the log.
    Log,
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

/// Sends the control plane's email. Cheap to clone (the SMTP connection pool is shared).
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    outbox: Option<Outbox>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let transport = match self.transport {
            Transport::Log => "log",
            Transport::Smtp(_) => "smtp",
        };
        f.debug_struct("Mailer")
            .field("transport", &transport)
            .field("from", &self.from.to_string())
            .finish()
    }
}

impl Default for Mailer {
    /// Log only.
    fn default() -> Self {
        Self {
            transport: Transport::Log,
            // A constant, valid address (the CLI's default SMTP_FROM_EMAIL).
            from: Mailbox::new(None, Address::new_dangerous("noreply", "wrenn.local")),
            outbox: None,
        }
    }
}

impl Mailer {
    /// A mailer from the command line: without `SMTP_HOST` it logs; port 465 uses implicit TLS,
    /// 587 STARTTLS, any other port plain SMTP (local relays such as a test server).
    pub fn from_config(args: &SmtpArgs) -> anyhow::Result<Self> {
        let from: Mailbox = args.smtp_from.parse().with_context(|| {
            format!(
                "SMTP_FROM_EMAIL {:?} is not an email address",
                args.smtp_from
            )
        })?;
        let Some(host) = args.smtp_host.as_deref().filter(|h| !h.trim().is_empty()) else {
            return Ok(Self {
                from,
                ..Self::default()
            });
        };
        let builder = match args.smtp_port {
            465 => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .with_context(|| format!("SMTP over TLS to {host}"))?,
            587 => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .with_context(|| format!("SMTP with STARTTLS to {host}"))?,
            _ => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        };
        let mut builder = builder.port(args.smtp_port).timeout(Some(SMTP_TIMEOUT));
        if let Some(user) = args.smtp_username.as_deref().filter(|u| !u.is_empty()) {
            builder = builder.credentials(Credentials::new(
                user.to_string(),
                args.smtp_password.clone().unwrap_or_default(),
            ));
        }
        Ok(Self {
            transport: Transport::Smtp(builder.build()),
            from,
            outbox: None,
        })
    }

    /// This mailer, also recording every message in the returned [`Outbox`].
    pub fn capturing(self) -> (Self, Outbox) {
        let outbox = Outbox::default();
        (
            Self {
                outbox: Some(outbox.clone()),
                ..self
            },
            outbox,
        )
    }

    /// Sends a plain-text message now.
    pub async fn send(&self, to: &str, subject: &str, text: &str) -> anyhow::Result<()> {
        if let Some(outbox) = &self.outbox {
            outbox.push(SentEmail {
                to: to.into(),
                subject: subject.into(),
                text: text.into(),
            });
        }
        match &self.transport {
            Transport::Log => {
                tracing::info!(%to, %subject, body = %text, "email (no SMTP_HOST configured, logged instead of sent)");
                Ok(())
            }
            Transport::Smtp(smtp) => {
                let message = Message::builder()
                    .from(self.from.clone())
                    .to(to.parse().with_context(|| format!("recipient {to:?}"))?)
                    .subject(subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(text.to_string())
                    .context("building the message")?;
                smtp.send(message)
                    .await
                    .with_context(|| format!("sending {subject:?} to {to} over SMTP"))?;
                Ok(())
            }
        }
    }

    /// Sends in the background and logs a failure: a mail server being down must not fail the
    /// request that wanted the mail.
    pub fn send_later(&self, to: String, subject: String, text: String) {
        let mailer = self.clone();
        tokio::spawn(async move {
            if let Err(err) = mailer.send(&to, &subject, &text).await {
                tracing::warn!(error = %format!("{err:#}"), %to, %subject, "could not send email");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(host: Option<&str>, port: u16, from: &str) -> SmtpArgs {
        SmtpArgs {
            smtp_host: host.map(Into::into),
            smtp_port: port,
            smtp_username: None,
            smtp_password: None,
            smtp_from: from.into(),
        }
    }

    #[test]
    fn config_picks_the_transport() {
        let log = Mailer::from_config(&smtp(None, 587, "a@b.test")).expect("log mailer");
        assert!(matches!(log.transport, Transport::Log));
        assert_eq!(log.from.email.to_string(), "a@b.test");
        for port in [25, 465, 587, 1025] {
            let m = Mailer::from_config(&smtp(Some("mail.example.test"), port, "a@b.test"))
                .expect("smtp mailer");
            assert!(matches!(m.transport, Transport::Smtp(_)), "port {port}");
        }
        assert!(Mailer::from_config(&smtp(None, 25, "not an address")).is_err());
    }

    #[tokio::test]
    async fn log_only_mailer_records_in_its_outbox() {
        let (mailer, outbox) = Mailer::default().capturing();
        mailer
            .send("x@y.test", "Hello", "body")
            .await
            .expect("log send");
        assert_eq!(
            outbox.wait_for("x@y.test", Duration::from_secs(1)).await,
            Some(SentEmail {
                to: "x@y.test".into(),
                subject: "Hello".into(),
                text: "body".into()
            })
        );
    }
}
