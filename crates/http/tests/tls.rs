//! The mTLS link: certificates from `pki::Ca`, `tls::server_config` behind `server::serve`, and
//! `tls::client_config` (or hand-made rustls clients for what a well-behaved client never
//! does), over real TCP handshakes.

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use wrenn_http::pki::{Ca, IssuedCert};
use wrenn_http::server::{self, ConnectionInfo, ServerLimits};
use wrenn_http::tls::{self, Pem, ReloadableCert};

const DAY: Duration = Duration::from_secs(86400);

fn server_cert(ca: &Ca, cn: &str) -> IssuedCert {
    ca.issue_server_cert(cn, "127.0.0.1:50051", DAY)
        .expect("server cert")
}

fn reloadable(cert: &IssuedCert) -> Arc<ReloadableCert> {
    Arc::new(
        ReloadableCert::load(
            &Pem::text("cert", cert.cert_pem.clone()),
            &Pem::text("key", cert.key_pem.clone()),
        )
        .expect("load"),
    )
}

fn der(cert: &IssuedCert) -> CertificateDer<'static> {
    Pem::text("cert", cert.cert_pem.clone())
        .certificates("certificate")
        .expect("der")
        .remove(0)
}

async fn start_with(config: Arc<rustls::ServerConfig>, limits: ServerLimits) -> SocketAddr {
    let router = Router::new().route(
        "/",
        get(
            |Extension(info): Extension<ConnectionInfo>| async move { format!("tls={}", info.tls) },
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        router,
        Some(TlsAcceptor::from(config)),
        limits,
        std::future::pending(),
    ));
    addr
}

async fn start(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    start_with(config, ServerLimits::default()).await
}

/// Our client configuration, without session resumption so every request shows the server's
/// current certificate.
fn our_client(ca: &Ca, client: Option<Arc<ReloadableCert>>) -> Arc<ClientConfig> {
    let config = tls::client_config(&Pem::text("ca", ca.cert_pem()), client).expect("client");
    let mut config = (*config).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A hand-made client: trusts `ca`, offers `alpn`, no client certificate.
fn bare_client(
    ca: &Ca,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in Pem::text("ca", ca.cert_pem())
        .certificates("ca")
        .expect("ca")
    {
        roots.add(cert).expect("root");
    }
    let mut config = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

struct Answer {
    status: u16,
    body: String,
    server_cert: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
}

async fn get_root(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> Result<Answer, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_owned()).expect("name");
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let server_cert = session
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no server certificate")?;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header(http::header::HOST, "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        server_cert,
        alpn,
    })
}

#[tokio::test]
async fn mutual_tls() {
    let ca = Ca::generate("wrenn test CA").expect("ca");
    let host = server_cert(&ca, "host-test");
    let config = tls::server_config(reloadable(&host), Some(&Pem::text("ca", ca.cert_pem())))
        .expect("server config");
    let addr = start(config).await;
    let cp = ca.issue_client_cert("wrenn-cp", DAY).expect("client cert");

    // The control plane's certificate: accepted, over HTTP/1.1.
    let ok = get_root(addr, our_client(&ca, Some(reloadable(&cp))), "127.0.0.1")
        .await
        .expect("mTLS request");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, "tls=true");
    assert_eq!(ok.alpn.as_deref(), Some(tls::ALPN_HTTP1));
    assert_eq!(ok.server_cert, der(&host));

    // No client certificate: refused.
    let err = get_root(addr, our_client(&ca, None), "127.0.0.1").await;
    assert!(
        err.is_err(),
        "request without a client certificate must fail"
    );

    // A client certificate from another CA: refused.
    let other = Ca::generate("some other CA").expect("other ca");
    let stranger = other.issue_client_cert("wrenn-cp", DAY).expect("stranger");
    let err = get_root(
        addr,
        our_client(&ca, Some(reloadable(&stranger))),
        "127.0.0.1",
    )
    .await;
    assert!(err.is_err(), "foreign client certificate must be refused");

    // The client checks the server too: a name the certificate does not carry is refused, and
    // so is a server whose certificate another CA signed.
    let err = get_root(addr, our_client(&ca, Some(reloadable(&cp))), "localhost").await;
    assert!(
        err.is_err(),
        "certificate for 127.0.0.1 must not pass for localhost"
    );
    let err = get_root(addr, our_client(&other, Some(reloadable(&cp))), "127.0.0.1").await;
    assert!(
        err.is_err(),
        "server certificate of an untrusted CA must be refused"
    );
}

#[tokio::test]
async fn only_tls13_and_http1() {
    let ca = Ca::generate("wrenn test CA").expect("ca");
    let host = server_cert(&ca, "host-test");
    let addr = start(tls::server_config(reloadable(&host), None).expect("config")).await;

    let tls12 = bare_client(&ca, &[], &[&rustls::version::TLS12]);
    assert!(get_root(addr, tls12, "127.0.0.1").await.is_err());
    let h2 = bare_client(&ca, &[b"h2"], &[&rustls::version::TLS13]);
    assert!(
        get_root(addr, h2, "127.0.0.1").await.is_err(),
        "h2-only clients must be refused"
    );

    // Without a client CA the server asks for no client certificate; no ALPN is fine too.
    let plain = bare_client(&ca, &[], &[&rustls::version::TLS13]);
    let ok = get_root(addr, plain, "127.0.0.1")
        .await
        .expect("one-way TLS");
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn reloaded_server_certificate_is_used_by_new_connections() {
    let ca = Ca::generate("wrenn test CA").expect("ca");
    let first = server_cert(&ca, "host-first");
    let cert = reloadable(&first);
    let ca_pem = Pem::text("ca", ca.cert_pem());
    let addr = start(tls::server_config(cert.clone(), Some(&ca_pem)).expect("config")).await;
    let cp = ca.issue_client_cert("wrenn-cp", DAY).expect("client cert");
    let client = our_client(&ca, Some(reloadable(&cp)));

    let before = get_root(addr, client.clone(), "127.0.0.1")
        .await
        .expect("before");
    assert_eq!(before.server_cert, der(&first));

    // A broken rotation (key of another certificate) is refused and changes nothing.
    let second = server_cert(&ca, "host-second");
    let err = cert
        .reload(
            &Pem::text("new cert", second.cert_pem.clone()),
            &Pem::text("old key", first.key_pem.clone()).with_hint("fix the key"),
        )
        .expect_err("mismatched key");
    let err = err.to_string();
    assert!(
        err.contains("does not fit") && err.ends_with("fix the key"),
        "{err}"
    );

    // Files work as well as strings, and are read at reload time.
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, &second.cert_pem).expect("write");
    std::fs::write(&key_file, &second.key_pem).expect("write");
    cert.reload(&Pem::file(&cert_file), &Pem::file(&key_file))
        .expect("reload");
    let after = get_root(addr, client, "127.0.0.1").await.expect("after");
    assert_eq!(after.server_cert, der(&second));
}

/// The client side of the swap: a control plane renewing its certificate in-process. The server
/// here is a bare TLS acceptor that reports the client certificate it saw.
#[tokio::test]
async fn reloaded_client_certificate_is_presented_on_new_connections() {
    let ca = Ca::generate("wrenn test CA").expect("ca");
    let host = server_cert(&ca, "host-test");
    let ca_pem = Pem::text("ca", ca.cert_pem());
    let acceptor =
        TlsAcceptor::from(tls::server_config(reloadable(&host), Some(&ca_pem)).expect("config"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first().cloned());
                let _ = seen_tx.send(cert);
                let _ = tls.write_all(b"bye").await;
                let _ = tls.shutdown().await;
            }
        }
    });

    let first = ca.issue_client_cert("wrenn-cp", DAY).expect("first");
    let identity = reloadable(&first);
    let client = TlsConnector::from(our_client(&ca, Some(identity.clone())));
    let connect = || async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut tls = client
            .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
            .await
            .expect("handshake");
        let mut buf = Vec::new();
        let _ = tls.read_to_end(&mut buf).await;
    };
    connect().await;
    assert_eq!(seen.recv().await.expect("seen"), Some(der(&first)));

    let second = ca.issue_client_cert("wrenn-cp", DAY).expect("second");
    identity
        .reload(
            &Pem::text("cert", second.cert_pem.clone()),
            &Pem::text("key", second.key_pem.clone()),
        )
        .expect("swap");
    connect().await;
    assert_eq!(seen.recv().await.expect("seen"), Some(der(&second)));
}

#[tokio::test]
async fn stalled_handshakes_are_dropped() {
    let ca = Ca::generate("wrenn test CA").expect("ca");
    let host = server_cert(&ca, "host-test");
    let limits = ServerLimits {
        tls_handshake_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let ca_pem = Pem::text("ca", ca.cert_pem());
    let addr = start_with(
        tls::server_config(reloadable(&host), Some(&ca_pem)).expect("config"),
        limits,
    )
    .await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The start of a TLS record header, then silence.
    s.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("server must give up on the handshake");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

/// The control plane's proxy client reaches an agent over mTLS, and only over https.
#[tokio::test]
async fn proxy_https_client_speaks_mtls() {
    let ca = Ca::generate("wrenn test CA").expect("ca");
    let host = server_cert(&ca, "host-test");
    let ca_pem = Pem::text("ca", ca.cert_pem());
    let addr = start(tls::server_config(reloadable(&host), Some(&ca_pem)).expect("config")).await;
    let cp = ca.issue_client_cert("wrenn-cp", DAY).expect("client cert");
    let identity = Arc::new(ReloadableCert::new(cp.certified_key().expect("key")));
    let client = wrenn_http::proxy::https_client::<Empty<Bytes>>(
        tls::client_config(&ca_pem, Some(identity)).expect("client config"),
    );
    let resp = client
        .get(format!("https://{addr}/").parse().expect("uri"))
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"tls=true");
    assert!(
        client
            .get(format!("http://{addr}/").parse().expect("uri"))
            .await
            .is_err(),
        "never plain HTTP"
    );
}
