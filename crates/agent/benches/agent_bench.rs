//! Host agent figures on this machine: cold create-to-first-exec (median of 5), per-sandbox host
//! memory beyond guest RAM, and the agent's own RSS, with the accelerator named.
//!
//! `cargo bench -p wrenn-agent --bench agent_bench` (as root, with the guest image built).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{Agent, vms_under};
use wrenn_agent::vmm::Vmm;
use wrenn_agent::vmm::qemu::{Accel, Qemu};
use wrenn_protocol::hostagent as pb;

const RUNS: usize = 5;
const MEMORY_MB: i32 = 512;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// RSS (kB) of every mapping of `pid` except guest RAM (the anonymous mapping of exactly the
/// guest's memory size): what a sandbox costs the host on top of the memory its guest uses.
fn rss_beyond_guest_ram_kb(pid: u32, guest_mb: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let (a, b) = first.split_once('-').unwrap_or(("0", "0"));
            let size =
                u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0);
            in_guest = size == guest_mb << 20;
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            total += kb;
            if in_guest {
                guest += kb;
            }
        }
    }
    (total - guest, guest)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Some(reason) = support::vm_prerequisites_missing() {
        eprintln!("agent_bench: skipped, needs {reason}");
        return;
    }
    let vmm = Qemu::detect(None, Accel::Auto).expect("qemu").describe();
    let agent = Agent::start("300-309");
    let idle_agent_rss = rss_kb(agent.pid());

    let mut create_ms = Vec::new();
    let mut first_exec_ms = Vec::new();
    for i in 0..RUNS {
        let id = format!("cl-bench-{i}");
        let t0 = Instant::now();
        agent.create(&id, MEMORY_MB).await;
        let created = t0.elapsed();
        let out = agent.exec(&id, "true").await;
        assert_eq!(out.exit_code, 0);
        let total = t0.elapsed();
        create_ms.push(created.as_secs_f64() * 1e3);
        first_exec_ms.push(total.as_secs_f64() * 1e3);
        agent.destroy(&id).await;
        println!(
            "run {}: create {:.0} ms, create+first exec {:.0} ms",
            i + 1,
            created.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        );
    }

    // Memory: two idle sandboxes, measured after they settle.
    for i in 0..2 {
        agent.create(&format!("cl-bench-mem-{i}"), MEMORY_MB).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut overhead = Vec::new();
    let mut guest_touched = Vec::new();
    for pid in vms_under(&agent.data_dir) {
        let (beyond, guest) = rss_beyond_guest_ram_kb(pid, MEMORY_MB as u64);
        overhead.push(beyond as f64 / 1024.0);
        guest_touched.push(guest as f64 / 1024.0);
    }
    let busy_agent_rss = rss_kb(agent.pid());
    let list: pb::ListSandboxesResponse = agent.list().await;
    for s in &list.sandboxes {
        agent.destroy(&s.sandbox_id).await;
    }

    println!();
    println!("vmm:                                  {vmm}");
    println!(
        "cold create (median of {RUNS}):          {:.0} ms",
        median(create_ms)
    );
    println!(
        "cold create to first exec (median {RUNS}): {:.0} ms",
        median(first_exec_ms)
    );
    println!(
        "host memory per sandbox beyond guest RAM: {:.1} MiB (guest RAM touched {:.0} MiB of {MEMORY_MB})",
        median(overhead),
        median(guest_touched)
    );
    println!(
        "agent RSS:                             {:.1} MiB idle, {:.1} MiB with 2 sandboxes",
        idle_agent_rss as f64 / 1024.0,
        busy_agent_rss as f64 / 1024.0
    );
}
