//! A Connect client over HTTP/1.1 or h2c (the host agent calling envd, envd's tests) or, with the
//! `tls` feature, over HTTPS/1.1 with a caller-given rustls configuration (the control plane
//! calling host agents over mTLS).
//!
//! Unary calls have an overall timeout (per client, or per call with
//! [`ConnectClient::unary_with_timeout`]); streams have only a connect timeout and a timeout to
//! the response headers, since an exec stream may rightly run for hours. Transport failures surface
//! as `unavailable`, timeouts as `deadline_exceeded`, as connect-go's client does. Calls fail
//! with the same [`Error`] a server returns, so callers match on one set of codes.

use super::envelope::{FLAG_END_STREAM, encode_envelope};
use super::server::BoxBody;
use super::{
    Code, Codec, EnvelopeDecoder, Error, MAX_MESSAGE_BYTES, Message, STREAM_ENCODING_HEADER,
};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;

/// A client for one server (`base`, e.g. `http://10.0.0.2:49983`).
#[derive(Clone, Debug)]
pub struct ConnectClient {
    base: String,
    http: Transport,
    codec: Codec,
    headers: HeaderMap,
    unary_timeout: Duration,
    header_timeout: Duration,
}

/// The HTTP client underneath: plain TCP, or TLS with the `tls` feature.
#[derive(Clone, Debug)]
enum Transport {
    Plain(Client<HttpConnector, BoxBody>),
    #[cfg(feature = "tls")]
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, BoxBody>),
}

impl Transport {
    fn request(&self, req: Request<BoxBody>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            Transport::Plain(c) => c.request(req),
            #[cfg(feature = "tls")]
            Transport::Tls(c) => c.request(req),
        }
    }
}

/// Defaults of every client; the builder methods change them.
const DEFAULT_UNARY_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Builder-style options are plain methods on the client.
impl ConnectClient {
    /// A client speaking the binary codec over HTTP/1.1.
    pub fn new(base: impl Into<String>) -> Self {
        Self::build(base, false)
    }

    /// A client speaking HTTP/2 without TLS (h2c, prior knowledge).
    pub fn new_h2c(base: impl Into<String>) -> Self {
        Self::build(base, true)
    }

    fn build(base: impl Into<String>, h2: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self::with_transport(base, Transport::Plain(http))
    }

    fn with_transport(base: impl Into<String>, http: Transport) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            http,
            codec: Codec::Proto,
            headers: HeaderMap::new(),
            unary_timeout: DEFAULT_UNARY_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }

    /// A client speaking HTTPS/1.1 to `base` (`https://host:port`) with `config`: the trusted
    /// CA, and for mTLS the client certificate (see `wrenn_http::tls::client_config`). Only
    /// `https` URLs are dialled; ALPN offers `http/1.1` only, whatever `config` says. Connections
    /// are pooled (20 idle per host, closed after 90 s idle; the agent's server keeps them
    /// 620 s), connects time out after 10 s.
    #[cfg(feature = "tls")]
    pub fn with_tls(base: impl Into<String>, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        let https = wrenn_http::tls::https_connector(config, Duration::from_secs(10));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(20)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(https);
        Self::with_transport(base, Transport::Tls(http))
    }

    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Adds a header to every call (an access token, Basic auth for the user).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The overall limit of unary calls made with [`unary`](Self::unary) (default 60 s).
    pub fn with_unary_timeout(mut self, timeout: Duration) -> Self {
        self.unary_timeout = timeout;
        self
    }

    /// How long a stream waits for the response headers (default 30 s). Unary calls are bounded
    /// by their overall timeout instead: a unary answer's headers come with its body.
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(
        &self,
        path: &str,
        streaming: bool,
        body: BoxBody,
    ) -> Result<Request<BoxBody>, Error> {
        let mut req = Request::post(format!("{}{}", self.base, path))
            .header(header::CONTENT_TYPE, self.codec.content_type(streaming))
            .header(super::PROTOCOL_VERSION_HEADER, "1")
            .body(body)
            .map_err(|e| Error::invalid_argument(format!("bad request URL {path:?}: {e}")))?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k, v.clone());
        }
        Ok(req)
    }

    /// Sends a stream's request and waits (bounded) for the response headers.
    async fn send(&self, req: Request<BoxBody>) -> Result<http::Response<Incoming>, Error> {
        match tokio::time::timeout(self.header_timeout, self.send_unbounded(req)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                Code::DeadlineExceeded,
                format!(
                    "{}: no response headers within {:?}",
                    self.base, self.header_timeout
                ),
            )),
        }
    }

    async fn send_unbounded(
        &self,
        req: Request<BoxBody>,
    ) -> Result<http::Response<Incoming>, Error> {
        self.http
            .request(req)
            .await
            .map_err(|e| Error::unavailable(format!("{}: {}", self.base, error_chain(&e))))
    }

    /// Calls a unary RPC at `path` (`/package.Service/Method`), bounded by the client's unary
    /// timeout.
    pub async fn unary<Req: Message, Resp: Message>(
        &self,
        path: &str,
        msg: &Req,
    ) -> Result<Resp, Error> {
        self.unary_with_timeout(path, msg, self.unary_timeout).await
    }

    /// Calls a unary RPC allowed to take up to `timeout` in all (a foreground exec that runs
    /// for minutes gets its own limit plus a margin). The deadline is also sent to the server
    /// in `connect-timeout-ms`.
    pub async fn unary_with_timeout<Req: Message, Resp: Message>(
        &self,
        path: &str,
        msg: &Req,
        timeout: Duration,
    ) -> Result<Resp, Error> {
        let body = Full::new(self.codec.encode(msg))
            .map_err(|n| match n {})
            .boxed_unsync();
        let mut req = self.request(path, false, body)?;
        if let Ok(ms) = HeaderValue::from_str(&timeout.as_millis().to_string()) {
            req.headers_mut().insert(super::TIMEOUT_HEADER, ms);
        }
        let call = async {
            let resp = self.send_unbounded(req).await?;
            let status = resp.status();
            let bytes = read_body(resp.into_body()).await?;
            if !status.is_success() {
                return Err(serde_json::from_slice::<Error>(&bytes).unwrap_or_else(|_| {
                    Error::new(
                        Code::from_http_status(status),
                        format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                    )
                }));
            }
            self.codec.decode(&bytes)
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    Code::DeadlineExceeded,
                    format!("{path}: no answer within {timeout:?}"),
                ))
            })
    }

    /// Opens a server stream.
    pub async fn server_stream<Req: Message, Resp: Message>(
        &self,
        path: &str,
        msg: &Req,
    ) -> Result<ResponseStream<Resp>, Error> {
        let frame = encode_envelope(0, &self.codec.encode(msg));
        let body = Full::new(frame).map_err(|n| match n {}).boxed_unsync();
        let req = self.request(path, true, body)?;
        let resp = self.send(req).await?;
        ResponseStream::from_response(resp, self.codec).await
    }

    /// Opens a client stream: send messages through the returned sender, drop or `finish` it, then
    /// await the response.
    pub async fn client_stream<Req: Message, Resp: Message>(
        &self,
        path: &str,
    ) -> Result<
        (
            StreamSender<Req>,
            tokio::task::JoinHandle<Result<Resp, Error>>,
        ),
        Error,
    > {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let frames = tokio_stream_from(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
        let req = self.request(path, true, StreamBody::new(frames).boxed_unsync())?;
        let this = self.clone();
        let codec = self.codec;
        let handle = tokio::spawn(async move {
            let resp = this.send(req).await?;
            let mut stream = ResponseStream::<Resp>::from_response(resp, codec).await?;
            match stream.message().await {
                Some(r) => {
                    let msg = r?;
                    // Drain to the end-of-stream envelope, which may still carry an error.
                    while let Some(r) = stream.message().await {
                        r?;
                    }
                    Ok(msg)
                }
                None => Err(Error::internal("client stream ended without a response")),
            }
        });
        Ok((
            StreamSender {
                tx,
                codec,
                _msg: std::marker::PhantomData,
            },
            handle,
        ))
    }
}

/// `outer: inner: innermost`: hyper's client errors hide the cause (refused, TLS alert) in
/// their sources.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Bytes>) -> impl futures::Stream<Item = Bytes> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn read_body(body: Incoming) -> Result<Bytes, Error> {
    match http_body_util::Limited::new(body, MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(Error::unavailable(format!("reading response: {e}"))),
    }
}

/// The sending half of a client stream.
#[derive(Debug)]
pub struct StreamSender<M> {
    tx: mpsc::Sender<Bytes>,
    codec: Codec,
    _msg: std::marker::PhantomData<fn(M)>,
}

impl<M: Message> StreamSender<M> {
    /// Sends one message; waits while the server is not reading (backpressure).
    pub async fn send(&self, msg: &M) -> Result<(), Error> {
        self.tx
            .send(encode_envelope(0, &self.codec.encode(msg)))
            .await
            .map_err(|_| Error::unavailable("request stream closed by the server"))
    }

    /// Ends the request stream.
    pub fn finish(self) {}
}

/// The messages of a response stream, read as they arrive.
#[derive(Debug)]
pub struct ResponseStream<M> {
    body: Incoming,
    decoder: EnvelopeDecoder,
    codec: Codec,
    done: bool,
    _msg: std::marker::PhantomData<fn() -> M>,
}

#[derive(serde::Deserialize)]
struct EndStream {
    error: Option<Error>,
}

impl<M: Message> ResponseStream<M> {
    async fn from_response(resp: http::Response<Incoming>, codec: Codec) -> Result<Self, Error> {
        let status = resp.status();
        let gzip = resp
            .headers()
            .get(STREAM_ENCODING_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
        if !status.is_success() {
            let bytes = read_body(resp.into_body()).await.unwrap_or_default();
            return Err(serde_json::from_slice::<Error>(&bytes).unwrap_or_else(|_| {
                Error::new(
                    Code::from_http_status(status),
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                )
            }));
        }
        Ok(Self {
            body: resp.into_body(),
            decoder: EnvelopeDecoder::new(gzip),
            codec,
            done: false,
            _msg: std::marker::PhantomData,
        })
    }

    /// The next message; `None` at a clean end; `Some(Err)` for an error the server ended with or a
    /// broken stream.
    pub async fn message(&mut self) -> Option<Result<M, Error>> {
        loop {
            if self.done {
                return None;
            }
            match self.decoder.next_envelope() {
                Ok(Some(env)) if env.flags & FLAG_END_STREAM != 0 => {
                    self.done = true;
                    let end: EndStream =
                        serde_json::from_slice(&env.data).unwrap_or(EndStream { error: None });
                    return end.error.map(Err);
                }
                Ok(Some(env)) => return Some(self.codec.decode(&env.data)),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(Error::unavailable(format!("stream broke: {e}"))));
                }
                None => {
                    self.done = true;
                    return Some(Err(Error::unavailable(
                        "stream ended without an end-of-stream message",
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostagent::{GetLogsRequest, GetLogsResponse};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    /// A server that answers every call after `delay` with the deadline it was sent.
    async fn slow_server(delay: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let deadline = req
                        .headers()
                        .get(super::super::TIMEOUT_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    tokio::time::sleep(delay).await;
                    let msg = GetLogsResponse {
                        lines: vec![deadline],
                    };
                    Ok::<_, Infallible>(http::Response::new(Full::new(Codec::Proto.encode(&msg))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn per_call_unary_timeouts() {
        let base = slow_server(Duration::from_millis(300)).await;
        // The client-wide timeout is short; a call with its own longer limit still succeeds,
        // and the server learns the deadline.
        let client = ConnectClient::new(&base).with_unary_timeout(Duration::from_millis(50));
        let ok: GetLogsResponse = client
            .unary_with_timeout("/x/Y", &GetLogsRequest { lines: 1 }, Duration::from_secs(5))
            .await
            .expect("long enough");
        assert_eq!(ok.lines, ["5000"]);
        let err = client
            .unary::<_, GetLogsResponse>("/x/Y", &GetLogsRequest { lines: 1 })
            .await
            .expect_err("client-wide limit");
        assert_eq!(err.code, Code::DeadlineExceeded, "{err:?}");

        // Unary calls are not cut by the (stream) header timeout.
        let client = ConnectClient::new(&base).with_header_timeout(Duration::from_millis(50));
        client
            .unary::<_, GetLogsResponse>("/x/Y", &GetLogsRequest { lines: 1 })
            .await
            .expect("header timeout does not apply");
        // Streams are.
        let err = client
            .server_stream::<_, GetLogsResponse>("/x/Y", &GetLogsRequest { lines: 1 })
            .await
            .expect_err("no headers in time");
        assert_eq!(err.code, Code::DeadlineExceeded, "{err:?}");
    }
}
