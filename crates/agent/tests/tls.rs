//! The agent's TLS listeners: from certificate files (standalone agents, with flag hints in the
//! errors) and from control-plane credentials, where the control plane's `ConnectClient` calls
//! the real RPC router over HTTPS with its client certificate. No VM needed.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use wrenn_agent::controlplane::HostTls;
use wrenn_agent::rpc::{self, RpcState};
use wrenn_agent::tls::{self, TlsFiles};
use wrenn_api_types::hosts::HostCredentials;
use wrenn_http::pki::Ca;
use wrenn_http::server::{self, ServerLimits};
use wrenn_http::tls::{Pem, ReloadableCert};
use wrenn_logging::LogRing;
use wrenn_protocol::connect::{Code, ConnectClient};
use wrenn_protocol::envd::rpc_path;
use wrenn_protocol::hostagent::{self as pb, SERVICE};

const DAY: Duration = Duration::from_secs(86400);

async fn serve(router: axum::Router, acceptor: tokio_rustls::TlsAcceptor) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        router,
        Some(acceptor),
        ServerLimits::default(),
        std::future::pending(),
    ));
    addr
}

fn client_cert(ca: &Ca) -> Arc<ReloadableCert> {
    let issued = ca.issue_client_cert("wrenn-cp", DAY).expect("client cert");
    Arc::new(
        ReloadableCert::load(
            &Pem::text("cert", issued.cert_pem),
            &Pem::text("key", issued.key_pem),
        )
        .expect("load"),
    )
}

/// An HTTPS GET with `config`; the status, or why the connection failed.
async fn get(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<u16, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            http::Request::get("/health")
                .header(http::header::HOST, "127.0.0.1")
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

#[tokio::test]
async fn standalone_listener_from_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("operator CA").expect("ca");
    let leaf = ca
        .issue_server_cert("agent", "127.0.0.1:50051", DAY)
        .expect("leaf");
    let files = TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        client_ca: Some(dir.path().join("ca.pem")),
    };
    std::fs::write(&files.cert, &leaf.cert_pem).expect("write");
    std::fs::write(&files.key, &leaf.key_pem).expect("write");
    std::fs::write(files.client_ca.as_ref().expect("ca"), ca.cert_pem()).expect("write");
    let (config, _cert) = tls::server_config(&files).expect("config");
    let router = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    let addr = serve(router, tokio_rustls::TlsAcceptor::from(config)).await;

    let ca_pem = Pem::text("ca", ca.cert_pem());
    let with_cert =
        wrenn_http::tls::client_config(&ca_pem, Some(client_cert(&ca))).expect("client");
    assert_eq!(get(addr, with_cert).await, Ok(200));
    let without = wrenn_http::tls::client_config(&ca_pem, None).expect("client");
    assert!(
        get(addr, without).await.is_err(),
        "--tls-client-ca makes client certificates mandatory"
    );

    // Errors name the file and the flag to fix.
    let mut broken = files.clone();
    broken.key = dir.path().join("missing-key.pem");
    let err = tls::server_config(&broken)
        .expect_err("missing key")
        .to_string();
    assert!(
        err.contains("missing-key.pem") && err.contains("--tls-key"),
        "{err}"
    );
    broken.key = files.cert.clone();
    let err = tls::server_config(&broken)
        .expect_err("cert as key")
        .to_string();
    assert!(err.contains("no PKCS#8, SEC1 or RSA private key"), "{err}");
    let mut broken = files.clone();
    broken.client_ca = Some(files.key.clone());
    let err = tls::server_config(&broken)
        .expect_err("key as CA")
        .to_string();
    assert!(err.contains("--tls-client-ca"), "{err}");
}

/// What the control plane issues at registration, for the agent at `address`.
fn credentials(ca: &Ca, address: &str) -> HostCredentials {
    let leaf = ca
        .issue_server_cert("host-1", address, DAY)
        .expect("host cert");
    HostCredentials {
        host_id: "host-1".into(),
        token: "jwt".into(),
        refresh_token: "refresh".into(),
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem,
        ca_cert_pem: ca.cert_pem().to_owned(),
    }
}

#[tokio::test]
async fn control_plane_client_calls_the_rpc_router_over_mtls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("wrenn CA").expect("ca");
    let host_tls = HostTls::new(&credentials(&ca, "127.0.0.1:50051")).expect("host tls");
    let (manager, _vmm) = wrenn_agent::testing::fake_manager(dir.path());
    let logs = LogRing::new(10);
    for line in ["one", "two", "three"] {
        logs.push(line.to_owned());
    }
    let router = rpc::router(RpcState {
        manager: manager.clone(),
        terminate: CancellationToken::new(),
        logs,
    });
    let addr = serve(router, host_tls.acceptor()).await;
    let base = format!("https://{addr}");
    let ca_pem = Pem::text("ca", ca.cert_pem());
    let config = wrenn_http::tls::client_config(&ca_pem, Some(client_cert(&ca))).expect("client");
    let cp = ConnectClient::with_tls(&base, config.clone());

    let list: pb::ListSandboxesResponse = cp
        .unary(
            &rpc_path(SERVICE, "ListSandboxes"),
            &pb::ListSandboxesRequest {},
        )
        .await
        .expect("ListSandboxes over mTLS");
    assert!(list.sandboxes.is_empty() && list.ttl_destroyed_sandbox_ids.is_empty());

    let logs: pb::GetLogsResponse = cp
        .unary_with_timeout(
            &rpc_path(SERVICE, "GetLogs"),
            &pb::GetLogsRequest { lines: 2 },
            Duration::from_secs(5),
        )
        .await
        .expect("GetLogs");
    assert_eq!(logs.lines, ["two", "three"]);
    let all: pb::GetLogsResponse = cp
        .unary(
            &rpc_path(SERVICE, "GetLogs"),
            &pb::GetLogsRequest { lines: 0 },
        )
        .await
        .expect("GetLogs default");
    assert_eq!(all.lines, ["one", "two", "three"]);

    // Streams go through the same connection pool; errors arrive as Connect errors.
    let stream = cp
        .server_stream::<_, pb::ExecStreamResponse>(
            &rpc_path(SERVICE, "ExecStream"),
            &pb::ExecStreamRequest {
                sandbox_id: "sb-missing".into(),
                cmd: "true".into(),
                ..Default::default()
            },
        )
        .await;
    let err = match stream {
        Err(e) => e,
        Ok(mut s) => s
            .message()
            .await
            .expect("an answer")
            .expect_err("the sandbox does not exist"),
    };
    assert_eq!(err.code, Code::NotFound, "{err:?}");

    // Without the control plane's client certificate, nothing gets through.
    let anonymous = wrenn_http::tls::client_config(&ca_pem, None).expect("client");
    let err = ConnectClient::with_tls(&base, anonymous)
        .unary::<_, pb::ListSandboxesResponse>(
            &rpc_path(SERVICE, "ListSandboxes"),
            &pb::ListSandboxesRequest {},
        )
        .await
        .expect_err("no client certificate");
    assert_eq!(err.code, Code::Unavailable, "{err:?}");
    // And an https client never falls back to plain HTTP.
    let err = ConnectClient::with_tls(format!("http://{addr}"), config)
        .unary::<_, pb::ListSandboxesResponse>(
            &rpc_path(SERVICE, "ListSandboxes"),
            &pb::ListSandboxesRequest {},
        )
        .await
        .expect_err("http URL");
    assert_eq!(err.code, Code::Unavailable, "{err:?}");
    manager.shutdown();
}
