//! Uploads into a capsule over the agent's client-streaming `WriteFileStream`, in constant
//! memory, with a guarantee: the file is committed only after [`Upload::finish`].
//!
//! The agent commits whatever arrived when its request stream ends cleanly, and a dropped
//! request stream ends cleanly. So the stream is owned by a task fed through a small channel:
//! `finish` sends an explicit end; if the [`Upload`] is dropped instead (a failed or truncated
//! body, the client gone, the handler cancelled at any await), the task sends a second `meta`
//! message, which the agent refuses mid-stream, and that makes it abort the upload so envd
//! discards the partial file.

use super::Target;
use crate::error::{ApiError, ApiResult};
use bytes::Bytes;
use pb::write_file_stream_request::Content;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wrenn_api_types::ErrorCode;
use wrenn_protocol::connect::{self, StreamSender};
use wrenn_protocol::hostagent as pb;

/// Chunks queued between the request body and the agent stream (plus the agent client's own
/// small queue): all the upload data the control plane holds.
const IN_FLIGHT_CHUNKS: usize = 4;

enum Piece {
    Chunk(Bytes),
    End,
}

/// An upload in progress. Drop it to abort.
#[derive(Debug)]
pub struct Upload {
    tx: Option<mpsc::Sender<Piece>>,
    task: JoinHandle<Result<u64, connect::Error>>,
    target: Target,
    path: String,
    /// Refuse more than this many bytes (`too_large`).
    limit: Option<u64>,
    received: u64,
}

impl std::fmt::Debug for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Piece::Chunk(b) => write!(f, "Chunk({} bytes)", b.len()),
            Piece::End => f.write_str("End"),
        }
    }
}

impl Upload {
    /// Opens the agent stream for `path` (created with its parents, replaced if it exists).
    pub async fn start(target: &Target, path: &str, limit: Option<u64>) -> ApiResult<Self> {
        let (sender, answer) = target
            .agent
            .client_stream::<pb::WriteFileStreamRequest, pb::WriteFileStreamResponse>(
                "WriteFileStream",
            )
            .await
            .map_err(|e| target.agent_error(e))?;
        let meta = pb::WriteFileStreamMeta {
            sandbox_id: target.sandbox_id.clone(),
            path: path.to_string(),
        };
        let (tx, rx) = mpsc::channel(IN_FLIGHT_CHUNKS);
        let task = tokio::spawn(pump(sender, answer, meta, rx));
        Ok(Self {
            tx: Some(tx),
            task,
            target: target.clone(),
            path: path.to_string(),
            limit,
            received: 0,
        })
    }

    /// Queues the next chunk (waits while the agent is behind).
    pub async fn push(&mut self, chunk: Bytes) -> ApiResult<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.received += chunk.len() as u64;
        if let Some(limit) = self.limit
            && self.received > limit
        {
            return Err(too_large(limit));
        }
        let sent = match &self.tx {
            Some(tx) => tx.send(Piece::Chunk(chunk)).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The pump stopped: the agent refused the upload; its answer says why.
            Err(self.outcome().await.err().unwrap_or_else(|| {
                ApiError::internal("the upload stopped before its end without an error")
            }))
        }
    }

    /// Ends the upload and waits until the agent reports the whole file written.
    pub async fn finish(mut self) -> ApiResult<u64> {
        if let Some(tx) = &self.tx {
            // A failed send means the pump already stopped; its result says how.
            let _ = tx.send(Piece::End).await;
        }
        let written = self.outcome().await?;
        if written != self.received {
            return Err(ApiError::internal(format!(
                "the agent wrote {written} of {} bytes to {}",
                self.received, self.path
            )));
        }
        Ok(written)
    }

    /// Waits for the pump's result (closing our end first, so a pump still waiting for chunks
    /// aborts rather than waits forever).
    async fn outcome(&mut self) -> ApiResult<u64> {
        self.tx = None;
        match (&mut self.task).await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(e)) => Err(match e.code {
                connect::Code::NotFound => self
                    .target
                    .agent_error_about(e, &format!("the parent directory of {}", self.path)),
                _ => self.target.agent_error(e),
            }),
            Err(e) => Err(ApiError::internal(format!("upload task failed: {e}"))),
        }
    }
}

/// The `too_large` refusal of a capped upload.
pub fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!(
            "the file is larger than this route's {} MiB limit; use files/stream/write",
            limit >> 20
        ),
    )
}

/// Feeds the agent stream until [`Piece::End`] (commit) or until the channel closes without it
/// (abort). Returns the bytes the agent wrote.
async fn pump(
    sender: StreamSender<pb::WriteFileStreamRequest>,
    mut answer: JoinHandle<Result<pb::WriteFileStreamResponse, connect::Error>>,
    meta: pb::WriteFileStreamMeta,
    mut rx: mpsc::Receiver<Piece>,
) -> Result<u64, connect::Error> {
    let message = |content| pb::WriteFileStreamRequest {
        content: Some(content),
    };
    if sender
        .send(&message(Content::Meta(meta.clone())))
        .await
        .is_err()
    {
        return Err(answer_error(answer.await));
    }
    loop {
        tokio::select! {
            piece = rx.recv() => match piece {
                Some(Piece::Chunk(chunk)) => {
                    if sender.send(&message(Content::Chunk(chunk))).await.is_err() {
                        return Err(answer_error(answer.await));
                    }
                }
                Some(Piece::End) => {
                    drop(sender);
                    return match answer.await {
                        Ok(Ok(resp)) => Ok(u64::try_from(resp.bytes_written).unwrap_or_default()),
                        other => Err(answer_error(other)),
                    };
                }
                None => {
                    // Abandoned: a second meta makes the agent abort instead of commit.
                    let _ = sender.send(&message(Content::Meta(meta))).await;
                    drop(sender);
                    let _ = answer.await;
                    return Err(connect::Error::new(
                        connect::Code::Aborted,
                        "the upload was abandoned before its end",
                    ));
                }
            },
            done = &mut answer => {
                // The agent answered before the end: only a refusal can do that.
                return Err(answer_error(done));
            }
        }
    }
}

fn answer_error(
    done: Result<Result<pb::WriteFileStreamResponse, connect::Error>, tokio::task::JoinError>,
) -> connect::Error {
    match done {
        Ok(Err(e)) => e,
        Ok(Ok(_)) => connect::Error::internal("the agent accepted the upload before its end"),
        Err(e) => connect::Error::internal(format!("agent stream task failed: {e}")),
    }
}
