//! Reading a process's footprint and the kernel's socket memory from /proc.
//!
//! Parsers take the file's text so tests can feed them fixtures; [`sample`] reads the real
//! files. Figures: resident memory (VmRSS), CPU time (utime + stime of every thread, in
//! clock ticks), and the TCP lines of /proc/net/sockstat.

use serde::{Deserialize, Serialize};

/// Why a /proc file could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Parse {
        path: &'static str,
        what: &'static str,
    },
}

/// CPU time of a process from /proc/PID/stat, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTicks {
    /// Time in user mode, all threads.
    pub user: u64,
    /// Time in kernel mode on behalf of the process, all threads.
    pub system: u64,
}

/// The TCP-related figures of /proc/net/sockstat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockStat {
    /// Sockets of every kind in use (`sockets: used`).
    pub sockets_used: u64,
    /// TCP sockets in use (`TCP: inuse`).
    pub tcp_inuse: u64,
    /// TCP sockets in TIME_WAIT (`TCP: tw`).
    pub tcp_tw: u64,
    /// TCP sockets allocated, including orphans and TIME_WAIT (`TCP: alloc`).
    pub tcp_alloc: u64,
    /// Pages of buffer memory held by all TCP sockets (`TCP: mem`).
    pub tcp_mem_pages: u64,
}

/// Resident set size in bytes from /proc/PID/status (`VmRSS:` line, in kB).
pub fn parse_vmrss(status: &str) -> Result<u64, ProcError> {
    kb_field(status, "VmRSS:").ok_or(ProcError::Parse {
        path: "/proc/PID/status",
        what: "no VmRSS line",
    })
}

/// `Rss:` of /proc/PID/smaps_rollup in bytes (same figure as VmRSS, computed precisely).
pub fn parse_smaps_rollup_rss(text: &str) -> Result<u64, ProcError> {
    kb_field(text, "Rss:").ok_or(ProcError::Parse {
        path: "/proc/PID/smaps_rollup",
        what: "no Rss line",
    })
}

fn kb_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let mut parts = line[key.len()..].split_whitespace();
    let kb: u64 = parts.next()?.parse().ok()?;
    Some(kb * 1024)
}

/// utime and stime from /proc/PID/stat. The command name (field 2) is in parentheses and may
/// contain spaces or parentheses, so fields are counted after the last `)`.
pub fn parse_stat_cpu(stat: &str) -> Result<CpuTicks, ProcError> {
    const BAD: ProcError = ProcError::Parse {
        path: "/proc/PID/stat",
        what: "too few fields",
    };
    let rest = &stat[stat.rfind(')').ok_or(BAD)? + 1..];
    // After the name: field 3 is `state`; utime and stime are fields 14 and 15.
    let mut fields = rest.split_whitespace();
    let utime = fields.nth(11).ok_or(BAD)?;
    let stime = fields.next().ok_or(BAD)?;
    let num = |s: &str| {
        s.parse::<u64>().map_err(|_| ProcError::Parse {
            path: "/proc/PID/stat",
            what: "utime or stime is not a number",
        })
    };
    Ok(CpuTicks {
        user: num(utime)?,
        system: num(stime)?,
    })
}

/// The `sockets:` and `TCP:` lines of /proc/net/sockstat.
pub fn parse_sockstat(text: &str) -> Result<SockStat, ProcError> {
    let mut out = SockStat::default();
    let mut seen_tcp = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("sockets:") => {
                let pairs: Vec<&str> = words.collect();
                out.sockets_used = value_of(&pairs, "used").unwrap_or(0);
            }
            Some("TCP:") => {
                seen_tcp = true;
                let pairs: Vec<&str> = words.collect();
                out.tcp_inuse = value_of(&pairs, "inuse").unwrap_or(0);
                out.tcp_tw = value_of(&pairs, "tw").unwrap_or(0);
                out.tcp_alloc = value_of(&pairs, "alloc").unwrap_or(0);
                out.tcp_mem_pages = value_of(&pairs, "mem").unwrap_or(0);
            }
            _ => {}
        }
    }
    if !seen_tcp {
        return Err(ProcError::Parse {
            path: "/proc/net/sockstat",
            what: "no TCP line",
        });
    }
    Ok(out)
}

/// In `["inuse", "5", "mem", "3"]`, the number after `key`.
fn value_of(pairs: &[&str], key: &str) -> Option<u64> {
    pairs
        .chunks(2)
        .find(|c| c.len() == 2 && c[0] == key)
        .and_then(|c| c[1].parse().ok())
}

/// Kernel slab memory (`Slab:` of /proc/meminfo) in bytes: socket, inode, file and epoll
/// objects of every connection live there, on both ends of a loopback connection.
pub fn parse_meminfo_slab(meminfo: &str) -> Result<u64, ProcError> {
    kb_field(meminfo, "Slab:").ok_or(ProcError::Parse {
        path: "/proc/meminfo",
        what: "no Slab line",
    })
}

/// One observation of the server process and the kernel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerSample {
    /// Which moment of the run this is (`before`, `ramped`, `load start`, ...).
    pub label: String,
    /// Seconds since the run started.
    pub at_s: f64,
    /// Server resident memory in bytes.
    pub rss_bytes: u64,
    /// Server CPU time, user + system, in microseconds.
    pub cpu_us: u64,
    /// System-wide socket figures.
    pub sockstat: SockStat,
    /// System-wide kernel slab memory, bytes.
    pub slab_bytes: u64,
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_string(),
        source,
    })
}

/// Clock ticks per second of /proc/PID/stat times.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// The page size /proc/net/sockstat's `mem` counts in.
pub fn page_size() -> u64 {
    // SAFETY: as above.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

/// Reads the current footprint of process `pid` and the kernel's socket figures.
pub fn sample(pid: u32, label: &str, at_s: f64) -> Result<ServerSample, ProcError> {
    let rss_bytes = match std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        Ok(text) => parse_smaps_rollup_rss(&text)?,
        Err(_) => parse_vmrss(&read(&format!("/proc/{pid}/status"))?)?,
    };
    let ticks = parse_stat_cpu(&read(&format!("/proc/{pid}/stat"))?)?;
    let cpu_us = (ticks.user + ticks.system) * 1_000_000 / clk_tck();
    let sockstat = parse_sockstat(&read("/proc/net/sockstat")?)?;
    let slab_bytes = parse_meminfo_slab(&read("/proc/meminfo")?)?;
    Ok(ServerSample {
        label: label.to_string(),
        at_s,
        rss_bytes,
        cpu_us,
        sockstat,
        slab_bytes,
    })
}

/// CPU time this process has used (all threads), user and system, in microseconds.
pub fn self_cpu_us() -> (u64, u64) {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\ttether\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  123456 kB\n\
VmSize:\t  123400 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   18944 kB\nRssAnon:\t   10000 kB\nThreads:\t3\n";

    const STAT: &str = "4242 (tether (shard) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
517 83 0 0 20 0 3 0 100 123400000 4736 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";

    const SOCKSTAT: &str =
        "sockets: used 40210\nTCP: inuse 38012 orphan 0 tw 12 alloc 38020 mem 95\n\
UDP: inuse 2 mem 1\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n";

    const ROLLUP: &str = "55d0c0a00000-7ffc5a1f6000 ---p 00000000 00:00 0  [rollup]\n\
Rss:               18952 kB\nPss:               17000 kB\nPss_Anon:          10000 kB\n";

    #[test]
    fn vmrss_in_bytes() {
        assert_eq!(parse_vmrss(STATUS).unwrap(), 18944 * 1024);
        assert!(parse_vmrss("Name:\tx\n").is_err());
    }

    #[test]
    fn smaps_rollup_rss_in_bytes() {
        assert_eq!(parse_smaps_rollup_rss(ROLLUP).unwrap(), 18952 * 1024);
        assert!(parse_smaps_rollup_rss("Pss: 1 kB\n").is_err());
    }

    #[test]
    fn stat_cpu_survives_parentheses_in_the_name() {
        let t = parse_stat_cpu(STAT).unwrap();
        assert_eq!(
            t,
            CpuTicks {
                user: 517,
                system: 83
            }
        );
        assert!(parse_stat_cpu("1 (x) S 1 2").is_err());
        assert!(parse_stat_cpu("garbage").is_err());
    }

    #[test]
    fn sockstat_tcp_line() {
        let s = parse_sockstat(SOCKSTAT).unwrap();
        assert_eq!(
            s,
            SockStat {
                sockets_used: 40210,
                tcp_inuse: 38012,
                tcp_tw: 12,
                tcp_alloc: 38020,
                tcp_mem_pages: 95,
            }
        );
        assert!(parse_sockstat("sockets: used 3\n").is_err());
    }

    #[test]
    fn meminfo_slab_in_bytes() {
        let text = "MemTotal:       24684132 kB\nSlab:             412345 kB\nSReclaimable:     200000 kB\n";
        assert_eq!(parse_meminfo_slab(text).unwrap(), 412_345 * 1024);
        assert!(parse_meminfo_slab("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id(), "self", 0.0).unwrap();
        assert!(s.rss_bytes > 0);
    }
}
