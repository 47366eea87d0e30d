//! The process metrics every Prometheus client exports, from `/proc/self`: resident and
//! virtual memory, CPU seconds, start time, open and most file descriptors.
//!
//! ```text
//! /proc/self/stat   PID (COMM) STATE ... field 14 utime, 15 stime (clock ticks), 22 starttime
//!                   (ticks since boot); COMM may hold spaces and ')', so fields count from the
//!                   last ')'
//! /proc/self/statm  SIZE RESIDENT ... (pages)
//! /proc/stat        btime SECONDS   (boot time, since the epoch)
//! ```

/// What the process uses now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub cpu_seconds: f64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

impl ProcessStats {
    /// Read from `/proc/self`; `None` if it cannot be read (no procfs).
    pub fn now() -> Option<Self> {
        // SAFETY: sysconf has no memory preconditions.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let (ticks, page) = (ticks.max(1) as f64, page.max(1) as u64);
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Counted from STATE, field 3 of proc(5).
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let mut pages = statm.split_whitespace().map(|f| f.parse::<u64>().ok());
        let (size, resident) = (pages.next()??, pages.next()??);
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse::<u64>().ok()?;
        Some(ProcessStats {
            resident_bytes: resident * page,
            virtual_bytes: size * page,
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            start_time_seconds: btime as f64 + field(22)? as f64 / ticks,
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
            max_fds: max_fds(),
        })
    }
}

/// The soft limit on open files.
fn max_fds() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc == 0 {
        limit.rlim_cur
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured() {
        let now = ProcessStats::now().unwrap();
        assert!(now.resident_bytes > 0 && now.virtual_bytes >= now.resident_bytes, "{now:?}");
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(
            now.start_time_seconds <= since_epoch + 1.0 && now.start_time_seconds > since_epoch - 86_400.0,
            "{now:?}"
        );
        assert!(now.open_fds >= 3 && now.max_fds >= now.open_fds, "{now:?}");
    }
}
