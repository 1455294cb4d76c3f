//! `/health`, `/envs`, `/metrics`, `/init` defaults, and the snapshot prepare/restore path.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

#[tokio::test]
async fn health_envs_and_metrics() {
    let envd = Envd::start().await;
    let http = envd.http();
    let r = http.get(envd.url("/health")).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    let envs: serde_json::Value = http
        .get(envd.url("/envs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(envs["WRENN_SANDBOX"], "false");
    let m: serde_json::Value = http
        .get(envd.url("/metrics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for key in [
        "ts",
        "cpu_count",
        "cpu_used_pct",
        "mem_total_mib",
        "mem_used_mib",
        "mem_total",
        "mem_used",
        "disk_used",
        "disk_total",
    ] {
        assert!(m.get(key).is_some(), "metrics lack {key}: {m}");
    }
    assert!(m["mem_total"].as_u64().unwrap() > 0);
    let r = http.get(envd.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .request(reqwest::Method::OPTIONS, envd.url("/files"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn init_sets_defaults_for_later_processes() {
    let envd = Envd::start().await;
    let http = envd.http();
    let work = tempfile::tempdir().unwrap();
    let work_path = std::fs::canonicalize(work.path()).unwrap();
    let user = if is_root() { "nobody" } else { "root" };
    let body = serde_json::json!({
        "envVars": { "GREETING": "hi there" },
        "defaultWorkdir": work_path.display().to_string(),
        "defaultUser": if is_root() { Some(user) } else { None },
        "timestamp": "2030-01-01T00:00:00.000000001Z",
    });
    let r = http
        .post(envd.url("/init"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let c = run(&envd.client(), sh("echo \"$GREETING\"; pwd; id -un")).await;
    let out = String::from_utf8(c.stdout).unwrap();
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines[0], "hi there");
    assert_eq!(lines[1], work_path.display().to_string());
    if is_root() {
        assert_eq!(lines[2], "nobody");
    }
    let envs: serde_json::Value = http
        .get(envd.url("/envs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(envs["GREETING"], "hi there");

    // An older /init changes nothing.
    let stale = serde_json::json!({ "envVars": { "GREETING": "stale" }, "timestamp": "2029-01-01T00:00:00Z" });
    assert_eq!(
        http.post(envd.url("/init"))
            .json(&stale)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let envs: serde_json::Value = http
        .get(envd.url("/envs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(envs["GREETING"], "hi there");

    // Bad input is refused and changes nothing.
    for bad in [
        serde_json::json!({ "defaultUser": "ghost-user-wrenn" }),
        serde_json::json!({ "defaultWorkdir": "/no/such/dir" }),
        serde_json::json!({ "timestamp": "not a time" }),
    ] {
        let r = http
            .post(envd.url("/init"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = http
        .post(envd.url("/init"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// Sends one keep-alive request on a raw socket and leaves the connection open.
fn raw_keepalive_request(port: u16) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s
}

fn is_closed(s: &mut std::net::TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

#[tokio::test]
async fn snapshot_prepare_closes_idle_connections_and_restore_closes_old_ones() {
    let envd = Envd::start().await;
    let mut idle_before = raw_keepalive_request(envd.port);

    // An open exec stream is a connection that is busy at prepare time.
    let mut busy = start(&envd.client(), start_req(sh("sleep 30")))
        .await
        .unwrap();
    let _ = busy.message().await;

    envd.prepare_snapshot().await;
    assert!(
        is_closed(&mut idle_before),
        "idle connection closed before the freeze"
    );

    // After "resume", the first request runs the restore path: the busy pre-snapshot
    // connection (its peer would be gone after a real resume) is closed; the new one is served.
    let fresh = reqwest::Client::new();
    let r = fresh.get(envd.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match busy.message().await {
                Some(Ok(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "pre-snapshot stream closed on restore");

    // Keep-alive works again for connections made after the restore.
    let mut after = raw_keepalive_request(envd.port);
    after
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = after.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn snapshot_prepare_takes_a_page_cache_option_and_rejects_bad_values() {
    let envd = Envd::start().await;
    let http = envd.http();
    for query in ["?drop_page_cache=false", "?drop_page_cache=true"] {
        let r = http
            .post(envd.url(&format!("/snapshot/prepare{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{query}");
    }
    let r = http
        .post(envd.url("/snapshot/prepare?drop_page_cache=maybe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body.to_string().contains("drop_page_cache"),
        "the error names the parameter: {body}"
    );
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let envd = Envd::start().await;
    let client = wrenn_protocol::connect::ConnectClient::new_h2c(&envd.base);
    let c = run(&client, sh("echo over h2")).await;
    assert_eq!(c.stdout, b"over h2\n");
}

#[tokio::test]
async fn sigterm_shuts_envd_down() {
    let mut envd = Envd::start().await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(envd.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let ok = eventually(Duration::from_secs(5), || async {
        reqwest::Client::new()
            .get(format!("{}/health", envd.base))
            .send()
            .await
            .is_err()
    })
    .await;
    assert!(ok, "envd stopped serving after SIGTERM");
    let _ = &mut envd;
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let port = free_port();
    let run_dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_envd"))
        .args([
            "--isnotfc",
            "--listen-address",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg("--run-dir")
        .arg(run_dir.path())
        .env("WRENN_ENVD_HEADER_READ_TIMEOUT_MS", "500")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let ok = eventually(Duration::from_secs(10), || async move {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(ok);
    // A peer that connects and says nothing.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t = std::time::Instant::now();
    assert!(is_closed(&mut silent));
    assert!(t.elapsed() < Duration::from_secs(4));
    // A keep-alive connection left idle after a request.
    let mut idle = raw_keepalive_request(port);
    let t = std::time::Instant::now();
    assert!(is_closed(&mut idle));
    assert!(t.elapsed() < Duration::from_secs(4));
    let _ = child.kill();
    let _ = child.wait();
}
