//! envd benchmark: prints exec round trip, file throughput, idle RSS and port-forward latency.
//! Run with `cargo bench -p envd`. Targets: round trip < 2 ms, throughput > 1 GB/s on loopback,
//! idle RSS < 10 MB, forwarding visible within 300 ms.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use futures::StreamExt;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn exec_round_trip(envd: &Envd) {
    let client = envd.client();
    for _ in 0..20 {
        run(&client, cmd("true", &[])).await;
    }
    let mut samples = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let c = run(&client, cmd("true", &[])).await;
        samples.push(t.elapsed());
        assert_eq!(c.end.unwrap().exit_code, 0);
    }
    samples.sort();
    println!(
        "exec round trip of `true`: median {:.2} ms, p99 {:.2} ms (300 runs; target < 2 ms)",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3
    );
}

/// Upload and download of 1 GiB through envd, the file kept in `dir`: tmpfs measures envd itself,
/// a disk directory adds the disk's write speed.
async fn throughput(envd: &Envd, dir: &str, label: &str) {
    let dir = tempfile::tempdir_in(dir).unwrap();
    let dest = dir.path().join("bench.bin");
    let url = envd.url(&format!("/files?path={}", dest.display()));
    let len: u64 = 1 << 30;
    let chunk = bytes::Bytes::from(vec![0xA5u8; 1 << 20]);
    let http = reqwest::Client::new();
    let mut up = Vec::new();
    let mut down = Vec::new();
    for _ in 0..3 {
        let c = chunk.clone();
        let body = futures::stream::iter(
            (0..len / (1 << 20)).map(move |_| Ok::<_, std::io::Error>(c.clone())),
        );
        let t = Instant::now();
        let r = http
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        up.push(len as f64 / t.elapsed().as_secs_f64() / 1e9);

        let t = Instant::now();
        let r = http.get(&url).send().await.unwrap();
        let mut n = 0u64;
        let mut s = r.bytes_stream();
        while let Some(c) = s.next().await {
            n += c.unwrap().len() as u64;
        }
        assert_eq!(n, len);
        down.push(len as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "{label}: upload 1 GiB median {:.2} GB/s (best {:.2}); download 1 GiB median {:.2} GB/s (best {:.2}) (target > 1 GB/s)",
        median(&mut up.clone()),
        best(&up),
        median(&mut down.clone()),
        best(&down)
    );
}

async fn forwarding(envd: &Envd, forward_ip: &str) {
    let mut samples = Vec::new();
    for _ in 0..10 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = Instant::now();
        loop {
            if tokio::net::TcpStream::connect((forward_ip, port))
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "forward never appeared"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(t.elapsed());
        drop(listener);
    }
    samples.sort();
    let _ = envd;
    println!(
        "new loopback listener -> forwarded port answering: median {:.0} ms, max {:.0} ms (10 runs; target < 300 ms)",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3
    );
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let forward_ip = "127.0.0.9";
        let envd = Envd::start_with(&["--forward-address", forward_ip]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "envd idle RSS: {:.1} MB (target < 10 MB)",
            rss_kib(envd.pid()) as f64 / 1024.0
        );
        exec_round_trip(&envd).await;
        forwarding(&envd, forward_ip).await;
        throughput(&envd, "/dev/shm", "files on tmpfs (envd itself)").await;
        let disk = std::env::var("WRENN_TEST_BIG_DIR").unwrap_or_else(|_| "/var/tmp".into());
        throughput(&envd, &disk, &format!("files on disk ({disk})")).await;
        println!(
            "envd RSS after the runs: {:.1} MB",
            rss_kib(envd.pid()) as f64 / 1024.0
        );
    });
}
