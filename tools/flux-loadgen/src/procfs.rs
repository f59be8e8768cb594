//! Process figures from `/proc`: CPU time (`/proc/<pid>/stat`) and resident memory
//! (`/proc/<pid>/status`), plus raising this process's open-file limit.

use std::time::Instant;

use serde::Serialize;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcReading {
    /// utime + stime in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kb: u64,
}

/// Parses utime + stime out of a `/proc/<pid>/stat` line (the command name may hold spaces
/// and parentheses, so fields are counted after the last `)`).
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    parse_stat_user_system_ticks(stat).map(|(u, s)| u + s)
}

/// utime and stime of a `/proc/<pid>/stat` (or `/proc/<pid>/task/<tid>/stat`) line, ticks.
pub fn parse_stat_user_system_ticks(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    // After ')': state(3) ppid(4) … utime(14) stime(15) → indices 11 and 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// Parses `VmRSS:` (kB) out of `/proc/<pid>/status`.
pub fn parse_status_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Reads the counters of `pid` (`None` for this process).
pub fn read(pid: Option<u32>) -> Option<ProcReading> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    Some(ProcReading {
        cpu_ticks: parse_stat_cpu_ticks(&stat)?,
        rss_kb: parse_status_rss_kb(&status)?,
    })
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Turns successive readings into CPU% over the interval between them.
pub struct CpuMeter {
    pid: Option<u32>,
    last: Option<(Instant, ProcReading)>,
    ticks_per_s: f64,
}

/// CPU and memory of one process over one interval.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// Percent of one core (200 = two cores busy).
    pub cpu_pct: f64,
    pub rss_mb: f64,
    /// CPU seconds used in the interval.
    pub cpu_s: f64,
}

impl CpuMeter {
    pub fn new(pid: Option<u32>) -> Self {
        let mut m = Self {
            pid,
            last: None,
            ticks_per_s: clock_ticks_per_second(),
        };
        m.last = read(pid).map(|r| (Instant::now(), r));
        m
    }

    /// The sample since the previous call (or since `new`); `None` if the process is gone.
    pub fn sample(&mut self) -> Option<ProcSample> {
        let now = Instant::now();
        let r = read(self.pid)?;
        let sample = match self.last {
            Some((t, prev)) => {
                let dt = now.duration_since(t).as_secs_f64().max(1e-6);
                let cpu_s = r.cpu_ticks.saturating_sub(prev.cpu_ticks) as f64 / self.ticks_per_s;
                ProcSample {
                    cpu_pct: 100.0 * cpu_s / dt,
                    rss_mb: r.rss_kb as f64 / 1024.0,
                    cpu_s,
                }
            }
            None => ProcSample {
                rss_mb: r.rss_kb as f64 / 1024.0,
                ..ProcSample::default()
            },
        };
        self.last = Some((now, r));
        Some(sample)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (before, after).
/// Every client socket is a file descriptor; the spawned gateway inherits the new limit.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit struct; soft ≤ hard as the kernel requires.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_lines_parse() {
        let stat = "1234 (flux bff (x)) S 1 1234 1234 0 -1 4194560 5000 0 0 0 250 75 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let status = "Name:\tflux-bff\nVmPeak:\t  10000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kb(status), Some(12345));
        assert_eq!(parse_status_rss_kb("Name: x\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let mut m = CpuMeter::new(None);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let s = m.sample().expect("/proc/self is readable");
        assert!(s.rss_mb > 0.5, "{s:?}");
        assert!(s.cpu_pct >= 0.0);
        assert!(read(Some(u32::MAX)).is_none());
    }

    #[test]
    fn the_open_file_limit_ends_at_the_hard_limit() {
        let (before, after) = raise_nofile_limit().expect("getrlimit works");
        assert!(after >= before);
    }
}
