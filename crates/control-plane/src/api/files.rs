//! File routes: `files/write` and `files/stream/write` (multipart uploads), `files/read` and
//! `files/stream/read`, `files/list`, `files/mkdir`, `files/remove`, all `POST` under
//! `/v1/capsules/{id}/`.
//!
//! Both uploads are parsed incrementally and piped to the capsule in constant memory: the
//! `path` part must come first (the SDK and httpx put it there), then the `file` part. The file
//! is committed only once the multipart body has ended properly and the capsule has the whole
//! file, so a failed or cut-off upload leaves nothing behind. `files/write` is capped at 100 MiB
//! (413 `too_large`); `files/stream/write` has no cap and no body limit.
//!
//! Paths may be relative: envd resolves them against the capsule user's home directory.

use crate::api::extract::{ApiJson, ApiPath};
use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::service::capsule_ops::Target;
use crate::service::capsule_ops::files;
use crate::service::capsule_ops::upload::{Upload, too_large};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use wrenn_api_types::ErrorBody;
use wrenn_api_types::files::{
    BUFFERED_FILE_LIMIT, ListDirRequest, ListDirResponse, MakeDirResponse, PathRequest,
};

/// Room for the multipart framing around a `files/write` file of the largest size.
const MULTIPART_OVERHEAD: u64 = 1024 * 1024;
/// `files/write`'s body limit: the file cap plus framing.
pub const WRITE_BODY_LIMIT: u64 = BUFFERED_FILE_LIMIT + MULTIPART_OVERHEAD;
/// Longest `path` part accepted (Linux's PATH_MAX).
const MAX_PATH_PART: usize = 4096;

pub fn routes() -> Router<AppState> {
    let write_limit = usize::try_from(WRITE_BODY_LIMIT).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/capsules/{id}/files/write",
            post(write).layer(DefaultBodyLimit::max(write_limit)),
        )
        .route(
            "/capsules/{id}/files/stream/write",
            post(stream_write).layer(DefaultBodyLimit::disable()),
        )
        .route("/capsules/{id}/files/read", post(read))
        .route("/capsules/{id}/files/stream/read", post(stream_read))
        .route("/capsules/{id}/files/list", post(list))
        .route("/capsules/{id}/files/mkdir", post(mkdir))
        .route("/capsules/{id}/files/remove", post(remove))
}

/// Writes a file of at most 100 MiB (multipart: `path`, then `file`), creating missing parent
/// directories and replacing an existing file. 204 once the whole file is written.
#[utoipa::path(
    post,
    path = "/v1/capsules/{id}/files/write",
    tag = "files",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    request_body(content_type = "multipart/form-data", description = "`path` (text), then `file`"),
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "Malformed multipart body, parts out of order, or a directory in the way", body = ErrorBody),
        (status = 404, description = "No such capsule", body = ErrorBody),
        (status = 409, description = "The capsule is not running", body = ErrorBody),
        (status = 413, description = "Larger than 100 MiB: use files/stream/write", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn write(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<StatusCode> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > WRITE_BODY_LIMIT) {
        return Err(too_large(BUFFERED_FILE_LIMIT));
    }
    let mut multipart = multipart.map_err(rejected)?;
    let target = Target::resolve(&app, &auth, &id).await?;
    upload(&target, &mut multipart, Some(BUFFERED_FILE_LIMIT)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Writes a file of any size from a streamed multipart body (`path` first, then `file`), in
/// constant memory. 204 only once the capsule has the whole file; a cut-off upload keeps
/// nothing.
#[utoipa::path(
    post,
    path = "/v1/capsules/{id}/files/stream/write",
    tag = "files",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    request_body(content_type = "multipart/form-data", description = "`path` (text) first, then `file`; chunked transfer is fine"),
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "Malformed multipart body or parts out of order", body = ErrorBody),
        (status = 404, description = "No such capsule", body = ErrorBody),
        (status = 409, description = "The capsule is not running", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn stream_write(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<StatusCode> {
    let mut multipart = multipart.map_err(rejected)?;
    let target = Target::resolve(&app, &auth, &id).await?;
    upload(&target, &mut multipart, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads a file of at most 100 MiB as raw bytes.
#[utoipa::path(
    post,
    path = "/v1/capsules/{id}/files/read",
    tag = "files",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    request_body = PathRequest,
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Not a regular file", body = ErrorBody),
        (status = 404, description = "No such capsule or file", body = ErrorBody),
        (status = 409, description = "The capsule is not running", body = ErrorBody),
        (status = 413, description = "Larger than 100 MiB: use files/stream/read", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn read(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PathRequest>,
) -> ApiResult<Response> {
    files::check_path(&req.path)?;
    let target = Target::resolve(&app, &auth, &id).await?;
    let content = files::open_read(&target, &req.path)
        .await?
        .collect(&req.path, BUFFERED_FILE_LIMIT)
        .await?;
    Ok(octet_stream(Body::from(content)))
}

/// Streams a file of any size. Errors before the first byte are JSON error responses; a read
/// that fails later aborts the connection (no clean end), so a truncated file is never
/// mistaken for a whole one.
#[utoipa::path(
    post,
    path = "/v1/capsules/{id}/files/stream/read",
    tag = "files",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    request_body = PathRequest,
    responses(
        (status = 200, description = "The file's bytes, streamed", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such capsule or file", body = ErrorBody),
        (status = 409, description = "The capsule is not running", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn stream_read(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PathRequest>,
) -> ApiResult<Response> {
    files::check_path(&req.path)?;
    let target = Target::resolve(&app, &auth, &id).await?;
    let file = files::open_read(&target, &req.path).await?;
    Ok(octet_stream(Body::from_stream(file.into_stream())))
}

fn octet_stream(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

/// Lists a directory, `depth` levels deep (1 = its children). Entry names are base names.
#[utoipa::path(
    post,
    path = "/v1/capsules/{id}/files/list",
    tag = "files",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    request_body = ListDirRequest,
    responses(
        (status = 200, body = ListDirResponse),
        (status = 400, description = "Not a directory", body = ErrorBody),
        (status = 404, description = "No such capsule or directory", body = ErrorBody),
        (status = 409, description = "The capsule is not running", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ListDirRequest>,
) -> ApiResult<Json<ListDirResponse>> {
    files::check_path(&req.path)?;
    let target = Target::resolve(&app, &auth, &id).await?;
    Ok(Json(files::list(&target, &req.path, req.depth).await?))
}

/// Creates a directory and its parents. An existing directory is 409 `conflict`; an existing
/// file in the way is 409 `invalid_state`.
#[utoipa::path(
    post,
    path = "/v1/capsules/{id}/files/mkdir",
    tag = "files",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    request_body = PathRequest,
    responses(
        (status = 200, body = MakeDirResponse),
        (status = 404, description = "No such capsule", body = ErrorBody),
        (status = 409, description = "`conflict`: the directory exists; `invalid_state`: a file is in the way, or the capsule is not running", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn mkdir(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PathRequest>,
) -> ApiResult<Json<MakeDirResponse>> {
    files::check_path(&req.path)?;
    let target = Target::resolve(&app, &auth, &id).await?;
    Ok(Json(files::mkdir(&target, &req.path).await?))
}

/// Removes a file, or a directory with everything in it.
#[utoipa::path(
    post,
    path = "/v1/capsules/{id}/files/remove",
    tag = "files",
    params(("id" = String, Path, description = "Capsule id (`cl-…`)")),
    request_body = PathRequest,
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such capsule or path", body = ErrorBody),
        (status = 409, description = "The capsule is not running", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn remove(
    State(app): State<AppState>,
    auth: AuthContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PathRequest>,
) -> ApiResult<StatusCode> {
    files::check_path(&req.path)?;
    let target = Target::resolve(&app, &auth, &id).await?;
    files::remove(&target, &req.path).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn rejected(e: MultipartRejection) -> ApiError {
    ApiError::invalid(format!(
        "expected a multipart/form-data body with a boundary: {}",
        e.body_text()
    ))
}

fn malformed(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large(BUFFERED_FILE_LIMIT);
    }
    ApiError::invalid(format!("malformed multipart body: {}", e.body_text()))
}

/// The `path` part, then the `file` part piped into a new upload.
async fn upload(target: &Target, multipart: &mut Multipart, limit: Option<u64>) -> ApiResult<u64> {
    let path = path_part(multipart).await?;
    files::check_path(&path)?;
    let mut upload = Upload::start(target, &path, limit).await?;
    // On any error `upload` is dropped unfinished, which aborts it.
    pipe_file_part(multipart, &mut upload).await?;
    upload.finish().await
}

/// Where a file part's chunks go.
trait ChunkSink {
    fn push(&mut self, chunk: Bytes) -> impl Future<Output = ApiResult<()>> + Send;
}

impl ChunkSink for Upload {
    fn push(&mut self, chunk: Bytes) -> impl Future<Output = ApiResult<()>> + Send {
        Upload::push(self, chunk)
    }
}

/// The first part, which must be `path` (small; read whole).
async fn path_part(multipart: &mut Multipart) -> ApiResult<String> {
    let mut field = multipart
        .next_field()
        .await
        .map_err(malformed)?
        .ok_or_else(|| {
            ApiError::invalid("empty multipart body: send a `path` part, then `file`")
        })?;
    if field.name() != Some("path") {
        return Err(ApiError::invalid(format!(
            "the first part must be `path` (the destination), before `file`; got {:?}",
            field.name().unwrap_or_default()
        )));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        if buf.len() + chunk.len() > MAX_PATH_PART {
            return Err(ApiError::invalid(format!(
                "the path part is longer than {MAX_PATH_PART} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf.to_vec()).map_err(|_| ApiError::invalid("the path is not UTF-8"))
}

/// Pipes the `file` part (which must follow `path`) into `sink`, then checks that the body
/// ends there with its closing boundary: a body cut short is an error, never a shorter file.
async fn pipe_file_part(multipart: &mut Multipart, sink: &mut impl ChunkSink) -> ApiResult<()> {
    let mut field = multipart
        .next_field()
        .await
        .map_err(malformed)?
        .ok_or_else(|| ApiError::invalid("the `file` part is missing after `path`"))?;
    if field.name() != Some("file") {
        return Err(ApiError::invalid(format!(
            "expected the `file` part after `path`, got {:?}",
            field.name().unwrap_or_default()
        )));
    }
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        sink.push(chunk).await?;
    }
    drop(field);
    match multipart.next_field().await.map_err(malformed)? {
        None => Ok(()),
        Some(extra) => Err(ApiError::invalid(format!(
            "unexpected part {:?} after `file`",
            extra.name().unwrap_or_default()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::FromRequest;
    use axum::http::Request;
    use wrenn_api_types::ErrorCode;

    const BOUNDARY: &str = "0123456789abcdef0123456789abcdef";

    #[derive(Default)]
    struct Collected(Vec<u8>);

    impl ChunkSink for Collected {
        fn push(&mut self, chunk: Bytes) -> impl Future<Output = ApiResult<()>> + Send {
            self.0.extend_from_slice(&chunk);
            std::future::ready(Ok(()))
        }
    }

    fn part(name: &str, content: &[u8]) -> Vec<u8> {
        let mut p =
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                .into_bytes();
        p.extend_from_slice(content);
        p.extend_from_slice(b"\r\n");
        p
    }

    fn end() -> Vec<u8> {
        format!("--{BOUNDARY}--\r\n").into_bytes()
    }

    async fn multipart(body: Vec<u8>) -> Multipart {
        let req = Request::post("/")
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(body))
            .expect("request");
        Multipart::from_request(req, &()).await.expect("multipart")
    }

    /// Runs the parts through the same steps as an upload.
    async fn parse(body: Vec<u8>) -> ApiResult<(String, Vec<u8>)> {
        let mut m = multipart(body).await;
        let path = path_part(&mut m).await?;
        let mut sink = Collected::default();
        pipe_file_part(&mut m, &mut sink).await?;
        Ok((path, sink.0))
    }

    fn code(r: ApiResult<(String, Vec<u8>)>) -> Option<ErrorCode> {
        r.err().map(|e| e.code())
    }

    #[tokio::test]
    async fn path_then_file_is_read_whole() {
        let content: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
        let body = [part("path", b"/tmp/x.bin"), part("file", &content), end()].concat();
        let (path, got) = parse(body).await.expect("parsed");
        assert_eq!(path, "/tmp/x.bin");
        assert_eq!(got, content);
    }

    #[tokio::test]
    async fn parts_out_of_order_or_missing_are_refused() {
        let file_first = [part("file", b"data"), part("path", b"/tmp/x"), end()].concat();
        assert_eq!(
            code(parse(file_first).await),
            Some(ErrorCode::InvalidRequest)
        );
        let no_file = [part("path", b"/tmp/x"), end()].concat();
        assert_eq!(code(parse(no_file).await), Some(ErrorCode::InvalidRequest));
        let extra = [
            part("path", b"/tmp/x"),
            part("file", b"data"),
            part("more", b"?"),
            end(),
        ]
        .concat();
        assert_eq!(code(parse(extra).await), Some(ErrorCode::InvalidRequest));
        let long_path = [part("path", &[b'a'; MAX_PATH_PART + 1]), end()].concat();
        assert_eq!(
            code(parse(long_path).await),
            Some(ErrorCode::InvalidRequest)
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_not_a_shorter_file() {
        // Cut inside the file's data.
        let mut cut = [part("path", b"/tmp/x"), part("file", &[7u8; 10_000])].concat();
        cut.truncate(cut.len() - 5000);
        assert_eq!(code(parse(cut).await), Some(ErrorCode::InvalidRequest));
        // Cut right after the file part, before the closing boundary.
        let no_end = [part("path", b"/tmp/x"), part("file", b"data")].concat();
        assert_eq!(code(parse(no_end).await), Some(ErrorCode::InvalidRequest));
    }
}
