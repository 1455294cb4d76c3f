//! `GET/POST /files` against a real envd: streaming, gzip, ranges, atomic writes, auth.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::StreamExt;
use sha2::{Digest, Sha256};

/// Signatures are base64 (`+`, `/`), so they must be escaped in a query string.
fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn q(path: &std::path::Path) -> String {
    percent_encoding::utf8_percent_encode(
        &path.display().to_string(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string()
}

#[tokio::test]
async fn multipart_and_raw_uploads_round_trip() {
    let envd = Envd::start().await;
    let http = envd.http();
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();

    // Multipart, destination from the part's filename, parents created.
    let dest = root.join("deep/er/a.txt");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"multipart body".to_vec())
            .file_name(dest.display().to_string()),
    );
    let r = http
        .post(envd.url("/files"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v[0]["path"], dest.display().to_string());
    assert_eq!(v[0]["name"], "a.txt");
    assert_eq!(v[0]["type"], "file");
    assert_eq!(std::fs::read(&dest).unwrap(), b"multipart body");

    // Raw octet-stream with ?path=, overwriting.
    let r = http
        .post(envd.url(&format!("/files?path={}", q(&dest))))
        .header("content-type", "application/octet-stream")
        .body("raw body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read(&dest).unwrap(), b"raw body");

    // gzip-encoded upload.
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&vec![b'z'; 100_000]).unwrap();
        e.finish().unwrap()
    };
    let gz_dest = root.join("gz.bin");
    let r = http
        .post(envd.url(&format!("/files?path={}", q(&gz_dest))))
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip")
        .body(gz)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read(&gz_dest).unwrap(), vec![b'z'; 100_000]);

    // Download: whole, gzip, and a range.
    let r = http
        .get(envd.url(&format!("/files?path={}", q(&dest))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("a.txt")
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"raw body");
    let r = http
        .get(envd.url(&format!("/files?path={}", q(&gz_dest))))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let compressed = r.bytes().await.unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(compressed.as_ref()),
        &mut plain,
    )
    .unwrap();
    assert_eq!(plain, vec![b'z'; 100_000]);
    let r = http
        .get(envd.url(&format!("/files?path={}", q(&dest))))
        .header("range", "bytes=4-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 4-7/8");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"body");

    // Errors.
    let r = http
        .get(envd.url(&format!("/files?path={}", q(&root.join("missing")))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], 404);
    let r = http
        .get(envd.url(&format!("/files?path={}", q(&root))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http.get(envd.url("/files")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(envd.url(&format!(
            "/files?path={}&username=ghost-user-wrenn",
            q(&dest)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Uploading onto a directory fails and leaves no temporary file behind.
    let r = http
        .post(envd.url(&format!("/files?path={}", q(&root.join("deep")))))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("wrenn-upload"))
        .collect();
    assert!(leftovers.is_empty());
}

/// A deterministic pseudo-random stream of `len` bytes, generated on the fly.
fn generated(len: u64) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let chunk = 1 << 20;
    futures::stream::unfold(
        (0u64, 0x9E37_79B9_7F4A_7C15u64),
        move |(sent, mut x)| async move {
            if sent >= len {
                return None;
            }
            let n = (len - sent).min(chunk) as usize;
            let mut buf = Vec::with_capacity(n);
            while buf.len() < n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.extend_from_slice(&x.to_le_bytes());
            }
            buf.truncate(n);
            Some((Ok(bytes::Bytes::from(buf)), (sent + n as u64, x)))
        },
    )
}

#[tokio::test]
async fn one_gibibyte_round_trip_with_checksum() {
    let envd = Envd::start().await;
    let http = envd.http();
    let tmp = tempfile::tempdir_in(
        std::env::var("WRENN_TEST_BIG_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .unwrap();
    let dest = tmp.path().join("big.bin");
    let len = 1u64 << 30;
    let mut expected = Sha256::new();
    let mut s = Box::pin(generated(len));
    while let Some(c) = s.next().await {
        expected.update(c.unwrap());
    }
    let expected = expected.finalize();

    let r = http
        .post(envd.url(&format!("/files?path={}", q(&dest))))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(generated(len)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), len);

    let r = http
        .get(envd.url(&format!("/files?path={}", q(&dest))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(len));
    let mut got = Sha256::new();
    let mut n = 0u64;
    let mut body = r.bytes_stream();
    while let Some(c) = body.next().await {
        let c = c.unwrap();
        n += c.len() as u64;
        got.update(&c);
    }
    assert_eq!(n, len);
    assert_eq!(got.finalize(), expected);
}

#[tokio::test]
async fn full_disk_gives_507_and_leaves_nothing() {
    if !is_root() {
        eprintln!("SKIP full_disk_gives_507_and_leaves_nothing: needs root to mount a small tmpfs");
        return;
    }
    let envd = Envd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "mount a 1 MiB tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(dir.path().to_path_buf());
    let dest = dir.path().join("too-big.bin");
    let r = envd
        .http()
        .post(envd.url(&format!("/files?path={}", q(&dest))))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 4 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507);
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert!(entries.is_empty(), "no partial file: {entries:?}");
}

#[tokio::test]
async fn access_token_and_signed_urls() {
    let envd = Envd::start().await;
    let http = envd.http();
    let r = http
        .post(envd.url("/init"))
        .json(&serde_json::json!({ "accessToken": "s3cret" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Health stays open; everything else needs the token.
    assert_eq!(
        http.get(envd.url("/health")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        http.get(envd.url("/envs")).send().await.unwrap().status(),
        401
    );
    let err = envd
        .client()
        .unary::<_, wrenn_protocol::envd::process::ListResponse>(
            "/process.Process/List",
            &wrenn_protocol::envd::process::ListRequest {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, wrenn_protocol::connect::Code::Unauthenticated);
    let authed = envd.client().with_header(
        http::HeaderName::from_static("x-access-token"),
        http::HeaderValue::from_static("s3cret"),
    );
    authed
        .unary::<_, wrenn_protocol::envd::process::ListResponse>(
            "/process.Process/List",
            &wrenn_protocol::envd::process::ListRequest {},
        )
        .await
        .unwrap();

    // A second /init must prove it knows the token.
    let r = http
        .post(envd.url("/init"))
        .json(&serde_json::json!({ "accessToken": "other" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("signed.txt");
    std::fs::write(&file, b"signed content").unwrap();
    let path = file.display().to_string();
    let r = http
        .get(envd.url(&format!("/files?path={}", q(&file))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let sig = enc(&envd::auth::file_signature(
        &path, "read", "", "s3cret", None,
    ));
    let r = http
        .get(envd.url(&format!("/files?path={}&signature={sig}", q(&file))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"signed content");
    // A read signature does not allow a write, and expired signatures are refused.
    let r = http
        .post(envd.url(&format!("/files?path={}&signature={sig}", q(&file))))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let past = 1_000_000i64;
    let sig = enc(&envd::auth::file_signature(
        &path,
        "read",
        "",
        "s3cret",
        Some(past),
    ));
    let r = http
        .get(envd.url(&format!(
            "/files?path={}&signature={sig}&signature_expiration={past}",
            q(&file)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(envd.url(&format!("/files?path={}", q(&file))))
        .header("x-access-token", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
