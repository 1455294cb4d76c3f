//! A stand-in host agent for tests: serves the Connect methods a test routes, and registers
//! itself as an online host so the control plane's agent pool reaches it.
#![allow(dead_code)]

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::post;
use sqlx::PgPool;
use std::future::Future;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wrenn_protocol::connect::server::{BoxBody, CallInfo};
use wrenn_protocol::connect::{Error, Message};

/// A running fake agent; stops when dropped.
pub struct FakeAgent {
    pub addr: SocketAddr,
    pub host_id: Uuid,
    stop: CancellationToken,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Adds a unary `hostagent.v1.HostAgentService/{method}` handler to `router`.
pub fn unary<Req, Resp, F, Fut>(router: Router, method: &str, handler: F) -> Router
where
    Req: Message + 'static,
    Resp: Message + 'static,
    F: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, Error>> + Send + 'static,
{
    router.route(
        &format!("/hostagent.v1.HostAgentService/{method}"),
        post(move |req: Request| {
            let handler = handler.clone();
            async move {
                let resp: Response<BoxBody> =
                    wrenn_protocol::connect::server::unary(req, move |_: CallInfo, msg: Req| {
                        handler(msg)
                    })
                    .await;
                resp
            }
        }),
    )
}

impl FakeAgent {
    /// Serves `router` on a loopback port and records an online host at that address.
    pub async fn start(db: &PgPool, router: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .expect("serve");
        });
        let host_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO hosts (id, address, status, last_heartbeat_at) VALUES ($1, $2, 'online', now())",
        )
        .bind(host_id)
        .bind(addr.to_string())
        .execute(db)
        .await
        .expect("host row");
        Self {
            addr,
            host_id,
            stop,
        }
    }
}
