//! End-to-end pause, resume and snapshot templates on real QEMU guests through the agent's RPC
//! service: what ran before a pause runs after it, nothing leaks over many cycles, a failed pause
//! keeps the sandbox running, a damaged snapshot is refused, templates serve many sandboxes.

mod support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Agent, eventually, slot_leftovers, slot_of, vms_under};
use wrenn_protocol::envd::rpc_path;
use wrenn_protocol::hostagent::{self as pb, SERVICE};

fn status_of(list: &pb::ListSandboxesResponse, id: &str) -> Option<String> {
    list.sandboxes
        .iter()
        .find(|s| s.sandbox_id == id)
        .map(|s| s.status.clone())
}

fn stdout(r: &pb::ExecResponse) -> String {
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// Starts a counter that ticks every 100 ms into /tmp/counter, detached from the exec.
async fn start_counter(agent: &Agent, id: &str) {
    let out = agent
        .exec(
            id,
            // Written aside and renamed, so a read never sees the file truncated and empty.
            "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; \
             mv /tmp/counter.new /tmp/counter; sleep 0.1; done' \
             >/dev/null 2>&1 < /dev/null & sleep 0.5; cat /tmp/counter",
        )
        .await;
    assert!(
        stdout(&out).parse::<u64>().is_ok(),
        "counter not started: {out:?}"
    );
}

async fn counter(agent: &Agent, id: &str) -> u64 {
    let out = agent.exec(id, "cat /tmp/counter").await;
    stdout(&out)
        .parse()
        .unwrap_or_else(|_| panic!("counter unreadable: {out:?}"))
}

/// GET through the agent's port proxy.
async fn proxy_get(agent: &Agent, id: &str, port: u16, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}/proxy/{id}/{port}{path}", agent.port);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    match client.get(&url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn pty_input(agent: &Agent, id: &str, tag: &str, data: &[u8]) {
    let _: pb::PtySendInputResponse = agent
        .call(
            "PtySendInput",
            &pb::PtySendInputRequest {
                sandbox_id: id.into(),
                tag: tag.into(),
                data: data.to_vec().into(),
            },
        )
        .await
        .expect("pty input");
}

async fn pty_attach(
    agent: &Agent,
    id: &str,
    tag: &str,
    cmd: &str,
) -> wrenn_protocol::connect::ResponseStream<pb::PtyAttachResponse> {
    agent
        .client
        .server_stream::<_, pb::PtyAttachResponse>(
            &rpc_path(SERVICE, "PtyAttach"),
            &pb::PtyAttachRequest {
                sandbox_id: id.into(),
                tag: tag.into(),
                cmd: cmd.into(),
                cols: 80,
                rows: 24,
                ..Default::default()
            },
        )
        .await
        .expect("pty attach")
}

async fn pty_wait_for(
    stream: &mut wrenn_protocol::connect::ResponseStream<pb::PtyAttachResponse>,
    needle: &str,
) -> String {
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = stream.message().await {
            if let Ok(pb::PtyAttachResponse {
                event: Some(pb::pty_attach_response::Event::Output(o)),
            }) = ev
            {
                seen.push_str(&String::from_utf8_lossy(&o.data));
                if seen.contains(needle) {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "PTY never printed {needle:?}; saw {seen:?}"
    );
    seen
}

/// The first byte offset of `path` that holds data (not a hole), past `skip` bytes of data.
fn data_offset(path: &Path, skip: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("open");
    // SAFETY: lseek on an fd we own; no memory is touched.
    let off = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    assert!(off >= 0, "no data in {}", path.display());
    off as u64 + skip
}

fn sandbox_dir(agent: &Agent, id: &str) -> PathBuf {
    agent.data_dir.join("sandboxes").join(id)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sandbox_resumes_exactly_where_it_was() {
    require_vm!();
    let agent = Agent::start("230-234");
    let id = "cl-snap-state";
    let created = agent.create(id, 256).await;
    let slot = slot_of(&created.host_ip);

    start_counter(&agent, id).await;
    agent
        .exec(
            id,
            "echo kept-across-pause > /home/user/note; cd /tmp && \
             setsid python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 < /dev/null &",
        )
        .await;
    eventually(Duration::from_secs(30), "guest web server", || async {
        (proxy_get(&agent, id, 8000, "/counter").await.0 == 200).then_some(())
    })
    .await;
    let mut pty = pty_attach(&agent, id, "keep", "/bin/bash").await;
    pty_input(
        &agent,
        id,
        "keep",
        b"export KEPT=pty-$((40+2)); echo set-$KEPT\n",
    )
    .await;
    pty_wait_for(&mut pty, "set-pty-42").await;
    drop(pty);
    let before = counter(&agent, id).await;

    agent.pause(id).await.expect("pause");
    let list = agent.list().await;
    assert_eq!(status_of(&list, id).as_deref(), Some("paused"));
    assert!(
        vms_under(&agent.data_dir).is_empty(),
        "the VM outlived the pause"
    );
    assert_eq!(
        slot_leftovers(slot),
        Vec::<String>::new(),
        "the pause kept its network"
    );
    // Refused while paused, with a state error the control plane maps to 409.
    let refused: Result<pb::ExecResponse, _> = agent
        .call(
            "Exec",
            &pb::ExecRequest {
                sandbox_id: id.into(),
                cmd: "true".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        refused.expect_err("exec while paused").code.as_str(),
        "failed_precondition"
    );
    let again = agent.pause(id).await.expect_err("second pause");
    assert_eq!(again.code.as_str(), "failed_precondition");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let resumed = agent.resume(id).await.expect("resume");
    assert_eq!(resumed.status, "running");
    let list = agent.list().await;
    assert_eq!(status_of(&list, id).as_deref(), Some("running"));

    // The counter process kept its count and keeps counting.
    let after = counter(&agent, id).await;
    assert!(after >= before, "counter went back: {before} -> {after}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = counter(&agent, id).await;
    assert!(
        later > after,
        "counter stopped after resume: {after} -> {later}"
    );
    // The file, the web server through the proxy, the PTY session by its tag.
    assert_eq!(
        stdout(&agent.exec(id, "cat /home/user/note").await),
        "kept-across-pause"
    );
    let (status, body) = proxy_get(&agent, id, 8000, "/counter").await;
    assert_eq!(status, 200, "web server after resume: {body}");
    let mut pty = pty_attach(&agent, id, "keep", "").await;
    pty_input(&agent, id, "keep", b"echo again-$KEPT\n").await;
    pty_wait_for(&mut pty, "again-pty-42").await;

    agent.destroy(id).await;
    assert!(!sandbox_dir(&agent, id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_pause_resume_cycles_leak_nothing() {
    require_vm!();
    let agent = Agent::start("235-239");
    let id = "cl-snap-cycles";
    agent.create(id, 256).await;
    start_counter(&agent, id).await;
    let agent_pid = agent.pid();
    let dir = sandbox_dir(&agent, id);
    let mut baseline: Option<(usize, u64, Vec<String>)> = None;
    let mut last = 0;
    for cycle in 0..20 {
        agent
            .pause(id)
            .await
            .unwrap_or_else(|e| panic!("pause {cycle}: {e:?}\n{}", agent.log_tail()));
        let netns = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().to_string();
                        (235..=239).any(|s| n == format!("wrenn-ns-{s}"))
                    })
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(netns, 0, "cycle {cycle}: a namespace outlived the pause");
        assert!(
            vms_under(&agent.data_dir).is_empty(),
            "cycle {cycle}: VM left"
        );
        let paused_files = files_in(&dir);
        let r = agent
            .resume(id)
            .await
            .unwrap_or_else(|e| panic!("resume {cycle}: {e:?}\n{}", agent.log_tail()));
        let slot = slot_of(&r.host_ip);
        assert!((235..=239).contains(&slot));
        assert_eq!(vms_under(&agent.data_dir).len(), 1, "cycle {cycle}: VMs");
        let now = counter(&agent, id).await;
        assert!(
            now >= last,
            "cycle {cycle}: counter went back {last} -> {now}"
        );
        last = now;
        // Measured after a few cycles, once pools and caches are warm.
        let sample = (fd_count(agent_pid), rss_kib(agent_pid), paused_files);
        if cycle == 4 {
            baseline = Some(sample);
        } else if cycle > 4 {
            let (fds, rss, files) = baseline.as_ref().expect("baseline");
            assert!(
                sample.0 <= fds + 8,
                "cycle {cycle}: agent fds grew {fds} -> {}",
                sample.0
            );
            assert!(
                sample.1 <= rss + 20 * 1024,
                "cycle {cycle}: agent RSS grew {rss} KiB -> {} KiB",
                sample.1
            );
            assert_eq!(&sample.2, files, "cycle {cycle}: snapshot files changed");
        }
    }
    agent.destroy(id).await;
    assert!(vms_under(&agent.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_that_fails_midway_leaves_the_sandbox_running() {
    require_vm!();
    let agent = Agent::start("240-242");
    let id = "cl-snap-fail";
    agent.create(id, 256).await;
    start_counter(&agent, id).await;
    let dir = sandbox_dir(&agent, id);
    // An immutable folder: the device state cannot be written once the VM is frozen.
    let chattr = |flag: &str| {
        let ok = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&dir)
            .status()
            .expect("chattr")
            .success();
        assert!(ok, "chattr {flag}");
    };
    chattr("+i");
    let failed = agent.pause(id).await;
    chattr("-i");
    let err = failed.expect_err("pause into an immutable folder");
    assert!(
        !err.message.is_empty() && err.code.as_str() != "failed_precondition",
        "{err:?}"
    );
    assert_eq!(
        status_of(&agent.list().await, id).as_deref(),
        Some("running")
    );
    let before = counter(&agent, id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        counter(&agent, id).await > before,
        "the guest stayed frozen"
    );
    // And the next pause works.
    agent.pause(id).await.expect("pause after the failure");
    agent.resume(id).await.expect("resume");
    assert!(counter(&agent, id).await >= before);
    agent.destroy(id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_refused() {
    require_vm!();
    let agent = Agent::start("243-245");
    let id = "cl-snap-damaged";
    agent.create(id, 256).await;
    agent.pause(id).await.expect("pause");
    let memory = sandbox_dir(&agent, id).join("memory.raw");
    let at = data_offset(&memory, 4096 * 7 + 100);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&memory)
        .expect("open memory");
    f.seek(SeekFrom::Start(at)).expect("seek");
    let mut b = [0u8; 1];
    f.read_exact(&mut b).expect("read");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&[b[0] ^ 0x5a]).expect("flip");
    drop(f);

    let err = agent
        .resume(id)
        .await
        .expect_err("resume of a damaged snapshot");
    assert_eq!(err.code.as_str(), "data_loss", "{err:?}");
    assert!(err.message.contains("damaged"), "{}", err.message);
    assert_eq!(
        status_of(&agent.list().await, id).as_deref(),
        Some("paused")
    );
    assert!(
        vms_under(&agent.data_dir).is_empty(),
        "a VM ran the garbage"
    );
    agent.destroy(id).await;
    assert!(!sandbox_dir(&agent, id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_serves_many_sandboxes() {
    require_vm!();
    let agent = Agent::start("246-249");
    let src = "cl-snap-src";
    agent.create(src, 256).await;
    start_counter(&agent, src).await;
    agent.exec(src, "echo from-template > /home/user/t").await;

    let made: pb::CreateSnapshotResponse = agent
        .call(
            "CreateSnapshot",
            &pb::CreateSnapshotRequest {
                sandbox_id: src.into(),
                team_id: "team-test".into(),
                template_id: "tpl-1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("create snapshot");
    assert!(made.size_bytes > 0);
    // The source keeps running.
    assert_eq!(
        status_of(&agent.list().await, src).as_deref(),
        Some("running")
    );
    let c = counter(&agent, src).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(counter(&agent, src).await > c);
    let dup: Result<pb::CreateSnapshotResponse, _> = agent
        .call(
            "CreateSnapshot",
            &pb::CreateSnapshotRequest {
                sandbox_id: src.into(),
                template_id: "tpl-1".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        dup.expect_err("same template id").code.as_str(),
        "already_exists"
    );

    // A spare copy of the template's RAM file is made ahead for each next sandbox.
    let tdir = agent.data_dir.join("templates").join("tpl-1");
    let spare_ino = || async {
        eventually(Duration::from_secs(20), "a spare RAM file", || {
            let meta = std::fs::metadata(tdir.join("spare-memory.raw")).ok();
            async move { meta.map(|m| m.ino()) }
        })
        .await
    };
    let mut spare = spare_ino().await;
    for child in ["cl-snap-child-a", "cl-snap-child-b"] {
        let req = pb::CreateSandboxRequest {
            sandbox_id: child.into(),
            template_id: "tpl-1".into(),
            team_id: "team-test".into(),
            ..Default::default()
        };
        let r: pb::CreateSandboxResponse = agent
            .call("CreateSandbox", &req)
            .await
            .unwrap_or_else(|e| panic!("create {child}: {e:?}\n{}", agent.log_tail()));
        assert_eq!(r.status, "running");
        assert_eq!(
            stdout(&agent.exec(child, "cat /home/user/t").await),
            "from-template"
        );
        let c = counter(&agent, child).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            counter(&agent, child).await > c,
            "{child}: counter not running"
        );
        agent
            .exec(child, &format!("echo {child} > /home/user/who"))
            .await;
        let ram = std::fs::metadata(sandbox_dir(&agent, child).join("memory.raw")).expect("ram");
        assert_eq!(ram.ino(), spare, "{child} did not get the spare RAM file");
        spare = spare_ino().await;
    }
    // Independent copies.
    assert_eq!(
        stdout(&agent.exec("cl-snap-child-a", "cat /home/user/who").await),
        "cl-snap-child-a"
    );
    assert_eq!(
        stdout(
            &agent
                .exec(src, "cat /home/user/who 2>&1 || echo none")
                .await
        )
        .lines()
        .last()
        .unwrap_or_default(),
        "none"
    );

    // A template from a paused sandbox; the source stays paused.
    agent.pause("cl-snap-child-b").await.expect("pause child");
    let _: pb::CreateSnapshotResponse = agent
        .call(
            "CreateSnapshot",
            &pb::CreateSnapshotRequest {
                sandbox_id: "cl-snap-child-b".into(),
                template_id: "tpl-2".into(),
                ..Default::default()
            },
        )
        .await
        .expect("snapshot of a paused sandbox");
    assert_eq!(
        status_of(&agent.list().await, "cl-snap-child-b").as_deref(),
        Some("paused")
    );

    for t in ["tpl-1", "tpl-2"] {
        let _: pb::DeleteSnapshotResponse = agent
            .call(
                "DeleteSnapshot",
                &pb::DeleteSnapshotRequest {
                    template_id: t.into(),
                    ..Default::default()
                },
            )
            .await
            .expect("delete template");
    }
    let gone: Result<pb::DeleteSnapshotResponse, _> = agent
        .call(
            "DeleteSnapshot",
            &pb::DeleteSnapshotRequest {
                template_id: "tpl-1".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(gone.expect_err("deleted twice").code.as_str(), "not_found");
    let left: Vec<_> = std::fs::read_dir(agent.data_dir.join("templates"))
        .expect("templates folder")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "deleted templates left {left:?}");
    // Sandboxes made from a template outlive it.
    assert_eq!(
        stdout(&agent.exec("cl-snap-child-a", "cat /home/user/t").await),
        "from-template"
    );
    for id in [src, "cl-snap-child-a", "cl-snap-child-b"] {
        agent.destroy(id).await;
    }
    assert!(vms_under(&agent.data_dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sandbox_is_paused_not_destroyed() {
    require_vm!();
    let agent = Agent::start("250-251");
    let id = "cl-snap-idle";
    let req = pb::CreateSandboxRequest {
        sandbox_id: id.into(),
        memory_mb: 256,
        timeout_sec: 2,
        team_id: "team-test".into(),
        ..Default::default()
    };
    let _: pb::CreateSandboxResponse = agent.call("CreateSandbox", &req).await.expect("create");
    agent.exec(id, "echo idle > /home/user/idle").await;
    let list = eventually(
        Duration::from_secs(60),
        "the idle timer pauses it",
        || async {
            let l = agent.list().await;
            (status_of(&l, id).as_deref() == Some("paused")).then_some(l)
        },
    )
    .await;
    assert_eq!(list.auto_paused_sandbox_ids, vec![id.to_string()]);
    assert!(list.ttl_destroyed_sandbox_ids.is_empty());
    agent.resume(id).await.expect("resume");
    assert_eq!(stdout(&agent.exec(id, "cat /home/user/idle").await), "idle");
    assert!(agent.list().await.auto_paused_sandbox_ids.is_empty());
    agent.destroy(id).await;
}
