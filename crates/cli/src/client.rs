//! The REST side of the control plane: URL building under the base URL's path prefix, the
//! `X-API-Key` header, timeouts, and turning error envelopes and transport failures into
//! [`CliError`]s that say which URL failed.

use crate::error::{CliError, CliResult, error_chain, root_cause};
use reqwest::header::{CONTENT_LENGTH, HeaderValue, LOCATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use wrenn_api_types::{API_KEY_HEADER, ErrorBody};

/// Deadline for TCP + TLS connect, as the SDK's.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a whole plain REST response; streams (`cp`) and WebSockets have none.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client bound to one control plane and (optionally) one API key.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    api_key: Option<String>,
}

impl ApiClient {
    /// `base_url` may carry a path prefix (`http://host/api`); routes are appended to it.
    pub fn new(base_url: &str, api_key: Option<String>) -> CliResult<Self> {
        let base = parse_base_url(base_url)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // HTTP/1.1 like the SDK: uploads then go out with `Transfer-Encoding: chunked`,
            // which is what the stream routes are specified for.
            .http1_only()
            // The API never redirects; following one would hide a misconfigured base URL.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wrenn-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| CliError::Transport {
                url: base.to_string(),
                detail: error_chain(&error),
            })?;
        Ok(Self {
            http,
            base,
            api_key,
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The key, or the error telling the user how to get one.
    pub fn api_key(&self) -> CliResult<&str> {
        self.api_key.as_deref().ok_or(CliError::MissingApiKey)
    }

    /// `base + /segments…`, each segment percent-encoded as one path segment.
    pub fn url(&self, segments: &[&str]) -> Url {
        join_segments(&self.base, segments)
    }

    /// A request with the API key attached (when there is one) and no timeout: callers add
    /// [`RESPONSE_TIMEOUT`] unless the response is a stream.
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.api_key {
            Some(key) => builder.header(API_KEY_HEADER, key),
            None => builder,
        }
    }

    /// Sends and maps transport failures and statuses ≥ 300 to errors.
    pub async fn send(&self, builder: RequestBuilder) -> CliResult<Response> {
        let (client, request) = builder.build_split();
        let request = request.map_err(|error| CliError::Usage(error_chain(&error)))?;
        let url = request.url().to_string();
        tracing::debug!(method = %request.method(), %url, "request");
        let response = client
            .execute(request)
            .await
            .map_err(|error| transport_error(&url, &error))?;
        check_status(&url, response).await
    }

    /// GET and decode JSON (30 s deadline).
    pub async fn get_json<T: DeserializeOwned>(&self, segments: &[&str]) -> CliResult<T> {
        self.get_json_query(segments, &[]).await
    }

    /// GET with a query string and decode JSON (30 s deadline).
    pub async fn get_json_query<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> CliResult<T> {
        self.require_key()?;
        let builder = self
            .request(Method::GET, self.url(segments))
            .query(query)
            .timeout(RESPONSE_TIMEOUT);
        decode_json(self.send(builder).await?).await
    }

    /// POST a JSON body and decode the JSON answer (30 s deadline).
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> CliResult<T> {
        self.require_key()?;
        let builder = self
            .request(Method::POST, self.url(segments))
            .json(body)
            .timeout(RESPONSE_TIMEOUT);
        decode_json(self.send(builder).await?).await
    }

    /// POST a JSON body with a query string and decode the JSON answer, allowing `timeout` for
    /// the response (a snapshot may take up to 60 s).
    pub async fn post_json_query<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        body: &B,
        timeout: Duration,
    ) -> CliResult<T> {
        self.require_key()?;
        let builder = self
            .request(Method::POST, self.url(segments))
            .query(query)
            .json(body)
            .timeout(timeout);
        decode_json(self.send(builder).await?).await
    }

    /// A bodyless POST (`pause`, `resume`, `ping`): `Content-Length: 0`, no content type.
    pub async fn post_empty(&self, segments: &[&str]) -> CliResult<Response> {
        self.require_key()?;
        let builder = self
            .request(Method::POST, self.url(segments))
            .header(CONTENT_LENGTH, HeaderValue::from_static("0"))
            .timeout(RESPONSE_TIMEOUT);
        self.send(builder).await
    }

    /// DELETE; the body (empty on 204, or a JSON object) is ignored.
    pub async fn delete(&self, segments: &[&str]) -> CliResult<()> {
        self.require_key()?;
        let builder = self
            .request(Method::DELETE, self.url(segments))
            .timeout(RESPONSE_TIMEOUT);
        self.send(builder).await.map(drop)
    }

    fn require_key(&self) -> CliResult<()> {
        self.api_key().map(drop)
    }
}

/// Parses and checks the base URL (http/https only, must have a host).
pub fn parse_base_url(base_url: &str) -> CliResult<Url> {
    let url = Url::parse(base_url.trim())
        .map_err(|error| CliError::Usage(format!("invalid base URL {base_url:?}: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(CliError::Usage(format!(
            "invalid base URL {base_url:?}: expected http(s)://host[:port][/prefix]"
        )));
    }
    Ok(url)
}

/// Appends path segments to the base URL's path, dropping its query and fragment. A trailing
/// slash on the base makes no difference (`/api/` and `/api` both give `/api/v1/...`).
pub fn join_segments(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// Decodes a success body as JSON; an empty body or 204 decodes as `{}` (as the SDK does).
pub async fn decode_json<T: DeserializeOwned>(response: Response) -> CliResult<T> {
    let url = response.url().to_string();
    let no_content = response.status() == StatusCode::NO_CONTENT;
    let bytes = response
        .bytes()
        .await
        .map_err(|error| transport_error(&url, &error))?;
    let body: &[u8] = if no_content || bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(body).map_err(|error| CliError::Decode {
        url,
        detail: error.to_string(),
    })
}

/// Passes 2xx through; turns everything else into [`CliError::Api`].
async fn check_status(url: &str, response: Response) -> CliResult<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status.is_redirection() {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        return Err(CliError::Api {
            status: status.as_u16(),
            code: None,
            message: format!("unexpected redirect from {url} to {location}"),
        });
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(api_error(status.as_u16(), &body))
}

/// The SDK's rule: the envelope's code and message when the body is one, else the body text.
pub fn api_error(status: u16, body: &[u8]) -> CliError {
    if let Ok(envelope) = serde_json::from_slice::<ErrorBody>(body) {
        return CliError::Api {
            status,
            code: Some(envelope.error.code),
            message: envelope.error.message,
        };
    }
    let text = String::from_utf8_lossy(body).trim().to_owned();
    let message = if text.is_empty() {
        StatusCode::from_u16(status)
            .ok()
            .and_then(|code| code.canonical_reason())
            .unwrap_or("request failed")
            .to_owned()
    } else {
        text
    };
    CliError::Api {
        status,
        code: None,
        message,
    }
}

/// Classifies a reqwest failure: connect, timeout or other.
pub fn transport_error(url: &str, error: &reqwest::Error) -> CliError {
    let url = url.to_owned();
    if error.is_timeout() {
        CliError::Timeout { url }
    } else if error.is_connect() {
        CliError::Connect {
            url,
            detail: root_cause(error),
        }
    } else {
        CliError::Transport {
            url,
            detail: error_chain(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(url: &str) -> Url {
        parse_base_url(url).expect("valid base url")
    }

    #[test]
    fn routes_are_appended_to_the_base_path() {
        let segments = ["v1", "capsules", "cl-abc", "exec"];
        assert_eq!(
            join_segments(&base("http://h:8080"), &segments).as_str(),
            "http://h:8080/v1/capsules/cl-abc/exec"
        );
        assert_eq!(
            join_segments(&base("http://h:8080/api"), &segments).as_str(),
            "http://h:8080/api/v1/capsules/cl-abc/exec"
        );
        assert_eq!(
            join_segments(&base("https://h/api/"), &segments).as_str(),
            "https://h/api/v1/capsules/cl-abc/exec"
        );
    }

    #[test]
    fn segments_are_escaped() {
        let url = join_segments(&base("http://h"), &["v1", "capsules", "a/b c"]);
        assert_eq!(url.as_str(), "http://h/v1/capsules/a%2Fb%20c");
    }

    #[test]
    fn bad_base_urls_are_rejected() {
        assert!(parse_base_url("ftp://h").is_err());
        assert!(parse_base_url("not a url").is_err());
        assert!(parse_base_url("http://h").is_ok());
    }

    #[test]
    fn error_envelope_is_read_and_plain_bodies_kept() {
        let envelope = br#"{"error":{"code":"invalid_state","message":"capsule is paused"}}"#;
        let error = api_error(409, envelope);
        assert_eq!(error.to_string(), "capsule is paused (invalid_state)");
        assert_eq!(error.api_code(), Some("invalid_state"));

        assert_eq!(
            api_error(502, b"upstream down").to_string(),
            "upstream down (HTTP 502)"
        );
        assert_eq!(api_error(404, b"").to_string(), "Not Found (HTTP 404)");
    }
}
