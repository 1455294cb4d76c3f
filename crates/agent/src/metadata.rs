//! An MMDS-compatible metadata server, for VMMs that have none (QEMU).
//!
//! envd asks Firecracker's MMDS (version 2: `PUT /latest/api/token`, then `GET /` with the token)
//! for its sandbox identity. Each sandbox namespace DNATs the guest's 169.254.169.254:80 to this
//! server on the host end of its veth; the request then arrives from the slot's namespace address,
//! which names the sandbox. So the guest runs the same code under both VMMs, and a restored guest
//! learns its new identity the same way.

use crate::vmm::GuestMetadata;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN_TTL_HEADER: &str = "x-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-metadata-token";
/// Firecracker's limit on token lifetimes.
const MAX_TTL_SECS: u64 = 21_600;
/// Bound on live tokens, so a misbehaving guest cannot grow the table without end.
const MAX_TOKENS: usize = 4096;

/// Who is asking: the manager maps a namespace's address to its sandbox's metadata.
pub trait MetadataLookup: Send + Sync + 'static {
    fn metadata_for(&self, source: IpAddr) -> Option<GuestMetadata>;
}

#[derive(Clone)]
struct Server {
    lookup: Arc<dyn MetadataLookup>,
    tokens: Arc<Mutex<HashMap<String, (IpAddr, Instant)>>>,
}

/// The router; serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(lookup: Arc<dyn MetadataLookup>) -> Router {
    let server = Server {
        lookup,
        tokens: Arc::new(Mutex::new(HashMap::new())),
    };
    Router::new()
        .route("/latest/api/token", put(issue_token))
        .route("/", get(get_all))
        .route("/{key}", get(get_key))
        .with_state(server)
}

/// Serves the metadata router on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, lookup: Arc<dyn MetadataLookup>) {
    let app = router(lookup).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metadata server stopped");
    }
}

fn text(status: StatusCode, body: &str) -> Response {
    (status, body.to_string()).into_response()
}

async fn issue_token(
    State(s): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if s.lookup.metadata_for(peer.ip()).is_none() {
        return text(StatusCode::FORBIDDEN, "not a sandbox address");
    }
    let ttl = headers
        .get(TOKEN_TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let ttl = match ttl {
        Some(t) if (1..=MAX_TTL_SECS).contains(&t) => t,
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "X-metadata-token-ttl-seconds must be between 1 and 21600",
            );
        }
    };
    let mut raw = [0u8; 24];
    if getrandom(&mut raw).is_err() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    }
    let token = hex::encode(raw);
    let now = Instant::now();
    let mut tokens = s.tokens.lock().unwrap_or_else(|p| p.into_inner());
    tokens.retain(|_, (_, exp)| *exp > now);
    if tokens.len() >= MAX_TOKENS {
        return text(StatusCode::TOO_MANY_REQUESTS, "too many tokens");
    }
    tokens.insert(token.clone(), (peer.ip(), now + Duration::from_secs(ttl)));
    token.into_response()
}

fn authorized(
    s: &Server,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<GuestMetadata, Box<Response>> {
    let token = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Box::new(text(StatusCode::UNAUTHORIZED, "missing X-metadata-token")))?;
    {
        let tokens = s.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.get(token) {
            Some((ip, exp)) if *ip == peer && *exp > Instant::now() => {}
            _ => {
                return Err(Box::new(text(
                    StatusCode::UNAUTHORIZED,
                    "invalid or expired token",
                )));
            }
        }
    }
    s.lookup
        .metadata_for(peer)
        .ok_or_else(|| Box::new(text(StatusCode::FORBIDDEN, "not a sandbox address")))
}

async fn get_all(
    State(s): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match authorized(&s, peer.ip(), &headers) {
        Ok(md) => axum::Json(md).into_response(),
        Err(r) => *r,
    }
}

async fn get_key(
    State(s): State<Server>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    let md = match authorized(&s, peer.ip(), &headers) {
        Ok(md) => md,
        Err(r) => return *r,
    };
    let value = serde_json::to_value(&md).unwrap_or_default();
    match value.get(&key) {
        Some(serde_json::Value::String(v)) => v.clone().into_response(),
        Some(v) => axum::Json(v.clone()).into_response(),
        None => text(StatusCode::NOT_FOUND, "no such key"),
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(IpAddr);
    impl MetadataLookup for Fixed {
        fn metadata_for(&self, source: IpAddr) -> Option<GuestMetadata> {
            (source == self.0).then(|| GuestMetadata {
                instance_id: "cl-abc".into(),
                env_id: "tmpl".into(),
                address: None,
            })
        }
    }

    async fn start(allowed: IpAddr) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, Arc::new(Fixed(allowed))));
        addr
    }

    #[tokio::test]
    async fn mmds_v2_flow_gives_the_sandbox_identity() {
        let addr = start("127.0.0.1".parse().expect("ip")).await;
        let http = reqwest::Client::new();
        let token = http
            .put(format!("http://{addr}/latest/api/token"))
            .header(TOKEN_TTL_HEADER, "60")
            .send()
            .await
            .expect("token")
            .text()
            .await
            .expect("body");
        let md: serde_json::Value = http
            .get(format!("http://{addr}/"))
            .header(TOKEN_HEADER, &token)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(md["instanceID"], "cl-abc");
        assert_eq!(md["envID"], "tmpl");
        let id = http
            .get(format!("http://{addr}/instanceID"))
            .header(TOKEN_HEADER, &token)
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text");
        assert_eq!(id, "cl-abc");
        let no_token = http
            .get(format!("http://{addr}/"))
            .send()
            .await
            .expect("get");
        assert_eq!(no_token.status(), 401);
        let forged = http
            .get(format!("http://{addr}/"))
            .header(TOKEN_HEADER, "forged")
            .send()
            .await
            .expect("get");
        assert_eq!(forged.status(), 401);
        let bad_ttl = http
            .put(format!("http://{addr}/latest/api/token"))
            .header(TOKEN_TTL_HEADER, "0")
            .send()
            .await
            .expect("put");
        assert_eq!(bad_ttl.status(), 400);
    }

    #[tokio::test]
    async fn unknown_sources_are_refused() {
        let addr = start("10.12.0.3".parse().expect("ip")).await;
        let resp = reqwest::Client::new()
            .put(format!("http://{addr}/latest/api/token"))
            .header(TOKEN_TTL_HEADER, "60")
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), 403);
    }
}
