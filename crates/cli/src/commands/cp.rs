//! `wrenn cp <src> <dst>`, one side `<capsule-id>:<path>`, `-` for stdin/stdout.
//!
//! Upload: `POST /v1/capsules/{id}/files/stream/write`, a chunked multipart body streamed from
//! the file (constant memory). Download: `POST /v1/capsules/{id}/files/stream/read {"path"}`,
//! streamed into a temp file next to the destination that is renamed into place only once the
//! whole body has arrived, so an interrupted copy never leaves a truncated file behind.

use crate::cli::Context;
use crate::client::transport_error;
use crate::error::{CliError, CliResult};
use crate::multipart::UploadFraming;
use crate::progress::transfer_bar;
use crate::remote_path::{Transfer, base_name};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::ReaderStream;
use wrenn_api_types::files::PathRequest;

/// Read size for uploads: large enough for throughput, small enough for a smooth progress bar.
const CHUNK_SIZE: usize = 256 * 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Source: a local file, `-` (stdin) or `<capsule-id>:<path>`.
    pub source: String,
    /// Destination: a local file or directory, `-` (stdout) or `<capsule-id>:<path>`.
    pub destination: String,
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    match Transfer::from_operands(&args.source, &args.destination)? {
        Transfer::Upload {
            source,
            capsule_id,
            path,
        } => upload(context, source.as_deref(), &capsule_id, &path).await?,
        Transfer::Download {
            capsule_id,
            path,
            destination,
        } => download(context, &capsule_id, &path, destination.as_deref()).await?,
    }
    Ok(0)
}

async fn upload(
    context: &Context,
    source: Option<&str>,
    capsule_id: &str,
    remote_path: &str,
) -> CliResult<()> {
    let framing = UploadFraming::new(remote_path)?;
    let (reader, size): (Box<dyn AsyncRead + Send + Unpin>, Option<u64>) = match source {
        None => (Box::new(tokio::io::stdin()), None),
        Some(local) => {
            let file = tokio::fs::File::open(local)
                .await
                .map_err(|error| CliError::io(format!("opening {local}"), error))?;
            let metadata = file
                .metadata()
                .await
                .map_err(|error| CliError::io(format!("reading {local}"), error))?;
            if metadata.is_dir() {
                return Err(CliError::Usage(format!(
                    "{local} is a directory; cp copies single files"
                )));
            }
            (Box::new(file), Some(metadata.len()))
        }
    };
    let bar = transfer_bar(size, &format!("{capsule_id}:{remote_path}"));
    let progress = bar.clone();
    let content = ReaderStream::with_capacity(reader, CHUNK_SIZE).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            progress.inc(chunk.len() as u64);
        }
    });
    let client = &context.client;
    client.api_key()?;
    // No timeout: a large upload legitimately takes long; the body has no Content-Length, so
    // it goes out chunked, as the route expects.
    let request = client
        .request(
            Method::POST,
            client.url(&["v1", "capsules", capsule_id, "files", "stream", "write"]),
        )
        .header(CONTENT_TYPE, framing.content_type())
        .body(reqwest::Body::wrap_stream(framing.body(content)));
    let result = client.send(request).await;
    bar.finish_and_clear();
    result.map(drop)
}

async fn download(
    context: &Context,
    capsule_id: &str,
    remote_path: &str,
    destination: Option<&str>,
) -> CliResult<()> {
    let client = &context.client;
    client.api_key()?;
    let url = client.url(&["v1", "capsules", capsule_id, "files", "stream", "read"]);
    let request = client
        .request(Method::POST, url.clone())
        .json(&PathRequest {
            path: remote_path.to_owned(),
        });
    let response = client.send(request).await?;
    let bar = transfer_bar(
        response.content_length(),
        &format!("{capsule_id}:{remote_path}"),
    );
    let url = url.to_string();
    let body = response
        .bytes_stream()
        .map(move |chunk| chunk.map_err(|error| transport_error(&url, &error)));

    let result = match destination {
        None => {
            let mut stdout = tokio::io::stdout();
            copy_stream(body, &mut stdout, &bar, "stdout").await
        }
        Some(local) => {
            let target = resolve_download_target(Path::new(local), remote_path)?;
            write_atomically(body, &target, &bar).await
        }
    };
    bar.finish_and_clear();
    result
}

/// Into an existing directory, the file keeps its remote name (as `cp` does).
pub fn resolve_download_target(local: &Path, remote_path: &str) -> CliResult<PathBuf> {
    if local.is_dir() {
        Ok(local.join(base_name(remote_path)?))
    } else {
        Ok(local.to_path_buf())
    }
}

/// Streams into a temp file in the target's directory, syncs it, gives it the permissions a
/// fresh file would get (or the old file's), then renames it over the target.
async fn write_atomically(
    body: impl Stream<Item = CliResult<Bytes>>,
    target: &Path,
    bar: &indicatif::ProgressBar,
) -> CliResult<()> {
    let directory = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let shown = target.display().to_string();
    let temp = tempfile::Builder::new()
        .prefix(".wrenn-cp-")
        .tempfile_in(&directory)
        .map_err(|error| {
            CliError::io(
                format!("creating a temp file in {}", directory.display()),
                error,
            )
        })?;
    let handle = temp
        .as_file()
        .try_clone()
        .map_err(|error| CliError::io("opening the temp file", error))?;
    let mut file = tokio::fs::File::from_std(handle);
    copy_stream(body, &mut file, bar, &shown).await?;
    file.sync_all()
        .await
        .map_err(|error| CliError::io(format!("syncing {shown}"), error))?;
    drop(file);

    let mode = match std::fs::metadata(target) {
        Ok(existing) => existing.permissions().mode() & 0o7777,
        Err(_) => 0o666 & !current_umask(),
    };
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode))
        .map_err(|error| CliError::io(format!("setting permissions of {shown}"), error))?;
    temp.persist(target)
        .map_err(|error| CliError::io(format!("moving the download to {shown}"), error.error))?;
    Ok(())
}

async fn copy_stream(
    body: impl Stream<Item = CliResult<Bytes>>,
    out: &mut (impl AsyncWrite + Unpin),
    bar: &indicatif::ProgressBar,
    shown: &str,
) -> CliResult<()> {
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        out.write_all(&chunk)
            .await
            .map_err(|error| CliError::io(format!("writing {shown}"), error))?;
        bar.inc(chunk.len() as u64);
    }
    out.flush()
        .await
        .map_err(|error| CliError::io(format!("writing {shown}"), error))
}

/// The process umask, read from `/proc/self/status` (reading it with `umask(2)` would change it
/// for a moment, under other threads). Falls back to the common 022.
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Umask:"))
                .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_into_a_directory_uses_the_remote_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            resolve_download_target(dir.path(), "/var/log/syslog").expect("target"),
            dir.path().join("syslog")
        );
        let file = dir.path().join("copy.txt");
        assert_eq!(
            resolve_download_target(&file, "/x/y").expect("target"),
            file
        );
    }

    #[tokio::test]
    async fn failed_download_leaves_no_file_and_success_renames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out.bin");
        let bar = indicatif::ProgressBar::hidden();

        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"partial")),
            Err(CliError::Remote("connection reset".into())),
        ]);
        assert!(write_atomically(broken, &target, &bar).await.is_err());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("read_dir").collect();
        assert!(
            leftovers.is_empty(),
            "no target and no temp file may remain"
        );

        let good = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ]);
        write_atomically(good, &target, &bar).await.expect("write");
        assert_eq!(std::fs::read(&target).expect("read"), b"hello world");
        let mode = std::fs::metadata(&target)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o666 & !current_umask());
    }
}
