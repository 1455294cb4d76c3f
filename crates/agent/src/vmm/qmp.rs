//! A minimal QMP (QEMU Machine Protocol) client: newline-delimited JSON over a Unix socket.
//!
//! Only a handful of commands are needed (status, quit, stop/cont, migrate), so a hand-written
//! client beats a generated one for QEMU 7.2. Replies carry the `id` we sent; asynchronous events
//! (a `SHUTDOWN` can arrive before `quit` returns) are skipped.

use crate::error::{AgentError, AgentResult};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Longest QMP line we accept (migration status replies are a few KB).
const MAX_LINE: usize = 1 << 20;

#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    timeout: Duration,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capability negotiation mode.
    pub async fn connect(socket: &Path, timeout: Duration) -> AgentResult<Self> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(socket))
            .await
            .map_err(|_| AgentError::Vmm(format!("QMP connect to {} timed out", socket.display())))?
            .map_err(|e| AgentError::Vmm(format!("QMP connect to {}: {e}", socket.display())))?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
            next_id: 1,
            timeout,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(AgentError::Vmm(format!(
                "unexpected QMP greeting: {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> AgentResult<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| AgentError::Vmm(format!("QMP {command}: {e}")))?;
        loop {
            let reply = self.read_message().await.map_err(|e| match e {
                AgentError::Vmm(m) => AgentError::Vmm(format!("QMP {command}: {m}")),
                other => other,
            })?;
            if reply.get("event").is_some() {
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(err) = reply.get("error") {
                let desc = err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(AgentError::Vmm(format!("QMP {command} failed: {desc}")));
            }
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub async fn status(&mut self) -> AgentResult<String> {
        let v = self.execute("query-status", None).await?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| AgentError::Vmm(format!("query-status answered {v}")))
    }

    async fn read_message(&mut self) -> AgentResult<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(self.timeout, async {
            let mut total = 0;
            loop {
                let n = (&mut self.reader)
                    .take((MAX_LINE - total) as u64)
                    .read_line(&mut line)
                    .await?;
                total += n;
                if n == 0 || line.ends_with('\n') || total >= MAX_LINE {
                    return Ok::<usize, std::io::Error>(total);
                }
            }
        })
        .await
        .map_err(|_| AgentError::Vmm(format!("no answer within {:?}", self.timeout)))?
        .map_err(|e| AgentError::Vmm(format!("read: {e}")))?;
        if n == 0 {
            return Err(AgentError::Vmm("QEMU closed the QMP connection".into()));
        }
        serde_json::from_str(line.trim())
            .map_err(|e| AgentError::Vmm(format!("malformed QMP message ({e}): {}", line.trim())))
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QEMU that greets, acknowledges capabilities, sends an event before a reply and
    /// reports an error for an unknown command.
    async fn fake_qemu(listener: UnixListener) {
        let (stream, _) = listener.accept().await.expect("accept");
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .expect("greet");
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&line).expect("json");
            let id = v["id"].clone();
            let reply = match v["execute"].as_str() {
                Some("qmp_capabilities") => json!({"return": {}, "id": id}),
                Some("query-status") => {
                    w.write_all(b"{\"event\": \"RESUME\", \"timestamp\": {}}\n")
                        .await
                        .expect("event");
                    json!({"return": {"status": "running", "running": true}, "id": id})
                }
                _ => {
                    json!({"error": {"class": "CommandNotFound", "desc": "no such command"}, "id": id})
                }
            };
            w.write_all(format!("{reply}\n").as_bytes())
                .await
                .expect("reply");
        }
    }

    #[tokio::test]
    async fn skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        tokio::spawn(fake_qemu(listener));
        let mut qmp = Qmp::connect(&sock, Duration::from_secs(2))
            .await
            .expect("connect");
        assert_eq!(qmp.status().await.expect("status"), "running");
        let err = qmp.execute("bogus", None).await.expect_err("error");
        assert!(err.to_string().contains("no such command"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let _keep = tokio::spawn(async move {
            let (_s, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let started = std::time::Instant::now();
        let err = Qmp::connect(&sock, Duration::from_millis(200))
            .await
            .expect_err("timeout");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(err.to_string().contains("no answer"), "{err}");
    }
}
