//! `/proxy/{sandbox_id}/{port}/{*rest}`: the reverse proxy from the control plane to ports
//! inside sandboxes.
//!
//! The control plane forwards user traffic for `https://{port}-{id}.{domain}` here; the agent
//! sends it on to `http://<slot host address>:<port>/<rest>` over the sandbox's veth. Bodies
//! stream both ways, WebSockets (any `Upgrade`) are tunnelled, redirects are rewritten to stay
//! under the prefix, and a port that is not listening yet is retried for a few seconds.
//!
//! The proxy tracks what it has in flight per sandbox, because pausing needs it: `drain` stops
//! new traffic and gives the in-flight requests a grace period, then force-closes the rest so
//! the guest holds no half-finished connections when it is snapshotted. `evict` drops
//! everything for a sandbox that is going away.
//!
//! The proxy has its own HTTP client per sandbox (HTTP/1.1, own pool) and never shares
//! connections with the agent's RPC traffic to envd: user traffic must not queue behind, or
//! starve, the control path.

mod dial;
mod tracker;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use dial::{DialError, RetryingConnector};
use http::{HeaderValue, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tracker::{Admission, ProxyClient, Registry, Toucher};
use wrenn_http::proxy::{self as relay, AbortableBody, ObservedBody};
use wrenn_http::server::ConnectionInfo;

/// The proxy's view of the sandbox manager.
pub trait ProxyTargets: Send + Sync + 'static {
    /// The address to dial for this sandbox (the slot's host address), or why not.
    fn resolve(&self, sandbox_id: &str) -> Result<IpAddr, ProxyRefusal>;
    /// Proxy traffic counts as activity for the sandbox's idle timer.
    fn touch(&self, sandbox_id: &str);
}

/// Why a sandbox cannot take proxied traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyRefusal {
    NotFound,
    /// The sandbox exists but is not running; carries its state (`paused`, `stopping`, …).
    NotRunning(String),
}

/// Proxy tuning. The defaults follow upstream's proxy transport.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// How long refused or timed-out connects to a guest port are retried before answering
    /// 502, for servers that are still starting.
    pub dial_retry_for: Duration,
    /// Limit for one connect attempt (a frozen or unreachable guest does not answer at all).
    pub connect_timeout: Duration,
    /// Idle pooled connections to a guest port are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept per guest port.
    pub pool_max_idle_per_host: usize,
    /// `Retry-After` sent with the 503 answered while a sandbox is draining (being paused).
    pub drain_retry_after: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            dial_retry_for: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 20,
            drain_retry_after: Duration::from_secs(2),
        }
    }
}

/// How long `drain` waits for force-closed traffic to unwind before it returns.
const FORCE_CLOSE_SETTLE: Duration = Duration::from_secs(1);

/// The port proxy. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct PortProxy {
    inner: Arc<Inner>,
}

struct Inner {
    targets: Arc<dyn ProxyTargets>,
    options: ProxyOptions,
    sandboxes: Registry,
}

impl std::fmt::Debug for PortProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortProxy")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl PortProxy {
    pub fn new(targets: Arc<dyn ProxyTargets>, options: ProxyOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                targets,
                options,
                sandboxes: Registry::default(),
            }),
        }
    }

    /// Routes `/proxy/{id}/{port}`, `/proxy/{id}/{port}/` and `/proxy/{id}/{port}/{*rest}`
    /// for every method. Merge it into the agent's router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/proxy/{id}/{port}", any(handle))
            .route("/proxy/{id}/{port}/", any(handle))
            .route("/proxy/{id}/{port}/{*rest}", any(handle))
            .with_state(self.clone())
    }

    /// Forgets a sandbox that is destroyed or paused: closes its pooled connections and aborts
    /// its in-flight requests and tunnels. Traffic arriving later starts afresh (and is refused
    /// by [`ProxyTargets::resolve`] unless the sandbox runs again).
    pub fn evict(&self, sandbox_id: &str) {
        if let Some(sandbox) = self.inner.sandboxes.remove(sandbox_id) {
            let in_flight = sandbox.in_flight();
            if in_flight > 0 {
                tracing::info!(sandbox = %sandbox_id, in_flight, "aborting proxied traffic");
            }
            sandbox.force_close();
        }
    }

    /// Prepares a sandbox for pausing: new requests get 503 with `Retry-After`, in-flight ones
    /// get up to `grace` to finish, the rest are force-closed. Pooled idle connections are
    /// closed as well. Returns how many requests or tunnels were force-closed. The sandbox
    /// stays draining until [`PortProxy::undrain`] or [`PortProxy::evict`].
    pub async fn drain(&self, sandbox_id: &str, grace: Duration) -> usize {
        let sandbox = self.inner.sandboxes.get_or_insert(sandbox_id);
        sandbox.set_draining(true);
        if sandbox.wait_idle(grace).await {
            return 0;
        }
        let remaining = sandbox.in_flight();
        if remaining == 0 {
            return 0;
        }
        tracing::info!(
            sandbox = %sandbox_id,
            remaining,
            ?grace,
            "drain grace over; force-closing proxied traffic"
        );
        sandbox.force_close();
        if !sandbox.wait_idle(FORCE_CLOSE_SETTLE).await {
            tracing::warn!(
                sandbox = %sandbox_id,
                left = sandbox.in_flight(),
                "force-closed proxied traffic has not unwound yet"
            );
        }
        remaining
    }

    /// Re-opens a drained sandbox (its pause failed and it keeps running).
    pub fn undrain(&self, sandbox_id: &str) {
        if let Some(sandbox) = self.inner.sandboxes.get(sandbox_id) {
            sandbox.set_draining(false);
        }
    }

    /// Requests and tunnels currently proxied to a sandbox.
    pub fn in_flight(&self, sandbox_id: &str) -> usize {
        self.inner
            .sandboxes
            .get(sandbox_id)
            .map_or(0, |s| s.in_flight())
    }

    fn new_client(&self) -> ProxyClient {
        let options = &self.inner.options;
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            // The proxy sets Host itself.
            .set_host(false)
            .build(RetryingConnector {
                connect_timeout: options.connect_timeout,
                retry_for: options.dial_retry_for,
            })
    }
}

/// The parts of `/proxy/{id}/{port}/{rest}`, taken from the raw path so percent-encoding and
/// trailing slashes reach the guest exactly as the client sent them.
#[derive(Debug, PartialEq, Eq)]
struct ProxyPath<'a> {
    id: &'a str,
    port: &'a str,
    /// Always starts with `/`.
    rest: &'a str,
}

fn split_path(path: &str) -> Option<ProxyPath<'_>> {
    let after = path.strip_prefix("/proxy/")?;
    let (id, after) = after.split_once('/')?;
    let (port, rest) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    (!id.is_empty()).then_some(ProxyPath { id, port, rest })
}

fn parse_port(port: &str) -> Option<u16> {
    // `u16::from_str` accepts a leading `+`; a port is digits only.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse::<u16>().ok().filter(|p| *p != 0)
}

async fn handle(State(proxy): State<PortProxy>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let Some(parts) = split_path(&path) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "expected /proxy/{sandbox_id}/{port}/{path}".to_owned(),
        );
    };
    let Some(port) = parse_port(parts.port) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("port must be 1-65535, got {:?}", parts.port),
        );
    };
    let id = parts.id;
    let ip = match proxy.inner.targets.resolve(id) {
        Ok(ip) => ip,
        Err(refusal) => return refusal_response(id, refusal),
    };
    let Some(admission) = proxy.inner.sandboxes.admit(id, || proxy.new_client()) else {
        return draining_response(id, proxy.inner.options.drain_retry_after);
    };
    let toucher = Toucher::start(proxy.inner.targets.clone(), id);
    let target = SocketAddr::new(ip, port);
    forward(req, id, parts.rest, target, admission, toucher).await
}

async fn forward(
    mut req: Request,
    id: &str,
    rest: &str,
    target: SocketAddr,
    admission: Admission,
    toucher: Arc<Toucher>,
) -> Response {
    let Admission {
        client,
        cancel,
        in_flight,
    } = admission;
    let uri = match req.uri().query() {
        Some(q) => format!("http://{target}{rest}?{q}"),
        None => format!("http://{target}{rest}"),
    };
    let uri: http::Uri = match uri.parse() {
        Ok(uri) => uri,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("cannot build the target URL: {e}"),
            );
        }
    };
    let upgrade = relay::requested_upgrade(req.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let conn_info = req.extensions().get::<ConnectionInfo>().copied();
    let (parts, body) = req.into_parts();
    let mut out = http::Request::new(axum::body::Body::new(ObservedBody::new(
        body,
        toucher.clone(),
    )));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = parts.headers;
    relay::forward_request_headers(
        out.headers_mut(),
        upgrade.as_ref(),
        &target.to_string(),
        conn_info.as_ref(),
    );

    let sent = tokio::select! {
        r = client.request(out) => r,
        () = cancel.cancelled() => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("sandbox {id} stopped while the request was in flight"),
            );
        }
    };
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return upstream_error(id, target.port(), &e),
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return error_response(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!(
                    "port {} in sandbox {id} switched protocols without being asked",
                    target.port()
                ),
            );
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let tunnel_id = id.to_owned();
        tokio::spawn(async move {
            // Counted as in flight until the tunnel closes.
            let _in_flight = in_flight;
            relay::relay_upgraded(tunnel_id, client_upgrade, upstream_upgrade, cancel, toucher)
                .await;
        });
        let (mut parts, _) = response.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        relay::strip_hop_by_hop(&mut parts.headers, protocol.as_ref());
        return Response::from_parts(parts, axum::body::Body::empty());
    }

    let (mut parts, body) = response.into_parts();
    relay::strip_hop_by_hop(&mut parts.headers, None);
    let prefix = format!("/proxy/{id}/{}", target.port());
    relay::rewrite_locations(&mut parts.headers, |value| {
        relay::location_under_prefix(value, target, &prefix)
    });
    let body = AbortableBody::new(body, in_flight, cancel, toucher, id);
    Response::from_parts(parts, axum::body::Body::new(body))
}

/// The JSON error shape the control plane passes on: `{"error":{"code":…,"message":…}}`.
fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}

/// The one place refusals become HTTP answers (auto-wake of paused sandboxes would hook in
/// here).
fn refusal_response(id: &str, refusal: ProxyRefusal) -> Response {
    match refusal {
        ProxyRefusal::NotFound => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("sandbox {id} not found"),
        ),
        ProxyRefusal::NotRunning(state) => error_response(
            StatusCode::CONFLICT,
            "invalid_state",
            format!("sandbox {id} is {state}, not running"),
        ),
    }
}

fn draining_response(id: &str, retry_after: Duration) -> Response {
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("sandbox {id} is being paused; retry shortly"),
    );
    let secs = retry_after.as_secs().max(1);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

fn upstream_error(id: &str, port: u16, e: &hyper_util::client::legacy::Error) -> Response {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(dial) = err.downcast_ref::<DialError>() {
            let message = if dial.refused() {
                format!("nothing is listening on port {port} in sandbox {id}")
            } else {
                format!(
                    "cannot connect to port {port} in sandbox {id}: {}",
                    dial.source
                )
            };
            tracing::debug!(sandbox = %id, port, error = %dial, "guest port unreachable");
            return error_response(StatusCode::BAD_GATEWAY, "port_unreachable", message);
        }
        source = err.source();
    }
    let detail = crate::error::error_chain(e);
    tracing::debug!(sandbox = %id, port, error = %detail, "proxied request failed");
    error_response(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        format!("proxying to port {port} in sandbox {id} failed: {detail}"),
    )
}

#[async_trait::async_trait]
impl crate::sandbox::TrafficGate for PortProxy {
    async fn drain(&self, sandbox_id: &str, grace: Duration) -> usize {
        PortProxy::drain(self, sandbox_id, grace).await
    }

    fn undrain(&self, sandbox_id: &str) {
        PortProxy::undrain(self, sandbox_id);
    }

    fn evict(&self, sandbox_id: &str) {
        PortProxy::evict(self, sandbox_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        fn p(s: &str) -> Option<(&str, &str, &str)> {
            split_path(s).map(|p| (p.id, p.port, p.rest))
        }
        assert_eq!(p("/proxy/x/8080"), Some(("x", "8080", "/")));
        assert_eq!(p("/proxy/x/8080/"), Some(("x", "8080", "/")));
        assert_eq!(p("/proxy/x/8080/a/"), Some(("x", "8080", "/a/")));
        assert_eq!(
            p("/proxy/x/8080/a%2Fb//c"),
            Some(("x", "8080", "/a%2Fb//c"))
        );
        assert_eq!(p("/proxy/x"), None);
        assert_eq!(p("/other/x/1"), None);
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080"), Some(8080));
        assert_eq!(parse_port("65535"), Some(65535));
        assert_eq!(parse_port("0"), None);
        assert_eq!(parse_port("65536"), None);
        assert_eq!(parse_port("+80"), None);
        assert_eq!(parse_port("http"), None);
        assert_eq!(parse_port(""), None);
    }
}
