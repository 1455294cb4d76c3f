//! Clients for the host agents: one cached Connect client per host, speaking
//! `hostagent.v1.HostAgentService` over HTTPS with mutual TLS (the control plane presents a client
//! certificate from the internal CA; the agent's server certificate is checked against the same CA).

use crate::error::{ApiError, ApiResult};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;
use wrenn_protocol::connect::Message;
use wrenn_protocol::connect::{self, ConnectClient, ResponseStream, StreamSender};
use wrenn_protocol::envd::rpc_path;
use wrenn_protocol::hostagent::SERVICE;

/// Default time an agent has for a unary call (create boots a VM: minutes under TCG).
pub const DEFAULT_UNARY_TIMEOUT: Duration = Duration::from_secs(300);

/// How the control plane reaches agents.
#[derive(Clone, Default)]
pub enum AgentTransport {
    /// Plain HTTP; only for tests of one layer and agents on loopback without TLS.
    #[default]
    Plain,
    /// HTTPS with the control plane's client certificate.
    MutualTls(Arc<rustls::ClientConfig>),
}

impl std::fmt::Debug for AgentTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain => f.write_str("Plain"),
            Self::MutualTls(_) => f.write_str("MutualTls"),
        }
    }
}

/// One agent.
#[derive(Clone, Debug)]
pub struct AgentClient {
    rpc: ConnectClient,
    pub host_id: Uuid,
}

impl AgentClient {
    pub fn base(&self) -> &str {
        self.rpc.base()
    }

    /// A unary RPC with the default timeout.
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp, connect::Error> {
        self.rpc.unary(&rpc_path(SERVICE, method), req).await
    }

    /// A unary RPC allowed to take `timeout` (a foreground exec with its own limit).
    pub async fn call_with_timeout<Req: Message, Resp: Message>(
        &self,
        method: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, connect::Error> {
        self.rpc
            .clone()
            .with_unary_timeout(timeout)
            .unary(&rpc_path(SERVICE, method), req)
            .await
    }

    pub async fn server_stream<Req: Message, Resp: Message>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<ResponseStream<Resp>, connect::Error> {
        self.rpc
            .server_stream(&rpc_path(SERVICE, method), req)
            .await
    }

    pub async fn client_stream<Req: Message, Resp: Message>(
        &self,
        method: &str,
    ) -> Result<
        (
            StreamSender<Req>,
            tokio::task::JoinHandle<Result<Resp, connect::Error>>,
        ),
        connect::Error,
    > {
        self.rpc.client_stream(&rpc_path(SERVICE, method)).await
    }
}

/// The pool: a client per host, rebuilt when the host's address changes.
#[derive(Debug, Default)]
pub struct AgentPool {
    transport: AgentTransport,
    clients: Mutex<HashMap<Uuid, (String, AgentClient)>>,
}

impl AgentPool {
    pub fn new(transport: AgentTransport) -> Self {
        Self {
            transport,
            clients: Mutex::default(),
        }
    }

    pub fn transport(&self) -> &AgentTransport {
        &self.transport
    }

    /// The URL scheme agents are reached with.
    pub fn scheme(&self) -> &'static str {
        match self.transport {
            AgentTransport::Plain => "http",
            AgentTransport::MutualTls(_) => "https",
        }
    }

    /// A client for the host at `address` (`ip:port`).
    pub fn client_for(&self, host_id: Uuid, address: &str) -> AgentClient {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, client)) = clients.get(&host_id)
            && addr == address
        {
            return client.clone();
        }
        let base = format!("{}://{address}", self.scheme());
        let rpc = match &self.transport {
            AgentTransport::Plain => ConnectClient::new(base),
            AgentTransport::MutualTls(config) => ConnectClient::with_tls(base, config.clone()),
        }
        .with_unary_timeout(DEFAULT_UNARY_TIMEOUT);
        let client = AgentClient { rpc, host_id };
        clients.insert(host_id, (address.to_string(), client.clone()));
        client
    }

    /// A client for a host by id, looking its address up.
    pub async fn client(&self, db: &PgPool, host_id: Uuid) -> ApiResult<AgentClient> {
        let address: Option<String> =
            sqlx::query_scalar("SELECT address FROM hosts WHERE id = $1 AND address <> ''")
                .bind(host_id)
                .fetch_optional(db)
                .await?;
        let address = address.ok_or_else(|| {
            ApiError::host_unavailable("the capsule's host is not registered any more")
        })?;
        Ok(self.client_for(host_id, &address))
    }

    pub fn evict(&self, host_id: Uuid) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&host_id);
    }
}
