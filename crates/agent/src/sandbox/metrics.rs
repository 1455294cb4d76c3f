//! Per-sandbox resource samples kept in three ring tiers (10 minutes at 1 s, 2 hours of 30 s
//! averages, 24 hours of 5 minute averages), so a long-lived sandbox costs a fixed ~25 KB.

use std::collections::VecDeque;

pub const SAMPLE_INTERVAL_SECS: u64 = 1;
const FINE_CAP: usize = 600;
const MID_EVERY: u32 = 30;
const MID_CAP: usize = 240;
const COARSE_EVERY: u32 = 300;
const COARSE_CAP: usize = 288;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricPoint {
    pub timestamp_unix: i64,
    pub cpu_pct: f64,
    pub mem_bytes: i64,
    pub disk_bytes: i64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Accumulator {
    count: u32,
    cpu: f64,
    mem: i128,
    disk: i128,
}

impl Accumulator {
    fn add(&mut self, p: &MetricPoint) {
        self.count += 1;
        self.cpu += p.cpu_pct;
        self.mem += p.mem_bytes as i128;
        self.disk += p.disk_bytes as i128;
    }

    fn take(&mut self, timestamp_unix: i64) -> MetricPoint {
        let n = self.count.max(1);
        let p = MetricPoint {
            timestamp_unix,
            cpu_pct: self.cpu / n as f64,
            mem_bytes: (self.mem / n as i128) as i64,
            disk_bytes: (self.disk / n as i128) as i64,
        };
        *self = Accumulator::default();
        p
    }
}

#[derive(Debug, Default)]
pub struct MetricsRing {
    fine: VecDeque<MetricPoint>,
    mid: VecDeque<MetricPoint>,
    coarse: VecDeque<MetricPoint>,
    mid_acc: Accumulator,
    coarse_acc: Accumulator,
}

/// All three tiers, oldest first (what `FlushSandboxMetrics` returns).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tiers {
    pub points_10m: Vec<MetricPoint>,
    pub points_2h: Vec<MetricPoint>,
    pub points_24h: Vec<MetricPoint>,
}

fn push_capped(q: &mut VecDeque<MetricPoint>, p: MetricPoint, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(p);
}

impl MetricsRing {
    pub fn push(&mut self, p: MetricPoint) {
        push_capped(&mut self.fine, p, FINE_CAP);
        self.mid_acc.add(&p);
        if self.mid_acc.count >= MID_EVERY {
            let avg = self.mid_acc.take(p.timestamp_unix);
            push_capped(&mut self.mid, avg, MID_CAP);
        }
        self.coarse_acc.add(&p);
        if self.coarse_acc.count >= COARSE_EVERY {
            let avg = self.coarse_acc.take(p.timestamp_unix);
            push_capped(&mut self.coarse, avg, COARSE_CAP);
        }
    }

    /// Points within `range` (5m, 10m, 1h, 2h, 6h, 12h, 24h) of `now`, from the finest tier that
    /// covers it.
    pub fn range(&self, range: &str, now_unix: i64) -> Result<Vec<MetricPoint>, String> {
        let (secs, tier) = match range {
            "5m" => (300, &self.fine),
            "10m" => (600, &self.fine),
            "1h" => (3600, &self.mid),
            "2h" => (7200, &self.mid),
            "6h" => (21_600, &self.coarse),
            "12h" => (43_200, &self.coarse),
            "24h" => (86_400, &self.coarse),
            other => {
                return Err(format!(
                    "unknown range {other:?}; use 5m, 10m, 1h, 2h, 6h, 12h or 24h"
                ));
            }
        };
        let since = now_unix - secs;
        Ok(tier
            .iter()
            .filter(|p| p.timestamp_unix >= since)
            .copied()
            .collect())
    }

    /// Returns every tier and empties the ring.
    pub fn flush(&mut self) -> Tiers {
        let t = Tiers {
            points_10m: self.fine.drain(..).collect(),
            points_2h: self.mid.drain(..).collect(),
            points_24h: self.coarse.drain(..).collect(),
        };
        self.mid_acc = Accumulator::default();
        self.coarse_acc = Accumulator::default();
        t
    }
}

/// CPU time (user + system, in clock ticks) and resident memory of a process, from /proc.
pub fn process_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); `f` starts at field 3.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Some((ticks, rss_kb * 1024))
}

/// Clock ticks per second (for /proc CPU times).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: i64, cpu: f64) -> MetricPoint {
        MetricPoint {
            timestamp_unix: t,
            cpu_pct: cpu,
            mem_bytes: 100,
            disk_bytes: 10,
        }
    }

    #[test]
    fn tiers_average_and_stay_bounded() {
        let mut ring = MetricsRing::default();
        for t in 0..4000 {
            ring.push(point(t, if t % 2 == 0 { 10.0 } else { 30.0 }));
        }
        let now = 3999;
        let fine = ring.range("10m", now).expect("10m");
        assert_eq!(fine.len(), 600);
        assert_eq!(ring.range("5m", now).expect("5m").len(), 301);
        let mid = ring.range("2h", now).expect("2h");
        assert_eq!(mid.len(), 4000 / 30);
        assert!(mid.iter().all(|p| (p.cpu_pct - 20.0).abs() < 1e-9));
        assert_eq!(ring.range("24h", now).expect("24h").len(), 4000 / 300);
        assert!(ring.range("3d", now).is_err());
        let tiers = ring.flush();
        assert_eq!(tiers.points_10m.len(), 600);
        assert!(ring.range("10m", now).expect("10m").is_empty());
    }

    #[test]
    fn own_process_usage_is_readable() {
        let (_, rss) = process_usage(std::process::id()).expect("usage");
        assert!(rss > 0);
    }
}
