//! Server side of the protocol, framework-agnostic: each helper takes an `http::Request` and a
//! handler, and returns the `http::Response` (axum serves these directly).
//!
//! Response streams are pulled by hyper only as fast as the client reads, so a handler that feeds
//! its stream from a bounded channel gets backpressure for free.

use super::envelope::{FLAG_END_STREAM, encode_envelope, gunzip};
use super::{
    Code, Codec, EnvelopeDecoder, Error, MAX_MESSAGE_BYTES, Message, STREAM_ENCODING_HEADER,
    TIMEOUT_HEADER,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The body type of every response these helpers build.
pub type BoxBody = UnsyncBoxBody<Bytes, Infallible>;

/// The error type request bodies must convert into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler learns of the call besides its message.
#[derive(Debug, Clone)]
pub struct CallInfo {
    pub headers: HeaderMap,
    pub codec: Codec,
    /// The client's deadline (`Connect-Timeout-Ms`), if it sent one.
    pub timeout: Option<Duration>,
}

/// A stream of decoded request messages (client streaming).
pub type RequestStream<M> = Pin<Box<dyn Stream<Item = Result<M, Error>> + Send>>;

/// A stream of response messages (server streaming).
pub type ResponseStream<M> = Pin<Box<dyn Stream<Item = Result<M, Error>> + Send>>;

fn negotiate(headers: &HeaderMap, streaming: bool) -> Result<CallInfo, Box<Response<BoxBody>>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match Codec::from_content_type(content_type) {
        Some((codec, s)) if s == streaming => {
            let timeout = headers
                .get(TIMEOUT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis);
            Ok(CallInfo {
                headers: headers.clone(),
                codec,
                timeout,
            })
        }
        _ => {
            let expected = if streaming {
                "application/connect+proto or application/connect+json"
            } else {
                "application/proto or application/json"
            };
            let mut resp = Response::new(full(Bytes::from(format!(
                "unsupported content-type {content_type:?}; this method takes {expected}"
            ))));
            *resp.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
            resp.headers_mut().insert(
                http::HeaderName::from_static("accept-post"),
                HeaderValue::from_static(if streaming {
                    "application/connect+proto, application/connect+json"
                } else {
                    "application/proto, application/json"
                }),
            );
            Err(Box::new(resp))
        }
    }
}

fn full(data: Bytes) -> BoxBody {
    Full::new(data)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn is_gzip(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
}

/// The response of a failed unary call: status from the code, JSON error body.
pub fn unary_error(err: &Error) -> Response<BoxBody> {
    let mut resp = Response::new(full(Bytes::from(err.to_json())));
    *resp.status_mut() = err.code.http_status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn read_limited<B>(body: B) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match http_body_util::Limited::new(body, MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Error::resource_exhausted(format!(
                "request exceeds {MAX_MESSAGE_BYTES} bytes"
            )))
        }
        Err(e) => Err(Error::new(Code::Canceled, format!("reading request: {e}"))),
    }
}

/// Serves a unary call.
pub async fn unary<B, Req, Resp, F, Fut>(req: Request<B>, handler: F) -> Response<BoxBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    Req: Message,
    Resp: Message,
    F: FnOnce(CallInfo, Req) -> Fut,
    Fut: Future<Output = Result<Resp, Error>>,
{
    let (parts, body) = req.into_parts();
    let info = match negotiate(&parts.headers, false) {
        Ok(i) => i,
        Err(resp) => return *resp,
    };
    let codec = info.codec;
    let result = async {
        let mut raw = read_limited(body).await?;
        if is_gzip(&parts.headers, header::CONTENT_ENCODING) {
            raw = gunzip(&raw)?;
        }
        let msg: Req = codec.decode(&raw)?;
        match info.timeout {
            Some(t) => tokio::time::timeout(t, handler(info, msg))
                .await
                .unwrap_or_else(|_| Err(Error::new(Code::DeadlineExceeded, "deadline exceeded"))),
            None => handler(info, msg).await,
        }
    }
    .await;
    match result {
        Ok(msg) => {
            let mut resp = Response::new(full(codec.encode(&msg)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(codec.content_type(false)),
            );
            resp
        }
        Err(e) => unary_error(&e),
    }
}

/// The end-of-stream envelope for `err` (or success).
pub fn end_stream_envelope(err: Option<&Error>) -> Bytes {
    let body = match err {
        None => b"{}".to_vec(),
        Some(e) => serde_json::to_vec(&serde_json::json!({ "error": e }))
            .unwrap_or_else(|_| b"{}".to_vec()),
    };
    encode_envelope(FLAG_END_STREAM, &body)
}

fn stream_response(
    codec: Codec,
    messages: impl Stream<Item = Bytes> + Send + 'static,
) -> Response<BoxBody> {
    let body = StreamBody::new(messages.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut resp = Response::new(body.boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(codec.content_type(true)),
    );
    resp
}

/// Encodes a response stream as envelopes, ending it with the end-of-stream envelope at the first
/// error, when the stream ends, or when the client's deadline passes.
fn envelope_stream<Resp: Message>(
    codec: Codec,
    stream: ResponseStream<Resp>,
    timeout: Option<Duration>,
) -> impl Stream<Item = Bytes> + Send + 'static {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.next()).await {
                Ok(n) => n,
                Err(_) => Some(Err(Error::new(Code::DeadlineExceeded, "deadline exceeded"))),
            },
            None => stream.next().await,
        };
        match next {
            Some(Ok(msg)) => Some((encode_envelope(0, &codec.encode(&msg)), Some(stream))),
            Some(Err(e)) => Some((end_stream_envelope(Some(&e)), None)),
            None => Some((end_stream_envelope(None), None)),
        }
    })
}

/// Serves a server-streaming call. Errors, even before the first message, travel in the
/// end-of-stream envelope with HTTP 200, as the protocol requires.
pub async fn server_stream<B, Req, Resp, F, Fut>(req: Request<B>, handler: F) -> Response<BoxBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    Req: Message,
    Resp: Message,
    F: FnOnce(CallInfo, Req) -> Fut,
    Fut: Future<Output = Result<ResponseStream<Resp>, Error>>,
{
    let (parts, body) = req.into_parts();
    let info = match negotiate(&parts.headers, true) {
        Ok(i) => i,
        Err(resp) => return *resp,
    };
    let codec = info.codec;
    let timeout = info.timeout;
    let gzip = is_gzip(&parts.headers, STREAM_ENCODING_HEADER);
    let opened = async {
        let raw = read_limited(body).await?;
        let mut dec = EnvelopeDecoder::new(gzip);
        dec.push(&raw);
        let env = dec
            .next_envelope()?
            .ok_or_else(|| Error::invalid_argument("request stream holds no message"))?;
        let msg: Req = codec.decode(&env.data)?;
        handler(info, msg).await
    }
    .await;
    match opened {
        Ok(stream) => stream_response(codec, envelope_stream(codec, stream, timeout)),
        Err(e) => stream_response(
            codec,
            futures::stream::once(async move { end_stream_envelope(Some(&e)) }),
        ),
    }
}

/// Decodes a request body as a stream of messages.
pub fn request_stream<B, M>(body: B, codec: Codec, gzip: bool) -> RequestStream<M>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    M: Message,
{
    let state = (body, EnvelopeDecoder::new(gzip), false);
    Box::pin(futures::stream::unfold(
        state,
        move |(mut body, mut dec, mut done)| async move {
            loop {
                if done {
                    return None;
                }
                match dec.next_envelope() {
                    Ok(Some(env)) if env.is_end_stream() => return None,
                    Ok(Some(env)) => {
                        let msg = codec.decode::<M>(&env.data);
                        return Some((msg, (body, dec, done)));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        done = true;
                        return Some((Err(e), (body, dec, done)));
                    }
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            dec.push(&data);
                        }
                    }
                    Some(Err(e)) => {
                        done = true;
                        let e: BoxError = e.into();
                        let err = Error::new(Code::Canceled, format!("request stream broke: {e}"));
                        return Some((Err(err), (body, dec, done)));
                    }
                    None => {
                        done = true;
                        if dec.pending() > 0 {
                            let err = Error::invalid_argument("request stream ends mid-message");
                            return Some((Err(err), (body, dec, done)));
                        }
                        return None;
                    }
                }
            }
        },
    ))
}

/// Serves a client-streaming call: one response message then the end-of-stream envelope.
pub async fn client_stream<B, Req, Resp, F, Fut>(req: Request<B>, handler: F) -> Response<BoxBody>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    Req: Message,
    Resp: Message,
    F: FnOnce(CallInfo, RequestStream<Req>) -> Fut,
    Fut: Future<Output = Result<Resp, Error>>,
{
    let (parts, body) = req.into_parts();
    let info = match negotiate(&parts.headers, true) {
        Ok(i) => i,
        Err(resp) => return *resp,
    };
    let codec = info.codec;
    let gzip = is_gzip(&parts.headers, STREAM_ENCODING_HEADER);
    let stream = request_stream::<B, Req>(body, codec, gzip);
    let frames: Vec<Bytes> = match handler(info, stream).await {
        Ok(msg) => vec![
            encode_envelope(0, &codec.encode(&msg)),
            end_stream_envelope(None),
        ],
        Err(e) => vec![end_stream_envelope(Some(&e))],
    };
    stream_response(codec, futures::stream::iter(frames))
}
