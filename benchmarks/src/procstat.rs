//! What a process (with its direct children: nginx's workers) costs, read from `/proc`.

use std::time::Instant;

use anyhow::Context;

/// A process and the children it had when first looked at.
#[derive(Debug, Clone)]
pub struct Family {
    pub pids: Vec<u32>,
}

impl Family {
    pub fn of(root: u32) -> anyhow::Result<Family> {
        let mut pids = vec![root];
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // A process may exit between listing and reading: skip it.
            if let Ok(stat) = Stat::read(pid)
                && stat.ppid == root
            {
                pids.push(pid);
            }
        }
        Ok(Family { pids })
    }

    /// User plus system CPU seconds so far, summed over the family.
    pub fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = self
            .pids
            .iter()
            .filter_map(|p| Stat::read(*p).ok())
            .map(|s| s.utime + s.stime)
            .sum();
        ticks as f64 / clock_ticks()
    }

    /// Summed over the family, in KiB; shared pages count once per process, so for more than
    /// one process this is an upper bound.
    pub fn status_kib(&self, key: &str) -> u64 {
        self.pids.iter().filter_map(|p| status_kib(*p, key)).sum()
    }

    pub fn open_fds(&self) -> usize {
        self.pids
            .iter()
            .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
            .map(|d| d.count())
            .sum()
    }
}

/// CPU use of a family over a window.
pub struct CpuWindow {
    started: Instant,
    cpu0: f64,
}

impl CpuWindow {
    pub fn start(family: &Family) -> CpuWindow {
        CpuWindow {
            started: Instant::now(),
            cpu0: family.cpu_seconds(),
        }
    }

    /// (CPU seconds used, wall seconds elapsed).
    pub fn finish(&self, family: &Family) -> (f64, f64) {
        (
            family.cpu_seconds() - self.cpu0,
            self.started.elapsed().as_secs_f64(),
        )
    }
}

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

impl Stat {
    fn read(pid: u32) -> anyhow::Result<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name may hold spaces and parentheses; the fields start after the last ')'.
        let rest = text
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> anyhow::Result<u64> {
            // `n` is the 1-based field number of proc(5); the slice starts at field 3.
            Ok(fields.get(n - 3).context("short /proc stat")?.parse()?)
        };
        Ok(Stat {
            ppid: u32::try_from(field(4)?)?,
            utime: field(14)?,
            stime: field(15)?,
        })
    }
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

pub fn own_cpu_seconds() -> f64 {
    Family {
        pids: vec![std::process::id()],
    }
    .cpu_seconds()
}
