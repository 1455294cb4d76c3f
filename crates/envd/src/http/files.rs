//! `GET /files` (download) and `POST /files` (upload).
//!
//! Both directions stream: a file is moved in chunks through a dedicated blocking thread and a
//! small bounded channel, so a 2 GiB file never sits in memory. An upload is written to a hidden
//! temporary file beside its destination and renamed into place only when complete, so a failed
//! or interrupted upload (including a full disk, 507) leaves nothing behind.

use crate::auth::authorize_file_access;
use crate::error::{EnvdError, Result};
use crate::state::SharedState;
use crate::user::{Account, chown, create_dir_all_owned};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Size of each chunk read from or written to disk.
const CHUNK: usize = 1024 * 1024;
/// Chunks in flight between the network and the disk thread.
const IN_FLIGHT: usize = 4;

#[derive(Debug, Deserialize)]
pub struct FileQuery {
    pub path: Option<String>,
    pub username: Option<String>,
    pub signature: Option<String>,
    pub signature_expiration: Option<i64>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct WrittenEntry {
    pub path: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

fn authorize(
    state: &SharedState,
    headers: &HeaderMap,
    q: &FileQuery,
    operation: &str,
) -> Result<Account> {
    authorize_file_access(
        state,
        headers,
        q.path.as_deref().unwrap_or_default(),
        operation,
        q.username.as_deref().unwrap_or_default(),
        q.signature.as_deref(),
        q.signature_expiration,
    )?;
    let basic = crate::auth::basic_auth_user(headers);
    state.account(q.username.as_deref().or(basic.as_deref()))
}

// ---------------------------------------------------------------------------------------------
// Download

/// A single `bytes=` range, resolved against the file length: (start, end inclusive).
fn parse_range(value: &str, len: u64) -> Option<std::result::Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // Several ranges: serve the whole file, as RFC 9110 allows.
    }
    let (a, b) = spec.split_once('-')?;
    let r = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 || len == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len - 1)
        }
        (start, "") => {
            let s: u64 = start.parse().ok()?;
            if s >= len {
                return Some(Err(()));
            }
            (s, len - 1)
        }
        (start, end) => {
            let s: u64 = start.parse().ok()?;
            let e: u64 = end.parse().ok()?;
            if s > e || s >= len {
                return Some(Err(()));
            }
            (s, e.min(len - 1))
        }
    };
    Some(Ok(r))
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|part| {
                let mut it = part.split(';');
                let coding = it.next().unwrap_or_default().trim();
                let q_zero = it.any(|p| p.trim().replace(' ', "") == "q=0");
                coding.eq_ignore_ascii_case("gzip") && !q_zero
            })
        })
}

/// Streams `len` bytes of `file` from `offset`, read on a blocking thread.
fn file_stream(
    mut file: std::fs::File,
    offset: u64,
    len: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = len;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // The client went away.
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

pub async fn download(
    State(state): State<SharedState>,
    Query(q): Query<FileQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    let account = authorize(&state, &headers, &q, "read")?;
    let raw_path = q
        .path
        .as_deref()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| EnvdError::InvalidArgument("query parameter path is required".into()))?;
    let path = account.resolve_path(raw_path)?;
    let (file, len) = {
        let p = path.clone();
        tokio::task::spawn_blocking(move || -> Result<(std::fs::File, u64)> {
            let file = std::fs::File::open(&p)
                .map_err(|e| EnvdError::io(format!("file {}", p.display()), e))?;
            let meta = file
                .metadata()
                .map_err(|e| EnvdError::io(format!("stat {}", p.display()), e))?;
            if !meta.is_file() {
                return Err(EnvdError::InvalidArgument(format!(
                    "{} is not a regular file",
                    p.display()
                )));
            }
            Ok((file, meta.len()))
        })
        .await
        .map_err(|e| EnvdError::Internal(e.to_string()))??
    };

    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mime = mime_guess::from_path(&path).first_or_octet_stream();
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, mime.as_ref())
        .header(
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{}\"", name.replace(['"', '\\'], "_")),
        )
        .header(header::VARY, "Accept-Encoding")
        .header(header::ACCEPT_RANGES, "bytes");

    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, len));
    let resp = match range {
        Some(Err(())) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response());
        }
        Some(Ok((start, end))) => {
            let n = end - start + 1;
            resp = resp
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                .header(header::CONTENT_LENGTH, n);
            resp.body(Body::from_stream(file_stream(file, start, n)))
        }
        None if accepts_gzip(&headers) => {
            let reader = tokio_util::io::StreamReader::new(file_stream(file, 0, len));
            let gz = async_compression::tokio::bufread::GzipEncoder::with_quality(
                tokio::io::BufReader::with_capacity(CHUNK, reader),
                async_compression::Level::Fastest,
            );
            resp = resp.header(header::CONTENT_ENCODING, "gzip");
            resp.body(Body::from_stream(
                tokio_util::io::ReaderStream::with_capacity(gz, CHUNK),
            ))
        }
        None => {
            resp = resp.header(header::CONTENT_LENGTH, len);
            resp.body(Body::from_stream(file_stream(file, 0, len)))
        }
    };
    resp.map_err(|e| EnvdError::Internal(format!("building the response: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Upload

/// A file being written: a hidden temporary beside the destination, filled by a blocking thread.
struct PendingFile {
    tx: mpsc::Sender<Vec<Bytes>>,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
    tmp: PathBuf,
    destination: PathBuf,
}

impl PendingFile {
    fn create(destination: &Path, account: &Account) -> Result<PendingFile> {
        let parent = destination.parent().unwrap_or(Path::new("/"));
        create_dir_all_owned(parent, account)?;
        if destination.is_dir() {
            return Err(EnvdError::InvalidArgument(format!(
                "{} is a directory",
                destination.display()
            )));
        }
        let name = destination
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let nonce: u64 = rand_nonce();
        let tmp = parent.join(format!(".{name}.wrenn-upload-{nonce:016x}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| EnvdError::io(format!("creating {}", destination.display()), e))?;
        let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(IN_FLIGHT);
        let writer = tokio::task::spawn_blocking(move || {
            let mut file = file;
            while let Some(batch) = rx.blocking_recv() {
                for chunk in batch {
                    file.write_all(&chunk)?;
                }
            }
            file.flush()
        });
        Ok(PendingFile {
            tx,
            writer,
            tmp,
            destination: destination.to_path_buf(),
        })
    }

    async fn write(&self, batch: Vec<Bytes>) -> bool {
        self.tx.send(batch).await.is_ok()
    }

    /// Completes the file: waits for the writer, sets mode and owner, renames into place.
    async fn commit(self, account: &Account) -> Result<()> {
        let PendingFile {
            tx,
            writer,
            tmp,
            destination,
        } = self;
        drop(tx);
        let written = writer
            .await
            .map_err(|e| EnvdError::Internal(format!("file writer: {e}")))
            .and_then(|r| {
                r.map_err(|e| EnvdError::io(format!("writing {}", destination.display()), e))
            });
        let finish = written.and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| EnvdError::io("setting file mode", e))?;
            chown(&tmp, account)?;
            std::fs::rename(&tmp, &destination).map_err(|e| {
                EnvdError::io(format!("moving {} into place", destination.display()), e)
            })
        });
        if finish.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        finish
    }

    /// Abandons the file: nothing is left behind.
    async fn abort(self) {
        drop(self.tx);
        let _ = self.writer.await;
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn rand_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Writes a stream of chunks to `destination`. Network chunks are handed to the disk thread in
/// batches of about [`CHUNK`] bytes (without copying them) to keep channel hand-offs rare.
async fn write_stream<S, E>(mut body: S, destination: &Path, account: &Account) -> Result<()>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let pending = {
        let (d, a) = (destination.to_path_buf(), account.clone());
        tokio::task::spawn_blocking(move || PendingFile::create(&d, &a))
            .await
            .map_err(|e| EnvdError::Internal(e.to_string()))??
    };
    let mut batch = Vec::new();
    let mut batched = 0usize;
    let outcome: Result<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| EnvdError::InvalidArgument(format!("upload interrupted: {e}")))?;
            batched += chunk.len();
            batch.push(chunk);
            if batched >= CHUNK {
                batched = 0;
                if !pending.write(std::mem::take(&mut batch)).await {
                    break; // The writer failed; commit reports why.
                }
            }
        }
        if !batch.is_empty() {
            pending.write(batch).await;
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => pending.commit(account).await,
        Err(e) => {
            pending.abort().await;
            Err(e)
        }
    }
}

fn is_gzip_body(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
}

/// Decompresses a gzip body stream on the fly.
fn gunzip_stream<S>(body: S) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin + Send
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
{
    let reader = tokio_util::io::StreamReader::new(body);
    let dec =
        async_compression::tokio::bufread::GzipDecoder::new(tokio::io::BufReader::new(reader));
    tokio_util::io::ReaderStream::with_capacity(dec, CHUNK)
}

fn written(path: &Path) -> WrittenEntry {
    WrittenEntry {
        path: path.display().to_string(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind: "file",
    }
}

pub async fn upload(
    State(state): State<SharedState>,
    Query(q): Query<FileQuery>,
    req: Request,
) -> Result<Response> {
    let headers = req.headers().clone();
    let account = authorize(&state, &headers, &q, "write")?;
    let gzip = is_gzip_body(&headers);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let query_path = q.path.as_deref().filter(|p| !p.is_empty());

    let mut done = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(req, &())
            .await
            .map_err(|e| EnvdError::InvalidArgument(format!("malformed multipart body: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| EnvdError::InvalidArgument(format!("malformed multipart body: {e}")))?
        {
            if field.name() != Some("file") {
                continue;
            }
            let target = match (query_path, field.file_name()) {
                (Some(p), _) => p.to_string(),
                (None, Some(f)) if !f.is_empty() => f.to_string(),
                _ => {
                    return Err(EnvdError::InvalidArgument(
                        "no destination: give ?path= or a filename on the part".into(),
                    ));
                }
            };
            let destination = account.resolve_path(&target)?;
            if !seen.insert(destination.clone()) {
                return Err(EnvdError::InvalidArgument(format!(
                    "two parts of one upload write {}",
                    destination.display()
                )));
            }
            let stream = field.map_err(std::io::Error::other);
            if gzip {
                write_stream(gunzip_stream(stream), &destination, &account).await?;
            } else {
                write_stream(stream, &destination, &account).await?;
            }
            done.push(written(&destination));
        }
        if done.is_empty() {
            return Err(EnvdError::InvalidArgument(
                "multipart upload holds no part named \"file\"".into(),
            ));
        }
    } else {
        let target = query_path.ok_or_else(|| {
            EnvdError::InvalidArgument("query parameter path is required for a raw upload".into())
        })?;
        let destination = account.resolve_path(target)?;
        let stream = req
            .into_body()
            .into_data_stream()
            .map_err(std::io::Error::other);
        if gzip {
            write_stream(gunzip_stream(stream), &destination, &account).await?;
        } else {
            write_stream(stream, &destination, &account).await?;
        }
        done.push(written(&destination));
    }
    let mut resp = Json(done).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Ok((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn gzip_negotiation() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.8"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        assert!(!accepts_gzip(&h));
    }
}
