//! The agent's mTLS listener: `tls::server_config` + `server::serve`, exercised with a real
//! rustls client and certificates made on the fly.

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use wrenn_agent::server::{self, ConnectionInfo, ServerLimits};
use wrenn_agent::tls::{self, ReloadableCert, TlsFiles};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: CertificateDer<'static>,
    pem: String,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-sign");
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        params,
        key,
    }
}

struct Leaf {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    key_der: Vec<u8>,
}

fn leaf(ca: &Ca, name: &str, client: bool) -> Leaf {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    if client {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    } else {
        params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    }
    let key = KeyPair::generate().expect("key");
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).expect("sign");
    Leaf {
        der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}

fn write_files(dir: &Path, tag: &str, server: &Leaf, client_ca: Option<&Ca>) -> TlsFiles {
    let cert = dir.join(format!("{tag}-cert.pem"));
    let key = dir.join(format!("{tag}-key.pem"));
    std::fs::write(&cert, &server.cert_pem).expect("write cert");
    std::fs::write(&key, &server.key_pem).expect("write key");
    let client_ca = client_ca.map(|ca| {
        let path = dir.join(format!("{tag}-ca.pem"));
        std::fs::write(&path, &ca.pem).expect("write ca");
        path
    });
    TlsFiles {
        cert,
        key,
        client_ca,
    }
}

async fn start(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    start_with(config, ServerLimits::default()).await
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

fn client_config(trust: &Ca, client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.der.clone()).expect("root");
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every connection does a full handshake: a resumed session reports the certificate of the
    // session it resumes, which would hide a reload.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

struct Answer {
    status: u16,
    body: String,
    server_cert: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
}

async fn get_root(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Answer, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
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
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca("wrenn test CA");
    let server_leaf = leaf(&ca, "host-test", false);
    let client_leaf = leaf(&ca, "wrenn-cp", true);
    let files = write_files(dir.path(), "a", &server_leaf, Some(&ca));
    let addr = start(tls::server_config(&files).expect("server config")).await;

    // The control plane's certificate: accepted, over HTTP/1.1.
    let ok = get_root(addr, client_config(&ca, Some(&client_leaf), &[b"http/1.1"]))
        .await
        .expect("mTLS request");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, "tls=true");
    assert_eq!(ok.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(ok.server_cert, server_leaf.der);

    // No ALPN at all is fine too (plain HTTP/1.1 clients).
    let ok = get_root(addr, client_config(&ca, Some(&client_leaf), &[]))
        .await
        .expect("request without ALPN");
    assert_eq!(ok.status, 200);

    // No client certificate: refused.
    let err = get_root(addr, client_config(&ca, None, &[b"http/1.1"])).await;
    assert!(
        err.is_err(),
        "request without a client certificate must fail"
    );

    // A client certificate from another CA: refused.
    let other = new_ca("some other CA");
    let stranger = leaf(&other, "wrenn-cp", true);
    let err = get_root(addr, client_config(&ca, Some(&stranger), &[b"http/1.1"])).await;
    assert!(err.is_err(), "foreign client certificate must be refused");

    // HTTP/2 only: no common protocol.
    let err = get_root(addr, client_config(&ca, Some(&client_leaf), &[b"h2"])).await;
    assert!(err.is_err(), "h2-only clients must be refused");
}

#[tokio::test]
async fn tls12_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca("wrenn test CA");
    let server_leaf = leaf(&ca, "host-test", false);
    let files = write_files(dir.path(), "a", &server_leaf, None);
    let addr = start(tls::server_config(&files).expect("server config")).await;

    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).expect("root");
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    assert!(get_root(addr, Arc::new(config)).await.is_err());

    // Without a client CA the server does not ask for a client certificate.
    let ok = get_root(addr, client_config(&ca, None, &[b"http/1.1"]))
        .await
        .expect("one-way TLS");
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn reloaded_certificate_is_used_by_new_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca("wrenn test CA");
    let first = leaf(&ca, "host-first", false);
    let client_leaf = leaf(&ca, "wrenn-cp", true);
    let files = write_files(dir.path(), "first", &first, Some(&ca));
    let cert = Arc::new(ReloadableCert::load(&files).expect("load"));
    let config = tls::server_config_with_cert(&files, cert.clone()).expect("config");
    let addr = start(config).await;
    let client = client_config(&ca, Some(&client_leaf), &[b"http/1.1"]);

    let before = get_root(addr, client.clone()).await.expect("before");
    assert_eq!(before.server_cert, first.der);

    // A broken rotation (key of another certificate) is refused and changes nothing.
    let second = leaf(&ca, "host-second", false);
    let mismatched = TlsFiles {
        cert: write_files(dir.path(), "second", &second, None).cert,
        key: files.key.clone(),
        client_ca: None,
    };
    let err = cert.reload(&mismatched).expect_err("mismatched key");
    assert!(err.to_string().contains("does not fit"), "{err}");

    let second_files = write_files(dir.path(), "second", &second, None);
    cert.reload(&second_files).expect("reload");
    let after = get_root(addr, client).await.expect("after");
    assert_eq!(after.server_cert, second.der);
}

#[test]
fn missing_key_file_names_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca("wrenn test CA");
    let server_leaf = leaf(&ca, "host-test", false);
    let mut files = write_files(dir.path(), "a", &server_leaf, None);
    files.key = dir.path().join("missing-key.pem");
    let err = tls::server_config(&files)
        .expect_err("missing key")
        .to_string();
    assert!(err.contains("missing-key.pem"), "{err}");
    assert!(err.contains("--tls-key"), "{err}");

    // A key file holding no key (here: the certificate) is called out as such.
    files.key = files.cert.clone();
    let err = tls::server_config(&files)
        .expect_err("cert as key")
        .to_string();
    assert!(err.contains("no PKCS#8, SEC1 or RSA private key"), "{err}");
}

#[tokio::test]
async fn stalled_handshakes_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca("wrenn test CA");
    let server_leaf = leaf(&ca, "host-test", false);
    let files = write_files(dir.path(), "a", &server_leaf, Some(&ca));
    let limits = ServerLimits {
        tls_handshake_timeout: std::time::Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let addr = start_with(tls::server_config(&files).expect("config"), limits).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The start of a TLS record header, then silence.
    s.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(std::time::Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("server must give up on the handshake");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
}
