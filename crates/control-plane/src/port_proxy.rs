//! The port proxy: `{port}-{capsule id}.{domain}` on the API's own listener, forwarded to the
//! capsule's host agent at `/proxy/{id}/{port}/…` (which dials the guest).
//!
//! It sits in front of the API routes and decides by `Host` alone. It uses its own HTTP client,
//! separate from the RPC clients, so user traffic never queues behind control calls (or the
//! other way round); it is mTLS to the agent like the RPCs. WebSocket and other upgrades pass
//! through; redirects that point under the agent's prefix are rewritten; bodies stream both
//! ways unbuffered. Unknown capsule → 404; a paused capsule is woken (resumed) first; one that
//! cannot run → 409; no host → 503; a port nothing listens on yet answers 502 from the agent (a
//! 5xx, so clients such as the SDK's code runner keep retrying). The proxy is unauthenticated,
//! as upstream: capsule ids are unguessable.

use crate::agents::AgentTransport;
use crate::error::{ApiError, error_response};
use crate::ids::{self, IdKind};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wrenn_api_types::events::{Actor, ActorType};
use wrenn_http::proxy::{
    forward_request_headers, location_without_prefix, relay_upgraded, requested_upgrade,
    rewrite_locations, strip_hop_by_hop,
};
use wrenn_http::server::ConnectionInfo;

/// How long a looked-up target is reused before the database is asked again.
const TARGET_TTL: Duration = Duration::from_secs(2);
/// How often proxy traffic refreshes a capsule's `last_active_at` (the agent keeps the real
/// inactivity clock; this is what the API shows).
const TOUCH_EVERY: Duration = Duration::from_secs(30);
/// Time for the agent (and the guest behind it) to start answering.
const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(120);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// A parsed proxy host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHost {
    pub port: u16,
    pub capsule_id: String,
}

/// `8000-cl-abc….domain[:port]` → port and capsule id, when `domain` matches (`None` = any).
pub fn parse_host(host: &str, domain: Option<&str>) -> Option<ProxyHost> {
    let host = strip_port(host);
    let (label, rest) = host.split_once('.')?;
    if let Some(domain) = domain
        && !rest.eq_ignore_ascii_case(strip_port(domain))
    {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let id = id.to_ascii_lowercase();
    ids::decode(IdKind::Capsule, &id)?;
    Some(ProxyHost {
        port,
        capsule_id: id,
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host;
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

#[derive(Debug, Clone)]
struct Target {
    capsule: Uuid,
    status: String,
    address: Option<String>,
}

/// The proxy's state: its client and a short cache of capsule → host address.
pub struct PortProxy {
    app: AppState,
    client: HttpsClient,
    scheme: &'static str,
    targets: Mutex<HashMap<String, (Instant, Target)>>,
    touched: Mutex<HashMap<Uuid, Instant>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for PortProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortProxy").finish_non_exhaustive()
    }
}

impl PortProxy {
    pub fn new(app: AppState) -> Arc<Self> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(Duration::from_secs(10)));
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(Duration::from_secs(20)));
        let (connector, scheme) = match app.agents.transport() {
            AgentTransport::MutualTls(config) => (
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config({
                        // The builder sets ALPN itself (http/1.1 only, as enabled below).
                        let mut config = (**config).clone();
                        config.alpn_protocols.clear();
                        config
                    })
                    .https_only()
                    .enable_http1()
                    .wrap_connector(tcp),
                "https",
            ),
            AgentTransport::Plain => (
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(
                        rustls::ClientConfig::builder_with_provider(wrenn_http::tls::provider())
                            .with_safe_default_protocol_versions()
                            .map(|b| {
                                b.with_root_certificates(rustls::RootCertStore::empty())
                                    .with_no_client_auth()
                            })
                            .unwrap_or_else(|_| unreachable_config()),
                    )
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(tcp),
                "http",
            ),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(20)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Arc::new(Self {
            app,
            client,
            scheme,
            targets: Mutex::default(),
            touched: Mutex::default(),
            stop: CancellationToken::new(),
        })
    }

    async fn target(&self, capsule_id: &str) -> Result<Target, ApiError> {
        if let Some((at, t)) = self
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(capsule_id)
            && at.elapsed() < TARGET_TTL
        {
            return Ok(t.clone());
        }
        let not_found = || ApiError::not_found(format!("capsule {capsule_id} not found"));
        let uuid = ids::decode(IdKind::Capsule, capsule_id).ok_or_else(not_found)?;
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT s.status, NULLIF(h.address, '') FROM sandboxes s
               LEFT JOIN hosts h ON h.id = s.host_id WHERE s.id = $1",
        )
        .bind(uuid)
        .fetch_optional(&self.app.db)
        .await?;
        let (status, address) = row.ok_or_else(not_found)?;
        let target = Target {
            capsule: uuid,
            status,
            address,
        };
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(capsule_id.to_string(), (Instant::now(), target.clone()));
        Ok(target)
    }

    fn forget(&self, capsule_id: &str) {
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(capsule_id);
    }

    async fn touch(&self, capsule: Uuid) {
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if touched
                .get(&capsule)
                .is_some_and(|t| t.elapsed() < TOUCH_EVERY)
            {
                return;
            }
            touched.insert(capsule, Instant::now());
        }
        crate::service::capsules::touch(&self.app, capsule).await;
    }

    async fn forward(&self, to: ProxyHost, mut req: Request) -> Result<Response, ApiError> {
        let mut target = self.target(&to.capsule_id).await?;
        match target.status.as_str() {
            "running" => {}
            "paused" | "pausing" | "resuming" | "snapshotting" => {
                // Traffic wakes a paused capsule, as any API call that needs it running does.
                let row = crate::service::capsules::load(&self.app, target.capsule).await?;
                crate::service::lifecycle::wake(&self.app, row, &proxy_actor()).await?;
                self.forget(&to.capsule_id);
                target = self.target(&to.capsule_id).await?;
            }
            other => {
                return Err(ApiError::invalid_state(format!(
                    "capsule {} is not running (status: {other})",
                    to.capsule_id
                )));
            }
        }
        let address = target
            .address
            .clone()
            .ok_or_else(|| ApiError::host_unavailable("the capsule's host is not registered"))?;
        self.touch(target.capsule).await;
        let prefix = format!("/proxy/{}/{}", to.capsule_id, to.port);
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = format!("{}://{address}{prefix}{path}", self.scheme)
            .parse()
            .map_err(|_| ApiError::invalid("the request path cannot be forwarded"))?;
        let upgrade = requested_upgrade(req.headers());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let conn = req.extensions().get::<ConnectionInfo>().copied();
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        forward_request_headers(
            &mut parts.headers,
            upgrade.as_ref(),
            &address,
            conn.as_ref(),
        );
        let outgoing = Request::from_parts(parts, body);
        let mut response = match tokio::time::timeout(
            RESPONSE_HEADER_TIMEOUT,
            self.client.request(outgoing),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.forget(&to.capsule_id);
                tracing::debug!(capsule = %to.capsule_id, error = %e, "proxy: agent unreachable");
                return Ok(error_response(
                    wrenn_api_types::ErrorCode::HostUnavailable,
                    "the capsule's host is unreachable; retry shortly",
                    None,
                ));
            }
            Err(_) => {
                return Ok(error_response(
                    wrenn_api_types::ErrorCode::AgentError,
                    "the capsule did not answer in time",
                    None,
                ));
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream = hyper::upgrade::on(&mut response);
            let resp_upgrade = response.headers().get(header::UPGRADE).cloned();
            let (mut parts, _) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, resp_upgrade.as_ref());
            // The agent counts tunnel traffic as activity; nothing to observe here.
            tokio::spawn(relay_upgraded(
                to.capsule_id.clone(),
                client_upgrade,
                upstream,
                self.stop.child_token(),
                Arc::new(|| {}),
            ));
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, None);
        rewrite_locations(&mut parts.headers, |v| location_without_prefix(v, &prefix));
        parts
            .headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-transform"));
        Ok(Response::from_parts(
            parts,
            Body::new(body.map_err(axum::Error::new)),
        ))
    }
}

/// Who wakes a capsule when its proxy URL gets traffic (the proxy is unauthenticated).
fn proxy_actor() -> Actor {
    Actor {
        kind: ActorType::System,
        id: String::new(),
        name: "port-proxy".into(),
    }
}

fn unreachable_config() -> rustls::ClientConfig {
    // Only reached if the crypto provider has no safe protocol versions, which ring always has.
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// Middleware in front of every route: proxy-shaped hosts go to the capsule, the rest to the API.
pub async fn route_by_host(
    State(proxy): State<Arc<PortProxy>>,
    req: Request,
    next: Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let domain = proxy.app.settings.proxy_domain.clone();
    match host.and_then(|h| parse_host(&h, domain.as_deref())) {
        Some(to) => match proxy.forward(to, req).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        },
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_hosts() {
        let id = ids::capsule(Uuid::new_v4());
        let host = format!("8000-{id}.127.0.0.1:8080");
        assert_eq!(
            parse_host(&host, None),
            Some(ProxyHost {
                port: 8000,
                capsule_id: id.clone()
            })
        );
        assert!(parse_host(&host, Some("127.0.0.1:8080")).is_some());
        assert!(parse_host(&host, Some("127.0.0.1")).is_some());
        assert!(parse_host(&host, Some("wrenn.dev")).is_none());
        assert_eq!(
            parse_host(
                &format!("8888-{}.WRENN.dev", id.to_uppercase()),
                Some("wrenn.dev")
            )
            .map(|h| h.capsule_id),
            Some(id.clone())
        );
        for bad in [
            "127.0.0.1:8080".to_string(),
            "localhost".into(),
            format!("0-{id}.x"),
            format!("70000-{id}.x"),
            format!("80-{id}"),
            "80-cl-nope.x".into(),
            format!("abc-{id}.x"),
            format!("-{id}.x"),
        ] {
            assert_eq!(parse_host(&bad, None), None, "{bad}");
        }
    }
}
