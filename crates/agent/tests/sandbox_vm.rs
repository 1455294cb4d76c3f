//! End-to-end: a real agent boots real QEMU guests (TCG here, KVM where it works) with the real
//! guest image, and everything goes through the agent's RPC service and proxy.

mod support;

use std::time::Duration;
use support::{Agent, eventually, slot_leftovers, slot_of, vms_under};
use wrenn_protocol::envd::rpc_path;
use wrenn_protocol::hostagent::{self as pb, SERVICE};

async fn assert_gone(agent: &Agent, id: &str, slot: u32) {
    assert!(
        !agent
            .list()
            .await
            .sandboxes
            .iter()
            .any(|s| s.sandbox_id == id),
        "{id} still listed"
    );
    assert_eq!(
        slot_leftovers(slot),
        Vec::<String>::new(),
        "slot {slot} leaked"
    );
    assert!(
        !agent.data_dir.join("sandboxes").join(id).exists(),
        "sandbox folder of {id} left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sandbox_end_to_end_and_nothing_leaks() {
    require_vm!();
    let agent = Agent::start("200-209");
    let id = "cl-e2e-one";

    // Bad input first: clear errors, nothing created.
    let bad: Result<pb::CreateSandboxResponse, _> = agent
        .call(
            "CreateSandbox",
            &pb::CreateSandboxRequest {
                sandbox_id: "../escape".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(bad.expect_err("bad id").code.as_str(), "invalid_argument");
    let bad: Result<pb::CreateSandboxResponse, _> = agent
        .call(
            "CreateSandbox",
            &pb::CreateSandboxRequest {
                sandbox_id: "cl-neg".into(),
                vcpus: -1,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        bad.expect_err("negative vcpus").code.as_str(),
        "invalid_argument"
    );
    let missing: Result<pb::ExecResponse, _> = agent
        .call(
            "Exec",
            &pb::ExecRequest {
                sandbox_id: "cl-nope".into(),
                cmd: "true".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        missing.expect_err("unknown sandbox").code.as_str(),
        "not_found"
    );

    let created = agent
        .call::<_, pb::CreateSandboxResponse>(
            "CreateSandbox",
            &pb::CreateSandboxRequest {
                sandbox_id: id.into(),
                vcpus: 1,
                memory_mb: 512,
                disk_size_mb: 3072,
                team_id: "team-a".into(),
                template_id: "tmpl-a".into(),
                default_user: "user".into(),
                default_env: [("GREETING".to_string(), "hello".to_string())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create: {e:?}\n{}", agent.log_tail()));
    assert_eq!(created.status, "running");
    let slot = slot_of(&created.host_ip);
    assert!(
        (200..=209).contains(&slot),
        "slot {slot} outside the agent's range"
    );

    // A duplicate id is refused.
    let dup: Result<pb::CreateSandboxResponse, _> = agent
        .call(
            "CreateSandbox",
            &pb::CreateSandboxRequest {
                sandbox_id: id.into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(dup.expect_err("duplicate").code.as_str(), "already_exists");

    // Exec: default user and env from /init, identity from the metadata service, exit codes.
    let out = agent
        .exec(
            id,
            "echo $GREETING; whoami; echo $WRENN_SANDBOX_ID $WRENN_TEMPLATE_ID; exit 3",
        )
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.exit_code,
        3,
        "stdout {stdout}, stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["hello", "user", &format!("{id} tmpl-a")]);

    // The disk was grown to the requested size, and the guest can write to it.
    let df = agent
        .exec(id, "sleep 1; df -m / | tail -1 | awk '{print $2}'")
        .await;
    let size_mb: u64 = String::from_utf8_lossy(&df.stdout)
        .trim()
        .parse()
        .expect("df size");
    assert!(
        size_mb > 2500,
        "root filesystem is {size_mb} MB, asked for 3072"
    );

    // Files: a binary round trip through the agent.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let _: pb::WriteFileResponse = agent
        .call(
            "WriteFile",
            &pb::WriteFileRequest {
                sandbox_id: id.into(),
                path: "/home/user/data.bin".into(),
                content: payload.clone().into(),
            },
        )
        .await
        .expect("write file");
    let read: pb::ReadFileResponse = agent
        .call(
            "ReadFile",
            &pb::ReadFileRequest {
                sandbox_id: id.into(),
                path: "/home/user/data.bin".into(),
            },
        )
        .await
        .expect("read file");
    assert_eq!(read.content.as_ref(), payload.as_slice());
    let sum = agent
        .exec(id, "sha256sum /home/user/data.bin | cut -d' ' -f1")
        .await;
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&payload))
    };
    assert_eq!(String::from_utf8_lossy(&sum.stdout).trim(), expected);

    // A PTY: a shell that echoes what we type.
    let mut pty = agent
        .client
        .server_stream::<_, pb::PtyAttachResponse>(
            &rpc_path(SERVICE, "PtyAttach"),
            &pb::PtyAttachRequest {
                sandbox_id: id.into(),
                tag: "term-1".into(),
                cmd: "/bin/bash".into(),
                cols: 100,
                rows: 30,
                ..Default::default()
            },
        )
        .await
        .expect("pty attach");
    let _: pb::PtySendInputResponse = agent
        .call(
            "PtySendInput",
            &pb::PtySendInputRequest {
                sandbox_id: id.into(),
                tag: "term-1".into(),
                data: b"echo pty-$((6*7)); stty size\n".to_vec().into(),
            },
        )
        .await
        .expect("pty input");
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = pty.message().await {
            if let Some(pb::pty_attach_response::Event::Output(o)) = ev.expect("pty event").event {
                seen.push_str(&String::from_utf8_lossy(&o.data));
                if seen.contains("pty-42") && seen.contains("30 100") {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert!(matches!(found, Ok(true)), "PTY output was {seen:?}");
    let _: pb::PtyKillResponse = agent
        .call(
            "PtyKill",
            &pb::PtyKillRequest {
                sandbox_id: id.into(),
                tag: "term-1".into(),
            },
        )
        .await
        .expect("pty kill");

    // A web server in the guest, reached through the agent's proxy.
    let _: pb::StartBackgroundResponse = agent
        .call(
            "StartBackground",
            &pb::StartBackgroundRequest {
                sandbox_id: id.into(),
                cmd: "/bin/sh".into(),
                args: vec![
                    "-c".into(),
                    "mkdir -p /tmp/www/sub && echo served-from-guest > /tmp/www/index.html && cd /tmp/www && exec python3 -m http.server 8080".into(),
                ],
                tag: "web".into(),
                ..Default::default()
            },
        )
        .await
        .expect("start web server");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{}/proxy/{id}/8080/index.html", agent.port);
    let body = eventually(Duration::from_secs(60), "the guest web server", || {
        let http = http.clone();
        let url = url.clone();
        async move {
            let resp = http.get(&url).send().await.ok()?;
            if resp.status() != 200 {
                return None;
            }
            resp.text().await.ok()
        }
    })
    .await;
    assert_eq!(body.trim(), "served-from-guest");
    // python's http.server redirects a directory without a slash; the Location is rewritten.
    let redirect = http
        .get(format!(
            "http://127.0.0.1:{}/proxy/{id}/8080/sub",
            agent.port
        ))
        .send()
        .await
        .expect("redirect");
    assert_eq!(redirect.status(), 301);
    assert_eq!(
        redirect.headers()["location"].to_str().expect("location"),
        format!("/proxy/{id}/8080/sub/")
    );

    // Metrics are sampled.
    let points = eventually(Duration::from_secs(10), "metrics", || async {
        let m: pb::GetSandboxMetricsResponse = agent
            .call(
                "GetSandboxMetrics",
                &pb::GetSandboxMetricsRequest {
                    sandbox_id: id.into(),
                    range: "5m".into(),
                },
            )
            .await
            .ok()?;
        (m.points.len() >= 2).then_some(m.points)
    })
    .await;
    assert!(points.iter().all(|p| p.mem_bytes > 0 && p.disk_bytes > 0));

    let vm_pids = vms_under(&agent.data_dir);
    assert_eq!(vm_pids.len(), 1, "one QEMU for one sandbox");
    agent.destroy(id).await;
    assert_gone(&agent, id, slot).await;
    assert!(vms_under(&agent.data_dir).is_empty(), "QEMU still running");
    let again: Result<pb::DestroySandboxResponse, _> = agent
        .call(
            "DestroySandbox",
            &pb::DestroySandboxRequest {
                sandbox_id: id.into(),
            },
        )
        .await;
    assert_eq!(
        again.expect_err("second destroy").code.as_str(),
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_sandboxes_at_once() {
    require_vm!();
    let agent = Agent::start("210-219");
    let ids: Vec<String> = (0..4).map(|i| format!("cl-e2e-four-{i}")).collect();
    let created = futures::future::join_all(ids.iter().map(|id| agent.create(id, 256))).await;
    let slots: Vec<u32> = created.iter().map(|c| slot_of(&c.host_ip)).collect();
    let mut distinct = slots.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "slots {slots:?}");
    let outs = futures::future::join_all(
        ids.iter()
            .map(|id| agent.exec(id, "echo $WRENN_SANDBOX_ID; echo x > /tmp/mine; ls /tmp")),
    )
    .await;
    for (id, out) in ids.iter().zip(&outs) {
        let s = String::from_utf8_lossy(&out.stdout);
        assert_eq!(s.lines().next(), Some(id.as_str()), "{s}");
    }
    assert_eq!(agent.list().await.sandboxes.len(), 4);
    futures::future::join_all(ids.iter().map(|id| agent.destroy(id))).await;
    for (id, slot) in ids.iter().zip(slots) {
        assert_gone(&agent, id, slot).await;
    }
    assert!(vms_under(&agent.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_finds_its_sandboxes() {
    require_vm!();
    let mut agent = Agent::start("220-229");
    let id = "cl-e2e-restart";
    let created = agent.create(id, 256).await;
    let slot = slot_of(&created.host_ip);
    let out = agent
        .exec(
            id,
            "echo before-crash > /home/user/note; cat /home/user/note",
        )
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "before-crash");

    // A crash: the VM keeps running, and the next agent adopts it.
    agent.crash();
    assert_eq!(
        vms_under(&agent.data_dir).len(),
        1,
        "the VM died with the agent"
    );
    agent.spawn();
    let listed = agent.list().await;
    assert_eq!(
        listed
            .sandboxes
            .iter()
            .map(|s| s.sandbox_id.as_str())
            .collect::<Vec<_>>(),
        [id]
    );
    let out = agent.exec(id, "cat /home/user/note").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "before-crash");

    // A clean stop pauses it (the host may be going down); the next agent finds it paused.
    agent.stop();
    assert!(
        vms_under(&agent.data_dir).is_empty(),
        "a VM outlived the stop"
    );
    assert_eq!(slot_leftovers(slot), Vec::<String>::new());
    agent.spawn();
    let listed = agent.list().await;
    assert_eq!(
        listed
            .sandboxes
            .iter()
            .map(|s| (s.sandbox_id.as_str(), s.status.as_str()))
            .collect::<Vec<_>>(),
        [(id, "paused")]
    );
    let resumed = agent.resume(id).await.expect("resume after restart");
    let slot = slot_of(&resumed.host_ip);
    let out = agent.exec(id, "cat /home/user/note").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "before-crash");

    agent.destroy(id).await;
    assert_gone(&agent, id, slot).await;
    assert!(vms_under(&agent.data_dir).is_empty());
}
