//! Reading the box: sysctls, process limits, capabilities, memory and NICs, from a `/proc` and
//! a `/sys` tree whose roots the caller chooses (the real ones, or fakes in tests).
//!
//! Every read returns either the value or a [`ReadError`] that says which file could not be
//! read and why, so the report can tell the operator what it could not check.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A file that could not be read or understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadError {
    /// The file, as opened (under the chosen root).
    pub path: PathBuf,
    /// Why, in words an operator can act on.
    pub reason: String,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not read {}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for ReadError {}

/// A process resource limit from `/proc/self/limits`; `None` is "unlimited".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The limit in force.
    pub soft: Option<u64>,
    /// The ceiling the soft limit can be raised to without `CAP_SYS_RESOURCE`.
    pub hard: Option<u64>,
}

/// A network interface backed by a device, and how its receive work is spread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Interface name (`eth0`).
    pub name: String,
    /// Number of `queues/rx-*` directories: hardware receive queues RSS can spread over.
    pub rx_queues: u64,
    /// CPUs in `queues/rx-0/rps_cpus`: software spreading (RPS) when there are few queues.
    pub rps_cpus: u64,
}

/// Capability bit of `CAP_SYS_RESOURCE` (linux/capability.h): lets a process raise its hard
/// limits.
pub const CAP_SYS_RESOURCE: u32 = 24;
/// Capability bit of `CAP_IPC_LOCK`: lets a process lock memory beyond `RLIMIT_MEMLOCK`.
pub const CAP_IPC_LOCK: u32 = 14;

/// Reads values under a `/proc` root and a `/sys` root.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Directory holding `proc/` (`/` on a real box).
    proc_root: PathBuf,
    /// Directory holding `sys/` (`/` on a real box).
    sys_root: PathBuf,
}

impl Probe {
    /// A probe of the trees `proc_root/proc` and `sys_root/sys`.
    pub fn new(proc_root: &Path, sys_root: &Path) -> Probe {
        Probe {
            proc_root: proc_root.to_path_buf(),
            sys_root: sys_root.to_path_buf(),
        }
    }

    /// Path of a file under the proc tree (`rel` without the leading `proc/`).
    pub fn proc_path(&self, rel: &str) -> PathBuf {
        self.proc_root.join("proc").join(rel)
    }

    /// Path of a file under the sys tree (`rel` without the leading `sys/`).
    pub fn sys_path(&self, rel: &str) -> PathBuf {
        self.sys_root.join("sys").join(rel)
    }

    /// Path of a sysctl (`net.core.somaxconn` is `/proc/sys/net/core/somaxconn`).
    pub fn sysctl_path(&self, name: &str) -> PathBuf {
        self.proc_path(&format!("sys/{}", name.replace('.', "/")))
    }

    /// Whether a sysctl exists (a module that is not loaded has no files).
    pub fn has_sysctl(&self, name: &str) -> bool {
        self.sysctl_path(name).exists()
    }

    /// A sysctl's text, trimmed.
    pub fn sysctl(&self, name: &str) -> Result<String, ReadError> {
        read(&self.sysctl_path(name)).map(|s| s.trim().to_string())
    }

    /// A sysctl holding one number.
    pub fn sysctl_u64(&self, name: &str) -> Result<u64, ReadError> {
        let path = self.sysctl_path(name);
        let text = read(&path)?;
        parse_u64(text.trim()).ok_or_else(|| unexpected(&path, &text))
    }

    /// A sysctl holding several numbers separated by white space (`tcp_mem`).
    pub fn sysctl_u64s(&self, name: &str, count: usize) -> Result<Vec<u64>, ReadError> {
        let path = self.sysctl_path(name);
        let text = read(&path)?;
        let values: Option<Vec<u64>> = text.split_whitespace().map(parse_u64).collect();
        match values {
            Some(v) if v.len() == count => Ok(v),
            _ => Err(unexpected(&path, &text)),
        }
    }

    /// A limit of this process by its name in `/proc/self/limits` (`Max open files`).
    pub fn limit(&self, name: &str) -> Result<Limit, ReadError> {
        let path = self.proc_path("self/limits");
        let text = read(&path)?;
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| unexpected(&path, &format!("no line {name:?}")))?;
        let mut fields = line[name.len()..].split_whitespace();
        let mut next = || match fields.next() {
            Some("unlimited") => Some(None),
            Some(v) => parse_u64(v).map(Some),
            None => None,
        };
        match (next(), next()) {
            (Some(soft), Some(hard)) => Ok(Limit { soft, hard }),
            _ => Err(unexpected(&path, line)),
        }
    }

    /// Whether this process holds capability bit `cap` (from `CapEff` in `/proc/self/status`).
    pub fn has_capability(&self, cap: u32) -> Result<bool, ReadError> {
        let path = self.proc_path("self/status");
        let text = read(&path)?;
        let hex = text
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .ok_or_else(|| unexpected(&path, "no CapEff line"))?;
        let bits =
            u64::from_str_radix(hex.trim(), 16).map_err(|_| unexpected(&path, hex.trim()))?;
        Ok(bits >> cap & 1 == 1)
    }

    /// A `/proc/meminfo` field in kB (`MemTotal`).
    pub fn meminfo_kb(&self, key: &str) -> Result<u64, ReadError> {
        let path = self.proc_path("meminfo");
        let text = read(&path)?;
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| parse_u64(v.trim().trim_end_matches("kB").trim()))
            .ok_or_else(|| unexpected(&path, &format!("no {key} line")))
    }

    /// The selected word of a transparent-hugepage setting (`enabled` or `defrag`), the one
    /// the kernel shows in brackets.
    pub fn thp(&self, file: &str) -> Result<String, ReadError> {
        let path = self.sys_path(&format!("kernel/mm/transparent_hugepage/{file}"));
        let text = read(&path)?;
        text.split_whitespace()
            .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
            .map(str::to_string)
            .ok_or_else(|| unexpected(&path, &text))
    }

    /// Number of online CPUs (`/sys/devices/system/cpu/online`, e.g. `0-3,8`).
    pub fn online_cpus(&self) -> Result<u64, ReadError> {
        let path = self.sys_path("devices/system/cpu/online");
        let text = read(&path)?;
        count_cpu_list(text.trim()).ok_or_else(|| unexpected(&path, &text))
    }

    /// Interfaces backed by a device (a `device` link: not `lo`, bridges, veth or ifb).
    pub fn nics(&self) -> Result<Vec<Nic>, ReadError> {
        let dir = self.sys_path("class/net");
        let entries = std::fs::read_dir(&dir).map_err(|e| io_error(&dir, &e))?;
        let mut nics = Vec::new();
        for entry in entries.flatten() {
            let base = entry.path();
            if !base.join("device").exists() {
                continue;
            }
            let queues = base.join("queues");
            let rx_queues = std::fs::read_dir(&queues)
                .map_err(|e| io_error(&queues, &e))?
                .flatten()
                .filter(|q| q.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u64;
            let rps = queues.join("rx-0/rps_cpus");
            let rps_cpus = match std::fs::read_to_string(&rps) {
                Ok(mask) => count_cpu_mask(mask.trim()).ok_or_else(|| unexpected(&rps, &mask))?,
                Err(_) => 0,
            };
            nics.push(Nic {
                name: entry.file_name().to_string_lossy().into_owned(),
                rx_queues,
                rps_cpus,
            });
        }
        nics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nics)
    }
}

/// Reads a whole file, turning failures into a [`ReadError`].
fn read(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|e| io_error(path, &e))
}

/// A [`ReadError`] from an I/O error, with the likely cause spelled out.
fn io_error(path: &Path, e: &io::Error) -> ReadError {
    let reason = match e.kind() {
        io::ErrorKind::NotFound => {
            "no such file (this kernel or its configuration does not provide it)".to_string()
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied (run the check as the user the server runs as, or as root)"
                .to_string()
        }
        _ => e.to_string(),
    };
    ReadError {
        path: path.to_path_buf(),
        reason,
    }
}

/// A [`ReadError`] for content that does not parse.
fn unexpected(path: &Path, text: &str) -> ReadError {
    let shown: String = text.trim().chars().take(60).collect();
    ReadError {
        path: path.to_path_buf(),
        reason: format!("unexpected content {shown:?}"),
    }
}

/// Parses a decimal number; sysctls such as `fs.file-max` may print `LONG_MAX`, which fits.
fn parse_u64(s: &str) -> Option<u64> {
    s.parse().ok()
}

/// Counts the CPUs of a list such as `0-3,8,10-11`.
pub fn count_cpu_list(list: &str) -> Option<u64> {
    if list.is_empty() {
        return Some(0);
    }
    let mut n = 0;
    for part in list.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<u64>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// Counts the set bits of a CPU mask such as `00000000,0000000f`.
pub fn count_cpu_mask(mask: &str) -> Option<u64> {
    let mut n = 0;
    for word in mask.split(',') {
        n += u64::from(u32::from_str_radix(word, 16).ok()?.count_ones());
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_masks() {
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_mask("00000000,0000000f"), Some(4));
        assert_eq!(count_cpu_mask("0"), Some(0));
        assert_eq!(count_cpu_mask("xyz"), None);
    }
}
