//! Guest metrics for `GET /metrics`: CPU, memory and root file system usage.
//!
//! Everything is read on demand; CPU usage is the busy share since the previous request, so no
//! background sampler runs and an idle sandbox costs nothing.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const MIB: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("statvfs {path}: {source}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{file}: no {field}")]
    Missing {
        file: &'static str,
        field: &'static str,
    },
    #[error("{file}: bad value for {field}")]
    Malformed {
        file: &'static str,
        field: &'static str,
    },
}

/// The body of `GET /metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Unix seconds.
    pub ts: i64,
    pub cpu_count: u32,
    /// Busy share of all CPUs since the previous sample, 0 to 100.
    pub cpu_used_pct: f32,
    pub mem_total_mib: u64,
    pub mem_used_mib: u64,
    /// Bytes.
    pub mem_total: u64,
    /// Bytes: MemTotal − MemAvailable.
    pub mem_used: u64,
    /// Bytes used on the root file system.
    pub disk_used: u64,
    /// Bytes.
    pub disk_total: u64,
}

/// From `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

impl MemInfo {
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }
}

/// Parses `/proc/meminfo`. Kernels older than 3.14 lack `MemAvailable`; it is then estimated as
/// `MemFree + Buffers + Cached`.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, MetricsError> {
    const FILE: &str = "/proc/meminfo";
    let mut total = None;
    let mut available = None;
    let mut estimate: Option<u64> = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let field: &'static str = match key.trim() {
            "MemTotal" => "MemTotal",
            "MemAvailable" => "MemAvailable",
            "MemFree" => "MemFree",
            "Buffers" => "Buffers",
            "Cached" => "Cached",
            _ => continue,
        };
        let bytes = parse_kib(rest).ok_or(MetricsError::Malformed { file: FILE, field })?;
        match field {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            _ => estimate = Some(estimate.unwrap_or(0).saturating_add(bytes)),
        }
    }
    let total = total.ok_or(MetricsError::Missing {
        file: FILE,
        field: "MemTotal",
    })?;
    let available = available.or(estimate).ok_or(MetricsError::Missing {
        file: FILE,
        field: "MemAvailable",
    })?;
    Ok(MemInfo { total, available })
}

/// `"   16318412 kB"` → bytes.
fn parse_kib(value: &str) -> Option<u64> {
    let mut parts = value.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match (parts.next(), parts.next()) {
        (Some("kB"), None) => n.checked_mul(1024),
        (None, None) => Some(n),
        _ => None,
    }
}

/// The aggregate CPU counters of `/proc/stat`, in clock ticks since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    pub busy: u64,
    pub total: u64,
    /// Online CPUs: the `cpuN` lines (offline CPUs are not listed).
    pub cpu_count: u32,
}

impl CpuSample {
    /// Busy percentage between `prev` and `self`; `None` when no tick elapsed.
    pub fn busy_pct_since(&self, prev: &CpuSample) -> Option<f32> {
        let total = self.total.saturating_sub(prev.total);
        if total == 0 {
            return None;
        }
        let busy = self.busy.saturating_sub(prev.busy).min(total);
        Some((busy as f64 * 100.0 / total as f64) as f32)
    }
}

/// Parses the `cpu` line of `/proc/stat`: `user nice system idle iowait irq softirq steal guest
/// guest_nice`. Idle time is `idle + iowait`; `guest` and `guest_nice` are already counted in
/// `user` and `nice`, so they are left out of the total.
pub fn parse_proc_stat_cpu(text: &str) -> Result<CpuSample, MetricsError> {
    const FILE: &str = "/proc/stat";
    let mut aggregate = None;
    let mut cpu_count = 0u32;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let values: Vec<u64> = fields
                    .take(8)
                    .map(|v| v.parse().ok())
                    .collect::<Option<_>>()
                    .ok_or(MetricsError::Malformed {
                        file: FILE,
                        field: "cpu",
                    })?;
                // user nice system idle are in every kernel since 2.4; the rest may be absent.
                if values.len() < 4 {
                    return Err(MetricsError::Malformed {
                        file: FILE,
                        field: "cpu",
                    });
                }
                let total = values.iter().fold(0u64, |a, &v| a.saturating_add(v));
                let idle = values[3].saturating_add(values.get(4).copied().unwrap_or(0));
                aggregate = Some((total.saturating_sub(idle), total));
            }
            Some(name)
                if name
                    .strip_prefix("cpu")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
            {
                cpu_count = cpu_count.saturating_add(1);
            }
            _ => {}
        }
    }
    let (busy, total) = aggregate.ok_or(MetricsError::Missing {
        file: FILE,
        field: "cpu",
    })?;
    Ok(CpuSample {
        busy,
        total,
        cpu_count,
    })
}

struct CpuState {
    prev: Option<CpuSample>,
    /// Returned again when requests come faster than one clock tick.
    last_pct: f32,
}

/// Takes `Metrics` samples; remembers the previous CPU counters between calls.
pub struct MetricsSampler {
    proc_root: PathBuf,
    disk_path: PathBuf,
    cpu: Mutex<CpuState>,
}

impl std::fmt::Debug for MetricsSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSampler")
            .field("proc_root", &self.proc_root)
            .field("disk_path", &self.disk_path)
            .finish_non_exhaustive()
    }
}

impl Default for MetricsSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsSampler {
    /// Samples `/proc` and the root file system. The CPU counters are read now, so the first
    /// `sample` reports usage since construction.
    pub fn new() -> Self {
        Self::with_paths("/proc", "/")
    }

    /// Like `new`, with another proc root and file system (for tests).
    pub fn with_paths(proc_root: impl Into<PathBuf>, disk_path: impl Into<PathBuf>) -> Self {
        let proc_root = proc_root.into();
        let prev = read_cpu(&proc_root).ok();
        Self {
            proc_root,
            disk_path: disk_path.into(),
            cpu: Mutex::new(CpuState {
                prev,
                last_pct: 0.0,
            }),
        }
    }

    pub fn sample(&self) -> Result<Metrics, MetricsError> {
        let cpu = read_cpu(&self.proc_root)?;
        let cpu_used_pct = {
            let mut state = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
            match state.prev.as_ref().and_then(|p| cpu.busy_pct_since(p)) {
                Some(pct) => {
                    state.prev = Some(cpu);
                    state.last_pct = pct;
                    pct
                }
                None => {
                    state.prev.get_or_insert(cpu);
                    state.last_pct
                }
            }
        };
        let cpu_count = match cpu.cpu_count {
            0 => std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1),
            n => n,
        };

        let meminfo = self.proc_root.join("meminfo");
        let mem = parse_meminfo(&read(&meminfo)?)?;
        let (disk_used, disk_total) = disk_usage(&self.disk_path)?;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(Metrics {
            ts,
            cpu_count,
            cpu_used_pct: cpu_used_pct.clamp(0.0, 100.0),
            mem_total_mib: mem.total / MIB,
            mem_used_mib: mem.used() / MIB,
            mem_total: mem.total,
            mem_used: mem.used(),
            disk_used,
            disk_total,
        })
    }
}

fn read(path: &Path) -> Result<String, MetricsError> {
    std::fs::read_to_string(path).map_err(|source| MetricsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_cpu(proc_root: &Path) -> Result<CpuSample, MetricsError> {
    parse_proc_stat_cpu(&read(&proc_root.join("stat"))?)
}

/// `(used, total)` bytes of the file system holding `path`, counted like `df`.
// The statvfs fields are already u64 on 64-bit Linux but narrower on some 32-bit targets.
#[allow(clippy::useless_conversion)]
fn disk_usage(path: &Path) -> Result<(u64, u64), MetricsError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| MetricsError::Statvfs {
        path: path.to_path_buf(),
        source,
    })?;
    let frag = u64::from(st.fragment_size());
    let blocks = u64::from(st.blocks());
    let free = u64::from(st.blocks_free());
    let total = blocks.saturating_mul(frag);
    let used = blocks.saturating_sub(free).saturating_mul(frag);
    Ok((used, total))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       16318412 kB
MemFree:         1234567 kB
MemAvailable:    8159206 kB
Buffers:          204800 kB
Cached:          4096000 kB
SwapCached:            0 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    const STAT: &str = "cpu  100 20 30 800 50 0 0 0 10 0
cpu0 50 10 15 400 25 0 0 0 5 0
cpu1 50 10 15 400 25 0 0 0 5 0
intr 12345 0 0
ctxt 999
btime 1700000000
processes 42
procs_running 1
";

    #[test]
    fn parses_meminfo() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 16318412 * 1024);
        assert_eq!(m.available, 8159206 * 1024);
        assert_eq!(m.used(), (16318412 - 8159206) * 1024);
    }

    #[test]
    fn estimates_available_memory_on_old_kernels() {
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        let m = parse_meminfo(old).unwrap();
        assert_eq!(m.available, 400 * 1024);
    }

    #[test]
    fn rejects_bad_meminfo() {
        for text in [
            "",
            "garbage\n\n",
            "MemAvailable: 10 kB\n",
            "MemTotal: 10 kB\n",
            "MemTotal: lots kB\nMemAvailable: 1 kB\n",
            "MemTotal: -5 kB\nMemAvailable: 1 kB\n",
            "MemTotal: 10 MB\nMemAvailable: 1 kB\n",
            "MemTotal: 99999999999999999999 kB\nMemAvailable: 1 kB\n",
            "MemTotal: 18446744073709551615 kB\nMemAvailable: 1 kB\n",
        ] {
            assert!(parse_meminfo(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn parses_proc_stat() {
        let s = parse_proc_stat_cpu(STAT).unwrap();
        // guest (10) is part of user already: total = 100+20+30+800+50.
        assert_eq!(s.total, 1000);
        assert_eq!(s.busy, 150);
        assert_eq!(s.cpu_count, 2);
        // Old kernels print only four values.
        let old = parse_proc_stat_cpu("cpu 1 2 3 4\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!((old.busy, old.total, old.cpu_count), (6, 10, 1));
    }

    #[test]
    fn rejects_bad_proc_stat() {
        for text in [
            "",
            "cpu0 1 2 3 4\n",
            "cpu 1 2 3\n",
            "cpu 1 two 3 4\n",
            "cpu -1 2 3 4\n",
            "cpux 1 2 3 4\n",
        ] {
            assert!(parse_proc_stat_cpu(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn busy_percentage_between_samples() {
        let a = CpuSample {
            busy: 100,
            total: 1000,
            cpu_count: 2,
        };
        let b = CpuSample {
            busy: 175,
            total: 1100,
            cpu_count: 2,
        };
        assert_eq!(b.busy_pct_since(&a), Some(75.0));
        assert_eq!(a.busy_pct_since(&a), None);
        // Counters going backwards (they should not) give 0 or None, never nonsense.
        assert_eq!(a.busy_pct_since(&b), None);
        let odd = CpuSample {
            busy: 50,
            total: 1200,
            cpu_count: 2,
        };
        assert_eq!(odd.busy_pct_since(&b), Some(0.0));
    }

    #[test]
    fn samples_a_fake_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meminfo"), MEMINFO).unwrap();
        std::fs::write(dir.path().join("stat"), STAT).unwrap();
        let sampler = MetricsSampler::with_paths(dir.path(), dir.path());
        let first = sampler.sample().unwrap();
        assert_eq!(first.cpu_used_pct, 0.0);
        assert_eq!(first.cpu_count, 2);
        assert_eq!(first.mem_total_mib, 16318412 / 1024);

        std::fs::write(
            dir.path().join("stat"),
            "cpu  150 20 30 850 50 0 0 0 0 0\ncpu0 1 1 1 1\n",
        )
        .unwrap();
        let second = sampler.sample().unwrap();
        assert_eq!(second.cpu_used_pct, 50.0);
        assert_eq!(second.cpu_count, 1);
        // No tick since: the last figure again.
        assert_eq!(sampler.sample().unwrap().cpu_used_pct, 50.0);

        std::fs::write(dir.path().join("meminfo"), "nonsense").unwrap();
        assert!(matches!(
            sampler.sample(),
            Err(MetricsError::Missing { .. })
        ));
        let missing = MetricsSampler::with_paths(dir.path().join("nope"), dir.path());
        assert!(matches!(missing.sample(), Err(MetricsError::Read { .. })));
    }

    #[test]
    fn samples_this_host() {
        let sampler = MetricsSampler::new();
        // Burn a little CPU so at least one tick passes.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let m = sampler.sample().unwrap();
        assert!(m.ts > 1_600_000_000);
        assert!(m.cpu_count >= 1);
        assert!((0.0..=100.0).contains(&m.cpu_used_pct), "{m:?}");
        assert!(m.mem_total > 0 && m.mem_used <= m.mem_total, "{m:?}");
        assert_eq!(m.mem_total_mib, m.mem_total / MIB);
        assert!(m.disk_total > 0 && m.disk_used <= m.disk_total, "{m:?}");

        let json = serde_json::to_value(&m).unwrap();
        for key in [
            "ts",
            "cpu_count",
            "cpu_used_pct",
            "mem_total_mib",
            "mem_used_mib",
            "mem_total",
            "mem_used",
            "disk_used",
            "disk_total",
        ] {
            assert!(json.get(key).is_some(), "no {key} in {json}");
        }
        assert_eq!(json.as_object().unwrap().len(), 9);
    }
}
