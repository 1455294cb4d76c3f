//! A new user, start to finish, against the whole platform: sign up and activate through the
//! API (the link read from the sent email), `wrenn login` (password → session → API key), then
//! the CLI in a terminal driven through a real pseudo-terminal: create, an interactive shell
//! (raw mode, resize, exit code), exec exit codes, copying a file in and out, destroy.

mod support;

use std::process::Command;
use std::time::Duration;
use support::platform::Platform;
use wrenn_testing::pty::PtyProcess;
use wrenn_testing::{require_vm, workspace_binary};

fn wrenn(base: &str, key: &str, config: &std::path::Path) -> Command {
    let mut cmd = Command::new(workspace_binary("wrenn"));
    cmd.env("WRENN_BASE_URL", base)
        .env("WRENN_API_KEY", key)
        .env("XDG_CONFIG_HOME", config)
        .env_remove("WRENN_PROXY_DOMAIN");
    cmd
}

#[sqlx::test(migrator = "wrenn_control_plane::db::MIGRATOR")]
async fn a_cli_session_through_a_real_terminal(db: sqlx::PgPool) {
    require_vm!();
    let p = Platform::start(db).await;
    let account = p.cp.register(&p.outbox, "cli").await;
    let base = p.cp.base.clone();
    // The CLI blocks on its terminal; the control plane runs on this test's runtime.
    let result = tokio::task::spawn_blocking(move || {
        let config = tempfile::tempdir().expect("config dir");
        // `wrenn login` turns the password into a session and the session into an API key,
        // stored in the config file every later command reads.
        let mut login = Command::new(workspace_binary("wrenn"));
        login
            .env("XDG_CONFIG_HOME", config.path())
            .env_remove("WRENN_API_KEY")
            .args([
                "login",
                "--base-url",
                &base,
                "--email",
                &account.email,
                "--password-stdin",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = login.spawn().expect("wrenn login");
        std::io::Write::write_all(
            child.stdin.as_mut().expect("stdin"),
            format!("{}\n", account.password).as_bytes(),
        )
        .expect("password");
        let out = child.wait_with_output().expect("login");
        assert!(out.status.success(), "{out:?}");
        let saved =
            std::fs::read_to_string(config.path().join("wrenn/config.json")).expect("config");
        let key: String =
            serde_json::from_str::<serde_json::Value>(&saved).expect("json")["api_key"]
                .as_str()
                .expect("stored key")
                .to_string();
        assert!(key.starts_with("wrn_"), "{saved}");
        let run = |args: &[&str]| {
            wrenn(&base, &key, config.path())
                .args(args)
                .output()
                .expect("run wrenn")
        };
        let created = run(&["create", "--wait"]);
        assert!(created.status.success(), "{created:?}");
        let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
        assert!(id.starts_with("cl-"), "{id}");

        let mut shell = wrenn(&base, &key, config.path());
        shell.args(["shell", &id]);
        let mut term = PtyProcess::spawn(&mut shell, 100, 30).expect("spawn shell");
        let t = Duration::from_secs(60);
        term.wait_for_output("--attach", t).expect("session tag");
        assert!(
            term.is_raw().expect("termios"),
            "raw mode during the session"
        );
        term.write(b"stty size; echo answer-$((6*7))\r")
            .expect("type");
        term.wait_for_output("answer-42", t)
            .expect("command output");
        assert!(term.output().contains("30 100"), "{}", term.output());
        term.resize(120, 40).expect("resize");
        std::thread::sleep(Duration::from_millis(500));
        term.write(b"stty size\r").expect("type");
        term.wait_for_output("40 120", t).expect("resized");
        term.write(b"exit 3\r").expect("type");
        let status = term.wait_exit(t).expect("shell exits");
        assert_eq!(status.code(), Some(3), "{}", term.output());
        assert!(term.is_cooked().expect("termios"), "terminal restored");

        let exec = run(&[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 9",
        ]);
        assert_eq!(exec.status.code(), Some(9));
        assert_eq!(String::from_utf8_lossy(&exec.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&exec.stderr), "err\n");

        let local = config.path().join("payload.bin");
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&local, &payload).expect("write payload");
        let remote = format!("{id}:/root/payload.bin");
        let up = run(&["cp", local.to_str().expect("path"), &remote]);
        assert!(up.status.success(), "{up:?}");
        let back = config.path().join("back.bin");
        let down = run(&["cp", &remote, back.to_str().expect("path")]);
        assert!(down.status.success(), "{down:?}");
        assert!(
            std::fs::read(&back).expect("read back") == payload,
            "round trip"
        );

        let url = run(&["ports", &id, "8000"]);
        let port = base.rsplit(':').next().expect("port").to_string();
        assert_eq!(
            String::from_utf8_lossy(&url.stdout).trim(),
            format!("http://8000-{id}.127.0.0.1:{port}")
        );
        let destroyed = run(&["destroy", &id]);
        assert!(destroyed.status.success(), "{destroyed:?}");
        let info = run(&["info", &id, "--json"]);
        String::from_utf8_lossy(&info.stdout).to_string()
    })
    .await
    .expect("cli session");
    assert!(result.contains("\"stopped\""), "{result}");
}
