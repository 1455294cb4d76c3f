//! WebSocket messages. Control messages are JSON text frames tagged by `type`; PTY terminal bytes
//! travel as binary frames both ways (SDK 0.3), never inside JSON.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Client → server on `exec/stream` (exactly one `start`) and on the PTY (`start` or `connect`
/// first, then `resize`, `kill`, `pong`). A browser without an API-key header may send `auth`
/// first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMessage {
    Auth {
        token: String,
    },
    Start {
        #[serde(default)]
        cmd: Option<String>,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        cols: Option<u16>,
        #[serde(default)]
        rows: Option<u16>,
        #[serde(default)]
        envs: BTreeMap<String, String>,
        #[serde(default)]
        cwd: Option<String>,
        #[serde(default)]
        user: Option<String>,
    },
    Connect {
        tag: String,
    },
    Resize {
        cols: u16,
        rows: u16,
    },
    /// The 0.1.x PTY input form (base64 in JSON); still accepted.
    Input {
        data: String,
    },
    Kill,
    Stop,
    Pong,
    Ping,
}

/// Server → client on the exec and process streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StreamMessage {
    Start { pid: u32 },
    Stdout { data: String },
    Stderr { data: String },
    Exit { exit_code: i32 },
    Error { data: String },
}

/// Server → client control frames on the PTY (output goes in binary frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PtyMessage {
    Started { pid: u32, tag: String },
    Exit { exit_code: i32 },
    Error { data: String, fatal: bool },
    Ping,
}
