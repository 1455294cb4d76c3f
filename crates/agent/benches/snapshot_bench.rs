//! Pause and resume figures on this machine, for 256 MiB and 1 GiB guests: pause time, snapshot
//! size on disk, resume-to-first-exec, and create-from-template (with the template's spare RAM
//! file ready, and without) against a cold boot, all to the first exec. Medians of `RUNS`; each
//! guest also has `BUSY_FRACTION` of its RAM dirtied by a process before the measurements, so the
//! snapshot holds more than a fresh boot's pages.
//!
//! `cargo bench -p wrenn-agent --bench snapshot_bench` (as root, with the guest image built).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::Agent;
use wrenn_protocol::hostagent as pb;

const RUNS: usize = 5;
/// Part of guest RAM a process fills (and keeps) before the measurements.
const BUSY_FRACTION: f64 = 0.25;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn allocated_mb(dir: &std::path::Path, skip: &str) -> f64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with(skip))
                .filter_map(|e| e.metadata().ok())
                .map(|m| (m.blocks() * 512) as f64 / 1048576.0)
                .sum()
        })
        .unwrap_or(0.0)
}

async fn call<Req, Resp>(agent: &Agent, method: &str, req: &Req) -> Resp
where
    Req: wrenn_protocol::connect::Message,
    Resp: wrenn_protocol::connect::Message,
{
    match agent.call(method, req).await {
        Ok(r) => r,
        Err(e) => panic!("{method}: {e:?}\n{}", agent.log_tail()),
    }
}

async fn first_exec(agent: &Agent, id: &str) {
    let out = agent.exec(id, "echo ready").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ready");
}

async fn create_from_template(agent: &Agent, id: &str, template: &str) {
    let _: pb::CreateSandboxResponse = call(
        agent,
        "CreateSandbox",
        &pb::CreateSandboxRequest {
            sandbox_id: id.into(),
            template_id: template.into(),
            ..Default::default()
        },
    )
    .await;
}

async fn one_size(agent: &Agent, memory_mb: i32, tag: &str) {
    // Cold boots: create to first exec.
    let mut cold = Vec::new();
    for i in 0..RUNS {
        let id = format!("bench-cold-{tag}-{i}");
        let t = Instant::now();
        agent.create(&id, memory_mb).await;
        first_exec(agent, &id).await;
        cold.push(t.elapsed().as_secs_f64() * 1000.0);
        agent.destroy(&id).await;
    }

    let id = format!("bench-snap-{tag}");
    agent.create(&id, memory_mb).await;
    let busy_mb = (f64::from(memory_mb) * BUSY_FRACTION) as i32;
    agent
        .exec(
            &id,
            &format!(
                "setsid python3 -c 'import time; b=bytearray({busy_mb}*1024*1024); \
                 [b.__setitem__(i, (i//4096)%251+1) for i in range(0, len(b), 4096)]; time.sleep(1e9)' \
                 >/dev/null 2>&1 </dev/null & sleep 3"
            ),
        )
        .await;
    let dir = agent.data_dir.join("sandboxes").join(&id);
    let (mut pause, mut resume, mut size) = (Vec::new(), Vec::new(), Vec::new());
    let (mut resume_rpc, mut after_resume_exec) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let _: pb::PauseSandboxResponse = call(
            agent,
            "PauseSandbox",
            &pb::PauseSandboxRequest {
                sandbox_id: id.clone(),
            },
        )
        .await;
        pause.push(t.elapsed().as_secs_f64() * 1000.0);
        size.push(allocated_mb(&dir, "rootfs"));
        let t = Instant::now();
        let _: pb::ResumeSandboxResponse = call(
            agent,
            "ResumeSandbox",
            &pb::ResumeSandboxRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            },
        )
        .await;
        resume_rpc.push(t.elapsed().as_secs_f64() * 1000.0);
        let e = Instant::now();
        first_exec(agent, &id).await;
        after_resume_exec.push(e.elapsed().as_secs_f64() * 1000.0);
        resume.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    let template = format!("bench-tpl-{tag}");
    let made: pb::CreateSnapshotResponse = call(
        agent,
        "CreateSnapshot",
        &pb::CreateSnapshotRequest {
            sandbox_id: id.clone(),
            template_id: template.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut from_template = Vec::new();
    for i in 0..RUNS {
        // Creates spaced out as by users: the spare RAM file copied ahead is ready.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let child = format!("bench-child-{tag}-{i}");
        let t = Instant::now();
        create_from_template(agent, &child, &template).await;
        first_exec(agent, &child).await;
        from_template.push(t.elapsed().as_secs_f64() * 1000.0);
        agent.destroy(&child).await;
    }
    // A burst: two creates back to back, so the second finds no spare ready and copies the RAM
    // file itself (while the refill for the first competes with it).
    let mut burst = Vec::new();
    for i in 0..RUNS {
        let (first, second) = (
            format!("bench-burst-{tag}-{i}a"),
            format!("bench-burst-{tag}-{i}b"),
        );
        create_from_template(agent, &first, &template).await;
        let t = Instant::now();
        create_from_template(agent, &second, &template).await;
        first_exec(agent, &second).await;
        burst.push(t.elapsed().as_secs_f64() * 1000.0);
        agent.destroy(&first).await;
        agent.destroy(&second).await;
        // Let the spare for the next round be copied.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let _: pb::DeleteSnapshotResponse = call(
        agent,
        "DeleteSnapshot",
        &pb::DeleteSnapshotRequest {
            template_id: template,
            ..Default::default()
        },
    )
    .await;
    agent.destroy(&id).await;

    // The agent's own account of where the time went (its log lines, last run of each kind).
    let log = std::fs::read_to_string(agent.data_dir.join("agent-test.log")).unwrap_or_default();
    for what in [
        "sandbox paused",
        "sandbox resumed from a snapshot",
        "sandbox created from a template",
    ] {
        if let Some(line) = log.lines().rev().find(|l| l.contains(what)) {
            println!(
                "  agent: {}",
                line.split_once("INFO").map_or(line, |(_, r)| r).trim()
            );
        }
    }
    let cold_ms = median(cold);
    let resume_ms = median(resume.clone());
    let tpl_ms = median(from_template.clone());
    println!("snapshot_bench {tag} ({memory_mb} MiB guest, {busy_mb} MiB dirtied by a process):");
    println!(
        "  pause                      median {:7.0} ms",
        median(pause)
    );
    println!(
        "  snapshot on disk           median {:7.1} MiB (memory file allocation + device state + header; disk excluded)",
        median(size)
    );
    println!(
        "  template size              {:7.1} MiB (with its disk)",
        made.size_bytes as f64 / 1048576.0
    );
    println!("  resume to first exec       median {resume_ms:7.0} ms  (runs: {resume:.0?})");
    println!(
        "    of which the resume RPC  median {:7.0} ms, then the first exec {:.0} ms",
        median(resume_rpc),
        median(after_resume_exec)
    );
    println!("  create from template       median {tpl_ms:7.0} ms  (runs: {from_template:.0?})");
    println!(
        "    with no spare ready      median {:7.0} ms  (the second of two creates back to back: it copies the RAM file itself)",
        median(burst)
    );
    println!("  cold boot to first exec    median {cold_ms:7.0} ms");
    println!(
        "  speed-up vs cold boot      resume {:.1}x, from template {:.1}x",
        cold_ms / resume_ms,
        cold_ms / tpl_ms
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Some(reason) = support::vm_prerequisites_missing() {
        eprintln!("snapshot_bench: skipped, needs {reason}");
        return;
    }
    let agent = Agent::start("260-269");
    println!(
        "snapshot_bench: {} runs per figure; VMM {}",
        RUNS,
        wrenn_agent::vmm::qemu::Qemu::detect(None, wrenn_agent::vmm::qemu::Accel::Auto)
            .map(|q| wrenn_agent::vmm::Vmm::describe(&q))
            .unwrap_or_default()
    );
    one_size(&agent, 256, "256m").await;
    one_size(&agent, 1024, "1g").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
}
