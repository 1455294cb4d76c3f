//! E2B's official Python SDK, unmodified, against envd: the wire-compatibility check.
//! `scripts/test.sh` installs the SDK in a virtualenv and sets `WRENN_E2B_PYTHON`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[tokio::test]
async fn e2b_python_sdk_works_unchanged() {
    let Ok(python) = std::env::var("WRENN_E2B_PYTHON") else {
        eprintln!(
            "SKIP e2b_python_sdk_works_unchanged: WRENN_E2B_PYTHON is not set \
             (scripts/test.sh installs the e2b SDK and sets it)"
        );
        return;
    };
    let envd = Envd::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2b_sdk/check.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("E2B_SANDBOX_URL", &envd.base)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("ok watch"), "{stdout}");
}
