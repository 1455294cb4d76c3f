//! Building blocks for reverse proxies over hyper: the agent's `/proxy/{id}/{port}/…` (to guest
//! ports) and the control plane's `{port}-{id}.{domain}` subdomain proxy (to the agent).
//!
//! A proxy built from these:
//! 1. takes the upgrade request out first: `let up = requested_upgrade(req.headers())` and, if
//!    some, `hyper::upgrade::on(&mut req)`;
//! 2. prepares the outgoing headers with [`forward_request_headers`] (hop-by-hop removal,
//!    `Host`, `X-Forwarded-*`), and wraps the request body in [`ObservedBody`] if it wants to
//!    see traffic;
//! 3. on a `101` answer, strips the response's hop-by-hop headers keeping its `Upgrade`
//!    ([`strip_hop_by_hop`]), returns it with an empty body and spawns [`relay_upgraded`];
//! 4. otherwise strips hop-by-hop headers, fixes redirects with [`rewrite_locations`]
//!    ([`location_under_prefix`] on the agent, [`location_without_prefix`] on the control
//!    plane) and streams the body back, through [`AbortableBody`] when it must be cut off on
//!    demand (a sandbox being paused or destroyed).
//!
//! [`https_client`] is the control plane's client for step 2 (agents over mTLS).

mod body;
mod headers;

pub use body::{AbortableBody, BoxError, ObservedBody, ObservedIo, Traffic, relay_upgraded};
pub use headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, forward_request_headers,
    location_under_prefix, location_without_prefix, requested_upgrade, rewrite_locations,
    strip_hop_by_hop,
};

use http_body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

/// An HTTPS client for proxying user traffic to agents (the control plane's subdomain proxy),
/// separate from the RPC client so user traffic never queues behind the control path:
/// HTTP/1.1 over `config` (mTLS), 30 s connect, up to 20 idle connections per agent kept for
/// 120 s (upstream's proxy transport). Requests keep the `Host` they are given.
pub fn https_client<B>(
    config: Arc<rustls::ClientConfig>,
) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(20)
        .pool_timer(TokioTimer::new())
        .build(crate::tls::https_connector(config, Duration::from_secs(30)))
}
