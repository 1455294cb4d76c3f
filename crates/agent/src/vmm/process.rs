//! Process helpers shared by the drivers: detached spawning and pid identity checks.

use std::time::Duration;

/// The start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22), or `None` when
/// no such process exists (or it is a zombie, which is as good as gone).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state).
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Waits until the process named by (`pid`, `start`) is gone, up to `timeout`. True if it is gone.
pub async fn wait_gone(pid: u32, start: u64, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Reap it if it is our child; harmless otherwise.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        if start_time(pid) != Some(start) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops a process: SIGTERM, up to `grace` to exit, then SIGKILL.
pub async fn terminate(pid: u32, start: u64, grace: Duration) {
    if start_time(pid) != Some(start) {
        return;
    }
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    if !wait_gone(pid, start, grace).await {
        signal(pid, nix::sys::signal::Signal::SIGKILL);
        wait_gone(pid, start, Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_a_start_time_and_a_bogus_pid_does_not() {
        assert!(start_time(std::process::id()).is_some());
        assert_eq!(start_time(u32::MAX - 1), None);
    }
}
