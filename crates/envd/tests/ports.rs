//! Port forwarding: a server started inside (through envd) on loopback is reachable on the
//! forward address, and goes away with the server and during a snapshot.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

/// An address in 127/8 unlikely to be used by another test process on this machine.
fn forward_ip() -> String {
    let pid = std::process::id();
    format!("127.{}.{}.7", 100 + (pid >> 8) % 100, pid % 250)
}

fn http_get(addr: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(200))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test]
async fn a_loopback_server_inside_is_forwarded() {
    let ip = forward_ip();
    let envd = Envd::start_with(&["--forward-address", &ip]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "hello from inside").unwrap();
    let mut config = cmd(
        "python3",
        &[
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ],
    );
    config.cwd = Some(dir.path().display().to_string());
    let mut req = start_req(config);
    req.tag = Some("web".into());
    let mut stream = start(&envd.client(), req).await.unwrap();
    let _start = stream.message().await;
    let addr = format!("{ip}:{port}");

    let t = std::time::Instant::now();
    let reached = eventually(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { http_get(&addr).is_some_and(|r| r.contains("hello from inside")) }
    })
    .await;
    assert!(reached, "forwarded port never answered");
    eprintln!("forward answered after {:?}", t.elapsed());

    // Snapshot prepare stops forwarding; the first request after resume restarts it.
    envd.prepare_snapshot().await;
    assert!(http_get(&addr).is_none(), "nothing forwarded while frozen");
    let r = envd.http().get(envd.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let back = eventually(Duration::from_secs(5), || {
        let addr = addr.clone();
        async move { http_get(&addr).is_some() }
    })
    .await;
    assert!(back, "forwarding restarted after restore");

    // When the server stops, the forward goes away.
    wrenn_protocol::connect::ConnectClient::new(&envd.base)
        .unary::<_, wrenn_protocol::envd::process::SendSignalResponse>(
            "/process.Process/SendSignal",
            &wrenn_protocol::envd::process::SendSignalRequest {
                process: by_tag("web"),
                signal: wrenn_protocol::envd::process::Signal::Sigkill as i32,
            },
        )
        .await
        .unwrap();
    let gone = eventually(Duration::from_secs(5), || {
        let addr = addr.clone();
        async move { std::net::TcpStream::connect(&addr).is_err() }
    })
    .await;
    assert!(gone, "forward removed after the server exited");
}
