//! Starts the real envd binary on a loopback port and talks to it like a client would.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wrenn_protocol::connect::{Codec, ConnectClient, Error, ResponseStream};
use wrenn_protocol::envd::process::*;
use wrenn_protocol::envd::{ENVD_VERSION, filesystem, rpc_path};

pub struct Envd {
    child: Child,
    pub port: u16,
    pub base: String,
    pub run_dir: tempfile::TempDir,
}

impl Drop for Envd {
    /// SIGTERM first: envd then ends the processes it started, so no test leaves any behind.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Envd {
    pub async fn start() -> Envd {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Envd {
        let port = free_port();
        let run_dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_envd"))
            .args(["--isnotfc", "--listen-address", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--run-dir")
            .arg(run_dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("envd binary starts");
        let base = format!("http://127.0.0.1:{port}");
        let envd = Envd {
            child,
            port,
            base,
            run_dir,
        };
        envd.wait_healthy().await;
        envd
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.base)).send().await
                && r.status().is_success()
            {
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!(v["version"], ENVD_VERSION);
                return;
            }
            assert!(Instant::now() < deadline, "envd did not become healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn client(&self) -> ConnectClient {
        ConnectClient::new(&self.base)
    }

    pub fn json_client(&self) -> ConnectClient {
        ConnectClient::new(&self.base).with_codec(Codec::Json)
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// `POST /snapshot/prepare`, as the host agent sends it before a freeze.
    pub async fn prepare_snapshot(&self) {
        let r = self
            .http()
            .post(self.url("/snapshot/prepare"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub fn cmd(cmd: &str, args: &[&str]) -> ProcessConfig {
    ProcessConfig {
        cmd: cmd.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        envs: Default::default(),
        cwd: None,
    }
}

pub fn sh(script: &str) -> ProcessConfig {
    cmd("/bin/sh", &["-c", script])
}

pub fn start_req(config: ProcessConfig) -> StartRequest {
    StartRequest {
        process: Some(config),
        pty: None,
        tag: None,
        stdin: Some(false),
    }
}

pub fn by_pid(pid: u32) -> Option<ProcessSelector> {
    Some(ProcessSelector {
        selector: Some(process_selector::Selector::Pid(pid)),
    })
}

pub fn by_tag(tag: &str) -> Option<ProcessSelector> {
    Some(ProcessSelector {
        selector: Some(process_selector::Selector::Tag(tag.into())),
    })
}

/// Everything a finished process produced.
#[derive(Debug, Default)]
pub struct Collected {
    pub pid: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub pty: Vec<u8>,
    pub end: Option<process_event::EndEvent>,
    pub order_ok: bool,
}

pub async fn start(
    client: &ConnectClient,
    req: StartRequest,
) -> Result<ResponseStream<StartResponse>, Error> {
    client
        .server_stream(&rpc_path(SERVICE, "Start"), &req)
        .await
}

/// Reads a whole event stream, checking that `start` comes first and `end` last.
pub async fn collect<M, F>(mut stream: ResponseStream<M>, event_of: F) -> Result<Collected, Error>
where
    M: wrenn_protocol::connect::Message,
    F: Fn(M) -> Option<ProcessEvent>,
{
    use process_event::{Event, data_event::Output};
    let mut c = Collected {
        order_ok: true,
        ..Default::default()
    };
    let mut first = true;
    while let Some(msg) = stream.message().await {
        let Some(ev) = event_of(msg?).and_then(|e| e.event) else {
            continue;
        };
        if c.end.is_some() {
            c.order_ok = false;
        }
        match ev {
            Event::Start(s) => {
                if !first {
                    c.order_ok = false;
                }
                c.pid = s.pid;
            }
            Event::Data(d) => match d.output {
                Some(Output::Stdout(b)) => c.stdout.extend_from_slice(&b),
                Some(Output::Stderr(b)) => c.stderr.extend_from_slice(&b),
                Some(Output::Pty(b)) => c.pty.extend_from_slice(&b),
                None => {}
            },
            Event::End(e) => c.end = Some(e),
            Event::Keepalive(_) => {}
        }
        if first && c.pid == 0 {
            c.order_ok = false;
        }
        first = false;
    }
    Ok(c)
}

pub async fn run(client: &ConnectClient, config: ProcessConfig) -> Collected {
    let stream = start(client, start_req(config)).await.unwrap();
    let c = collect(stream, |m: StartResponse| m.event).await.unwrap();
    assert!(c.order_ok, "events out of order: {c:?}");
    c
}

pub async fn fs_unary<Req, Resp>(
    client: &ConnectClient,
    method: &str,
    req: &Req,
) -> Result<Resp, Error>
where
    Req: wrenn_protocol::connect::Message,
    Resp: wrenn_protocol::connect::Message,
{
    client
        .unary(&rpc_path(filesystem::SERVICE, method), req)
        .await
}

pub async fn proc_unary<Req, Resp>(
    client: &ConnectClient,
    method: &str,
    req: &Req,
) -> Result<Resp, Error>
where
    Req: wrenn_protocol::connect::Message,
    Resp: wrenn_protocol::connect::Message,
{
    client.unary(&rpc_path(SERVICE, method), req).await
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
