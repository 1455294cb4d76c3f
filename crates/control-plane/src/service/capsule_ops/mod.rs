//! Work inside a running capsule: commands and processes ([`exec`]), files ([`files`],
//! [`upload`]) and terminals ([`pty`]).
//!
//! Every operation starts from a [`Target`]: the caller's capsule, checked to be running, and a
//! client for its host agent. Agent failures are translated here, in the words of the object
//! concerned (a missing file is "file … not found", not "capsule … not found").
//!
//! Paths and working directories are passed to the agent as given. envd resolves a relative
//! path (and `~`) against the capsule user's home directory, which is also the default working
//! directory (the agent never sets another one), so a relative `cwd` such as `repo` means
//! `$HOME/repo`, as the SDK's git helper expects.

pub mod exec;
pub mod files;
pub mod pty;
pub mod upload;
pub mod utf8;

use crate::agents::AgentClient;
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::service::capsules::{self, CapsuleRow};
use crate::state::AppState;
use wrenn_protocol::connect::{self, Code};

/// A running capsule of the caller's, and the agent that hosts it.
#[derive(Debug, Clone)]
pub struct Target {
    pub row: CapsuleRow,
    pub agent: AgentClient,
    /// The capsule's public id, which is also its id on the agent.
    pub sandbox_id: String,
}

impl Target {
    /// The caller's capsule `id`: 404 if it is not theirs; a paused one is woken; 409
    /// `invalid_state` if it cannot run. Counts as activity.
    pub async fn resolve(app: &AppState, auth: &AuthContext, id: &str) -> ApiResult<Self> {
        let (row, agent) = capsules::running(app, auth, id).await?;
        capsules::touch(app, row.id).await;
        Ok(Self {
            sandbox_id: row.public_id(),
            row,
            agent,
        })
    }

    /// `capsule cl-…`, for messages.
    pub fn what(&self) -> String {
        format!("capsule {}", self.sandbox_id)
    }

    /// An agent failure with the generic mapping.
    pub fn agent_error(&self, err: connect::Error) -> ApiError {
        ApiError::from_agent(err, &self.what())
    }

    /// An agent failure where `not_found` means `missing` (a file, a process) was not found.
    /// The agent also answers `not_found` when it does not know the capsule at all; that keeps
    /// the generic wording.
    pub fn agent_error_about(&self, err: connect::Error, missing: &str) -> ApiError {
        if err.code == Code::NotFound && !is_unknown_sandbox(&err) {
            return ApiError::not_found(format!(
                "{missing} not found in {} ({})",
                self.what(),
                err.message
            ));
        }
        self.agent_error(err)
    }
}

/// The agent's "Sandbox … not found" (its capsule registry), as opposed to envd's answers,
/// which the agent prefixes with `envd:`.
fn is_unknown_sandbox(err: &connect::Error) -> bool {
    err.code == Code::NotFound && err.message.starts_with("Sandbox ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_agents_unknown_sandbox_from_envds_not_found() {
        let sandbox = connect::Error::new(Code::NotFound, "Sandbox cl-x not found");
        let file = connect::Error::new(Code::NotFound, "envd: file /x: No such file");
        assert!(is_unknown_sandbox(&sandbox));
        assert!(!is_unknown_sandbox(&file));
    }
}
