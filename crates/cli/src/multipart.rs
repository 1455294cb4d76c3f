//! The body of `POST …/files/stream/write`, framed exactly as the SDK frames it (contract §4.3):
//! a `path` part, then a `file` part whose bytes are streamed from the source, so an upload of
//! any size runs in constant memory.

use crate::error::{CliError, CliResult};
use bytes::Bytes;
use futures::{Stream, StreamExt, stream};

/// A multipart boundary and the fixed bytes around the file content.
#[derive(Debug, Clone)]
pub struct UploadFraming {
    boundary: String,
    path: String,
}

impl UploadFraming {
    /// A fresh 32-hex-character boundary, as the SDK uses. Paths with CR or LF are refused: they
    /// would end the part header early.
    pub fn new(path: &str) -> CliResult<Self> {
        Self::with_boundary(path, uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn with_boundary(path: &str, boundary: String) -> CliResult<Self> {
        if path.contains(['\r', '\n']) {
            return Err(CliError::Usage(format!(
                "{path:?}: remote paths cannot contain line breaks"
            )));
        }
        Ok(Self {
            boundary,
            path: path.to_owned(),
        })
    }

    /// The `Content-Type` header value.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// Everything before the file bytes: the whole `path` part and the `file` part's header.
    pub fn head(&self) -> Bytes {
        let boundary = &self.boundary;
        let path = &self.path;
        Bytes::from(format!(
            "--{boundary}\r\n\
             Content-Disposition: form-data; name=\"path\"\r\n\
             \r\n\
             {path}\r\n\
             --{boundary}\r\n\
             Content-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\
             \r\n"
        ))
    }

    /// Everything after the file bytes.
    pub fn tail(&self) -> Bytes {
        Bytes::from(format!("\r\n--{}--\r\n", self.boundary))
    }

    /// Head, then the content chunks as they come, then tail.
    pub fn body<S>(&self, content: S) -> impl Stream<Item = std::io::Result<Bytes>> + use<S>
    where
        S: Stream<Item = std::io::Result<Bytes>>,
    {
        stream::once(std::future::ready(Ok(self.head())))
            .chain(content)
            .chain(stream::once(std::future::ready(Ok(self.tail()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_matches_the_contract_byte_for_byte() {
        let framing = UploadFraming::with_boundary(
            "/root/a b.txt",
            "0123456789abcdef0123456789abcdef".into(),
        )
        .expect("framing");
        let chunks = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        let parts: Vec<Bytes> = framing
            .body(stream::iter(chunks))
            .map(|chunk| chunk.expect("chunk"))
            .collect()
            .await;
        assert_eq!(parts.len(), 4, "file chunks must pass through unmerged");
        let body: Vec<u8> = parts.concat();
        let expected = "--0123456789abcdef0123456789abcdef\r\n\
            Content-Disposition: form-data; name=\"path\"\r\n\
            \r\n\
            /root/a b.txt\r\n\
            --0123456789abcdef0123456789abcdef\r\n\
            Content-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n\
            Content-Type: application/octet-stream\r\n\
            \r\n\
            hello world\r\n\
            --0123456789abcdef0123456789abcdef--\r\n";
        assert_eq!(String::from_utf8(body).expect("utf-8"), expected);
        assert_eq!(
            framing.content_type(),
            "multipart/form-data; boundary=0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn random_boundary_is_32_lowercase_hex() {
        let framing = UploadFraming::new("/x").expect("framing");
        let boundary = framing
            .content_type()
            .rsplit('=')
            .next()
            .expect("boundary")
            .to_owned();
        assert_eq!(boundary.len(), 32);
        assert!(
            boundary
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }

    #[test]
    fn line_breaks_in_paths_are_refused() {
        assert!(UploadFraming::new("/a\r\nContent-Type: x").is_err());
    }
}
