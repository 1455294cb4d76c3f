//! The unmodified official Python SDK (`wrenn` 0.3.0) against the whole platform: a real
//! capsule driven through exec, streams, files, the PTY, the port proxy, pause/resume and
//! snapshots (see tests/sdk/capsule_e2e.py). This is the client contract, checked by the client
//! itself.

mod support;

use support::platform::Platform;
use wrenn_testing::require_vm;

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn the_official_sdk_drives_a_capsule(db: sqlx::PgPool) {
    require_vm!();
    let python = match std::env::var("WRENN_SDK_PYTHON") {
        Ok(p) => p,
        Err(_) if std::env::var("WRENN_REQUIRE_VM_TESTS").as_deref() == Ok("1") => {
            panic!("WRENN_SDK_PYTHON is not set (scripts/test.sh installs the SDK and sets it)")
        }
        Err(_) => {
            eprintln!("skipping: WRENN_SDK_PYTHON is not set");
            return;
        }
    };
    let p = Platform::start(db).await;
    let tenant = p.cp.tenant("sdk").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/capsule_e2e.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("WRENN_BASE_URL", &p.cp.base)
        .env("WRENN_API_KEY", &tenant.api_key)
        .env_remove("WRENN_PROXY_DOMAIN")
        .output()
        .await
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "SDK script failed ({}):\n{stdout}\n{stderr}\nagent log:\n{}",
        out.status,
        p.agent.log_tail()
    );
}
