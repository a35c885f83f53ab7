//! The rules `tether check` applies: one table, one function per rule.
//!
//! [`RULES`] is the single list of what is checked; tuning.md documents every key in it (a
//! test holds the two together in both directions). Each rule reads what it needs through a
//! [`Probe`], compares it with what the target ([`CheckInput`]) needs, and returns one
//! [`Finding`] with the commands that fix it.

use super::probes::{Probe, ReadError, CAP_SYS_RESOURCE};
use super::report::{bytes, group, Finding, Status};
use super::CheckInput;

/// Kernel memory of one idle TCP socket, in bytes: slab growth per socket (TCP sock, socket
/// inode, dentry, file, ...) measured with 4,000 and 8,000 idle loopback connections on Linux
/// 6.18, 3,908 to 4,018 B (tuning.md, "Memory per connection", shows the measurement).
pub const KERNEL_BYTES_PER_CONN: u64 = 4_000;
/// The io_uring request each idle connection keeps armed in the kernel (its multishot receive):
/// one `io_kiocb`, a 256-byte slab object on Linux 6.18.
pub const IO_URING_BYTES_PER_CONN: u64 = 256;
/// tether's user-space memory per idle, logged-in, heartbeating connection, in bytes, from
/// BENCHMARKS.md: the server's RSS growth from 0 to 19,000 such connections was 227 B per
/// connection (side-by-side run of 2026-12-02; the server's design bound is 512 B).
pub const TETHER_BYTES_PER_CONN: u64 = 227;
/// One conntrack entry (the `nf_conntrack` slab object, 256 B on Linux 6.18), paid per
/// connection when netfilter tracks the traffic.
pub const CONNTRACK_BYTES_PER_CONN: u64 = 256;
/// Share of memory the connections may take; the rest is for socket buffers while data
/// flows, the page cache and everything else on the box.
pub const MEMORY_BUDGET_PCT: u64 = 70;
/// File descriptors the rest of the box needs beside the server (`fs.file-max` headroom).
pub const SYSTEM_FILES: u64 = 65_536;
/// Listen and SYN backlog that absorbs a reconnect wave.
pub const BACKLOG: u64 = 65_535;
/// glommio refuses to start an executor with less locked memory than this.
pub const GLOMMIO_MEMLOCK: u64 = 512 * 1024;

/// The drop-in file the fixes write persistent sysctls to.
const SYSCTL_FILE: &str = "/etc/sysctl.d/90-tether.conf";

/// One check: its key (as written in tuning.md) and how it is evaluated.
#[derive(Clone, Copy)]
pub struct Rule {
    /// Name of the setting, shown in the table and documented under this name in tuning.md.
    pub key: &'static str,
    /// Reads the box and judges it for the target.
    pub eval: fn(&'static str, &Probe, &CheckInput) -> Finding,
}

/// Every rule, in the order of the report.
pub const RULES: &[Rule] = &[
    Rule {
        key: "kernel.osrelease",
        eval: kernel,
    },
    Rule {
        key: "kernel.io_uring_disabled",
        eval: io_uring_disabled,
    },
    Rule {
        key: "RLIMIT_NOFILE",
        eval: nofile,
    },
    Rule {
        key: "fs.nr_open",
        eval: nr_open,
    },
    Rule {
        key: "fs.file-max",
        eval: file_max,
    },
    Rule {
        key: "RLIMIT_MEMLOCK",
        eval: memlock,
    },
    Rule {
        key: "MemTotal",
        eval: memory,
    },
    Rule {
        key: "net.core.somaxconn",
        eval: backlog,
    },
    Rule {
        key: "net.ipv4.tcp_max_syn_backlog",
        eval: backlog,
    },
    Rule {
        key: "net.ipv4.tcp_migrate_req",
        eval: migrate_req,
    },
    Rule {
        key: "net.ipv4.tcp_mem",
        eval: tcp_mem,
    },
    Rule {
        key: "net.ipv4.tcp_rmem",
        eval: tcp_buffers,
    },
    Rule {
        key: "net.ipv4.tcp_wmem",
        eval: tcp_buffers,
    },
    Rule {
        key: "tcp_keepalive",
        eval: keepalive,
    },
    Rule {
        key: "net.ipv4.ip_local_port_range",
        eval: port_range,
    },
    Rule {
        key: "net.ipv4.ip_local_reserved_ports",
        eval: reserved_ports,
    },
    Rule {
        key: "net.netfilter.nf_conntrack_max",
        eval: conntrack_max,
    },
    Rule {
        key: "net.netfilter.nf_conntrack_tcp_timeout_established",
        eval: conntrack_timeout,
    },
    Rule {
        key: "transparent_hugepage/enabled",
        eval: thp,
    },
    Rule {
        key: "transparent_hugepage/defrag",
        eval: thp,
    },
    Rule {
        key: "NIC queues",
        eval: nic_queues,
    },
];

/// Descriptors the server needs beside its connections: the same reserve it keeps at start
/// for listeners, rings, eventfds and logs.
pub fn fd_reserve(shards: u64) -> u64 {
    16 + 8 * shards
}

/// The open-files limit `connections` over `shards` need. Connections are not descriptors of
/// the process: each lives in its shard ring's file table, and the kernel refuses a table
/// larger than the limit, so the limit must hold one shard's share (and the process's own
/// few descriptors).
pub fn files_needed(connections: u64, shards: u64) -> u64 {
    connections.div_ceil(shards.max(1)).max(fd_reserve(shards))
}

/// Connections `shards` file tables hold under an open-files limit of `limit`: each ring's
/// table is at most the limit, and at most the kernel's 2^20 slots.
fn files_allow(limit: u64, shards: u64) -> u64 {
    limit.min(u64::from(crate::driver::ring::MAX_FILES)) * shards
}

/// Shards that `connections` need when no ring may hold more than `per_ring` of them.
fn shards_for(connections: u64, per_ring: u64) -> u64 {
    connections.div_ceil(per_ring.clamp(1, u64::from(crate::driver::ring::MAX_FILES)))
}

/// Bytes per connection: kernel socket, its io_uring poll, tether's user space, and a
/// conntrack entry when netfilter tracks the traffic.
pub fn bytes_per_conn(conntrack: bool) -> u64 {
    KERNEL_BYTES_PER_CONN
        + IO_URING_BYTES_PER_CONN
        + TETHER_BYTES_PER_CONN
        + if conntrack {
            CONNTRACK_BYTES_PER_CONN
        } else {
            0
        }
}

/// The commands that set a sysctl now and on every boot.
fn sysctl_fix(name: &str, value: impl std::fmt::Display) -> Vec<String> {
    let value = value.to_string();
    let shown = if value.contains(' ') {
        format!("'{value}'")
    } else {
        value.clone()
    };
    vec![
        format!("sysctl -w {name}={shown}"),
        format!("echo '{name} = {value}' >> {SYSCTL_FILE}"),
    ]
}

/// Rounds a descriptor count up to a multiple of 2^20, the unit tuning.md's values use.
fn round_files(n: u64) -> u64 {
    n.div_ceil(1 << 20) * (1 << 20)
}

/// Whether netfilter currently tracks connections (module loaded and entries present).
fn conntrack_tracking(probe: &Probe) -> bool {
    probe
        .sysctl_u64("net.netfilter.nf_conntrack_count")
        .is_ok_and(|n| n > 0)
}

fn kernel(key: &'static str, probe: &Probe, _: &CheckInput) -> Finding {
    let wanted = ">= 6.8".to_string();
    let release = match probe.sysctl(key) {
        Ok(r) => r,
        Err(e) => return Finding::unreadable(key, wanted, &e),
    };
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let version = match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => {
            let err = ReadError {
                path: probe.sysctl_path(key),
                reason: format!("unexpected content {release:?}"),
            };
            return Finding::unreadable(key, wanted, &err);
        }
    };
    let (status, why) = if version < (6, 8) {
        (
            Status::Fail,
            "connections live in each shard's io_uring file table, and one moves to its \
             user's home shard through IORING_OP_FIXED_FD_INSTALL (Linux 6.8): the server \
             cannot start",
        )
    } else {
        (Status::Pass, "")
    };
    Finding::new(key, status, release, wanted)
        .why(why)
        .fix(["upgrade to Linux 6.8 or later".to_string()])
}

fn io_uring_disabled(key: &'static str, probe: &Probe, _: &CheckInput) -> Finding {
    let wanted = "0".to_string();
    if !probe.has_sysctl(key) {
        return Finding::new(key, Status::Pass, "absent".into(), wanted)
            .why("kernels before 6.6 have no switch: io_uring is always on");
    }
    match probe.sysctl_u64(key) {
        Err(e) => Finding::unreadable(key, wanted, &e),
        Ok(v) => {
            let (status, why) = match v {
                0 => (Status::Pass, ""),
                1 => (
                    Status::Warn,
                    "io_uring is limited to CAP_SYS_ADMIN and the group in \
                     kernel.io_uring_group: the server starts only as such a user",
                ),
                _ => (
                    Status::Fail,
                    "io_uring is disabled: the server cannot start",
                ),
            };
            Finding::new(key, status, v.to_string(), wanted)
                .why(why)
                .fix(sysctl_fix(key, 0))
        }
    }
}

fn nofile(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    let need = files_needed(input.connections, input.shards);
    let wanted = format!("hard >= {}", group(need));
    let limit = match probe.limit("Max open files") {
        Ok(l) => l,
        Err(e) => return Finding::unreadable(key, wanted, &e),
    };
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), group);
    let value = format!("soft {} / hard {}", show(limit.soft), show(limit.hard));
    let hard = limit.hard.unwrap_or(u64::MAX);
    let allows = files_allow(hard, input.shards);
    if need > u64::from(crate::driver::ring::MAX_FILES) {
        return too_many_per_ring(key, value, wanted, input).allows(allows);
    }
    if hard >= need {
        return Finding::new(key, Status::Pass, value, wanted)
            .why(
                "each shard's io_uring file table holds its connections and may be as large \
                 as this limit; tether raises its soft limit to the hard limit at start",
            )
            .allows(allows);
    }
    let mut why = format!(
        "each shard's io_uring file table, which holds its connections, is at most the hard \
         limit {}: {} shards hold {}, below {} connections; tether raises its soft limit only \
         up to the hard limit",
        group(hard),
        input.shards,
        group(allows),
        group(input.connections)
    );
    match probe.has_capability(CAP_SYS_RESOURCE) {
        Ok(false) => why.push_str(
            "; this process has no CAP_SYS_RESOURCE, so neither it nor anything it starts \
             can raise the hard limit: it must be set by what starts the server (systemd \
             LimitNOFILE=, /etc/security/limits.conf, a container's --ulimit), or more shards \
             must share the connections",
        ),
        Ok(true) => why.push_str(
            "; this process holds CAP_SYS_RESOURCE and could raise it, but the limit belongs \
             where the server is started",
        ),
        Err(e) => why.push_str(&format!("; capabilities unknown ({e})")),
    }
    if let Ok(nr_open) = probe.sysctl_u64("fs.nr_open") {
        if nr_open < need {
            why.push_str(&format!(
                "; no hard limit can exceed fs.nr_open = {} either",
                group(nr_open)
            ));
        }
    }
    why.push_str(" (limits read from /proc/self/limits: run the check the way the server runs)");
    let target = round_files(need);
    Finding::new(key, Status::Fail, value, wanted)
        .why(why)
        .fix([
            format!("systemd: LimitNOFILE={target} in the [Service] section (systemctl edit tether)"),
            format!(
                "login sessions: echo '* - nofile {target}' >> /etc/security/limits.d/90-tether.conf, then log in again"
            ),
            format!("containers: docker run --ulimit nofile={target}:{target} ..."),
            format!(
                "or, with this limit, server.shards = {} (more shards than cores is fine: each \
                 holds up to the limit)",
                shards_for(input.connections, hard)
            ),
        ])
        .allows(allows)
}

/// A shard's share of the connections is more than any ring's file table holds.
fn too_many_per_ring(
    key: &'static str,
    value: String,
    wanted: String,
    input: &CheckInput,
) -> Finding {
    let max = u64::from(crate::driver::ring::MAX_FILES);
    Finding::new(key, Status::Fail, value, wanted)
        .why(format!(
            "{} connections over {} shards are more per shard than the {} slots the kernel \
             gives one io_uring file table, whatever the limits",
            group(input.connections),
            input.shards,
            group(max)
        ))
        .fix([format!(
            "server.shards = {} or more",
            shards_for(input.connections, max)
        )])
}

fn nr_open(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    let need = files_needed(input.connections, input.shards);
    let wanted = format!(">= {}", group(need));
    match probe.sysctl_u64(key) {
        Err(e) => Finding::unreadable(key, wanted, &e),
        Ok(v) if need > u64::from(crate::driver::ring::MAX_FILES) => {
            too_many_per_ring(key, group(v), wanted, input).allows(files_allow(v, input.shards))
        }
        Ok(v) => {
            let status = if v >= need {
                Status::Pass
            } else {
                Status::Fail
            };
            Finding::new(key, status, group(v), wanted)
                .why(format!(
                    "no process can have an open-files limit above {}, whatever its \
                     LimitNOFILE says, and no shard's file table can be larger",
                    group(v)
                ))
                .fix(sysctl_fix(key, round_files(need)))
                .allows(files_allow(v, input.shards))
        }
    }
}

fn file_max(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    let reserve = fd_reserve(input.shards) + SYSTEM_FILES;
    let need = input.connections.saturating_add(reserve);
    let wanted = format!(">= {}", group(need));
    match probe.sysctl_u64(key) {
        Err(e) => Finding::unreadable(key, wanted, &e),
        Ok(v) => {
            let status = if v >= need {
                Status::Pass
            } else {
                Status::Fail
            };
            Finding::new(key, status, group(v), wanted)
                .why(format!(
                    "open files of the whole box: connections plus {} for everything else",
                    group(SYSTEM_FILES)
                ))
                .fix(sysctl_fix(key, round_files(need)))
                .allows(v.saturating_sub(reserve))
        }
    }
}

fn memlock(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    // Before 5.12 each shard's four rings (glommio's three and tether's own) count too:
    // about 100 bytes per entry (SQE, two CQEs, index), rounded to pages.
    let old_kernel = probe.sysctl("kernel.osrelease").is_ok_and(|r| {
        let mut p = r
            .split(|c: char| !c.is_ascii_digit())
            .map(|x| x.parse::<u32>().unwrap_or(0));
        (p.next().unwrap_or(0), p.next().unwrap_or(0)) < (5, 12)
    });
    let rings = 4 * input.shards * (u64::from(input.ring_entries) * 100).div_ceil(4096) * 4096;
    let need = GLOMMIO_MEMLOCK + if old_kernel { rings } else { 0 };
    let wanted = format!("soft >= {}", bytes(need));
    let limit = match probe.limit("Max locked memory") {
        Ok(l) => l,
        Err(e) => return Finding::unreadable(key, wanted, &e),
    };
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), bytes);
    let value = format!("soft {} / hard {}", show(limit.soft), show(limit.hard));
    let ok = limit.soft.map_or(true, |s| s >= need);
    let status = if ok { Status::Pass } else { Status::Fail };
    let kib = need.div_ceil(1024).max(65_536);
    Finding::new(key, status, value, wanted)
        .why(if old_kernel {
            "glommio needs 512 KiB of locked memory per executor, and this kernel charges the \
             io_uring rings to the same limit: the server cannot start below it"
        } else {
            "glommio refuses to start an executor with less than 512 KiB of locked memory"
        })
        .fix([
            format!("systemd: LimitMEMLOCK={}K in the [Service] section", kib),
            format!(
                "login sessions: echo '* - memlock {kib}' >> /etc/security/limits.d/90-tether.conf"
            ),
        ])
}

fn memory(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    let conntrack = conntrack_tracking(probe);
    let per_conn = bytes_per_conn(conntrack);
    let need = input.connections.saturating_mul(per_conn);
    let budget_need = need / MEMORY_BUDGET_PCT * 100;
    let wanted = format!(">= {}", bytes(budget_need));
    let total = match probe.meminfo_kb(key) {
        Ok(kb) => kb * 1024,
        Err(e) => return Finding::unreadable(key, wanted, &e),
    };
    let status = if need > total {
        Status::Fail
    } else if need > total / 100 * MEMORY_BUDGET_PCT {
        Status::Warn
    } else {
        Status::Pass
    };
    let conntrack_part = if conntrack {
        format!(" + {CONNTRACK_BYTES_PER_CONN} B conntrack entry")
    } else {
        String::new()
    };
    Finding::new(key, status, bytes(total), wanted)
        .why(format!(
            "{} connections × {} B ({} B kernel socket, measured + {} B io_uring poll + {} B \
             tether user space, BENCHMARKS.md{}) = {}, kept under {}% of memory for buffers \
             in flight and the OS",
            group(input.connections),
            per_conn,
            KERNEL_BYTES_PER_CONN,
            IO_URING_BYTES_PER_CONN,
            TETHER_BYTES_PER_CONN,
            conntrack_part,
            bytes(need),
            MEMORY_BUDGET_PCT
        ))
        .fix([format!(
            "a box with at least {} of memory, or fewer connections per box",
            bytes(budget_need)
        )])
        .allows(total / per_conn)
}

fn backlog(key: &'static str, probe: &Probe, _: &CheckInput) -> Finding {
    let wanted = format!(">= {}", group(BACKLOG));
    match probe.sysctl_u64(key) {
        Err(e) => Finding::unreadable(key, wanted, &e),
        Ok(v) => {
            let status = if v >= BACKLOG {
                Status::Pass
            } else {
                Status::Warn
            };
            let why = if key == "net.core.somaxconn" {
                "caps every listen backlog: after a restart clients reconnect in a wave, and \
                 connections beyond a full accept queue are dropped and retried a second or \
                 more later"
            } else {
                "half-open connections a listener keeps during a reconnect wave before it \
                 falls back to SYN cookies"
            };
            Finding::new(key, status, group(v), wanted)
                .why(why)
                .fix(sysctl_fix(key, BACKLOG))
        }
    }
}

fn migrate_req(key: &'static str, probe: &Probe, _: &CheckInput) -> Finding {
    let wanted = "1".to_string();
    if !probe.has_sysctl(key) {
        return Finding::new(key, Status::Warn, "absent".into(), wanted)
            .why(
                "kernels before 5.14 cannot hand a closing listener's queued connections to \
                 another SO_REUSEPORT listener: a restart in place resets them",
            )
            .fix(["upgrade to Linux 5.14 or later".to_string()]);
    }
    match probe.sysctl_u64(key) {
        Err(e) => Finding::unreadable(key, wanted, &e),
        Ok(v) => {
            let status = if v == 1 { Status::Pass } else { Status::Warn };
            Finding::new(key, status, v.to_string(), wanted)
                .why(
                    "when a listener closes (a shard or process draining), connections in its \
                     accept queue move to another listener on the same port instead of being \
                     reset",
                )
                .fix(sysctl_fix(key, 1))
        }
    }
}

fn tcp_mem(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    let n = input.connections;
    let wanted = format!("max >= {} pages", group(n));
    match probe.sysctl_u64s(key, 3) {
        Err(e) => Finding::unreadable(key, wanted, &e),
        Ok(v) => {
            let status = if v[2] >= n {
                Status::Pass
            } else {
                Status::Warn
            };
            let fix = format!(
                "{} {} {}",
                v[0].max(n / 2),
                v[1].max(n / 4 * 3),
                v[2].max(n)
            );
            Finding::new(key, status, format!("{} {} {}", v[0], v[1], v[2]), wanted)
                .why(format!(
                    "pages of all TCP buffers together; idle sockets hold none, but a push to \
                     every connection at once queues about a page each, and above the third \
                     value ({}) the kernel drops instead",
                    bytes(v[2] * 4096)
                ))
                .fix(sysctl_fix(key, fix))
        }
    }
}

fn tcp_buffers(key: &'static str, probe: &Probe, _: &CheckInput) -> Finding {
    // tcp_rmem's default is the kernel's own 131072; tcp_wmem's 16384.
    let default_max = if key.ends_with("rmem") {
        131_072
    } else {
        16_384
    };
    let wanted = format!("min <= 4096, default <= {default_max}");
    match probe.sysctl_u64s(key, 3) {
        Err(e) => Finding::unreadable(key, wanted, &e),
        Ok(v) => {
            let ok = v[0] <= 4096 && v[1] <= default_max;
            let status = if ok { Status::Pass } else { Status::Warn };
            Finding::new(key, status, format!("{} {} {}", v[0], v[1], v[2]), wanted)
                .why(
                    "per-socket buffer: the minimum is kept by every busy socket even under \
                     memory pressure and the default is where each starts, so with millions \
                     of sockets both multiply; idle sockets hold none",
                )
                .fix(sysctl_fix(key, format!("4096 {default_max} {}", v[2])))
        }
    }
}

fn keepalive(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    let kernel: Vec<String> = [
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    ]
    .iter()
    .map(|k| probe.sysctl_u64(k).map_or("?".into(), |v| v.to_string()))
    .collect();
    let kernel = format!("kernel {} s + {} s × {}", kernel[0], kernel[1], kernel[2]);
    let max_idle_s = input.max_idle_ms / 1000;
    let wanted = format!("off, or found before the lease (< {max_idle_s} s)");
    let Some(ka) = input.keepalive else {
        return Finding::new(key, Status::Pass, format!("off; {kernel}"), wanted).why(
            "tether's sockets use no keepalive; the kernel defaults apply only to sockets \
             that turn it on without their own timers",
        );
    };
    let found = u64::from(ka.idle_s) + u64::from(ka.interval_s) * u64::from(ka.count);
    let status = if found < max_idle_s {
        Status::Pass
    } else {
        Status::Warn
    };
    Finding::new(
        key,
        status,
        format!(
            "{} s + {} s × {} = {found} s; {kernel}",
            ka.idle_s, ka.interval_s, ka.count
        ),
        wanted,
    )
    .why(format!(
        "tether sets idle, interval and count on each socket ([keepalive]); a dead peer is \
         found after {found} s, but the lease closes a silent connection after {max_idle_s} s \
         anyway, so this backstop never fires first"
    ))
    .fix([format!(
        "lower [keepalive] idle_s so that idle_s + interval_s × count < {max_idle_s}"
    )])
}

fn port_range(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    let wanted = "1024 65535".to_string();
    match probe.sysctl_u64s(key, 2) {
        Err(e) => Finding::unreadable(key, wanted, &e),
        Ok(v) => {
            let span = (v[1] + 1).saturating_sub(v[0]);
            let ok = v[0] <= 1024 && v[1] >= 65_535;
            let status = if ok { Status::Pass } else { Status::Warn };
            let sources = input.connections.div_ceil(span.max(1));
            Finding::new(key, status, format!("{} {}", v[0], v[1]), wanted)
                .why(format!(
                    "each connection from one source address to one listener takes a local \
                     port: {} per source address for the load generator or a proxy in front \
                     ({} source addresses for {} connections); tether itself only accepts",
                    group(span),
                    group(sources),
                    group(input.connections)
                ))
                .fix(sysctl_fix(key, "1024 65535"))
        }
    }
}

fn reserved_ports(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    let ports: Vec<u16> = input
        .listeners
        .iter()
        .map(|a| a.port())
        .filter(|&p| p != 0)
        .collect();
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let wanted = if list.is_empty() {
        "listener ports outside the ephemeral range".to_string()
    } else {
        format!("includes {list} if inside the ephemeral range")
    };
    let range = match probe.sysctl_u64s("net.ipv4.ip_local_port_range", 2) {
        Ok(r) => r,
        Err(e) => return Finding::unreadable(key, wanted, &e),
    };
    let reserved = match probe.sysctl(key) {
        Ok(r) => r,
        Err(e) => return Finding::unreadable(key, wanted, &e),
    };
    let is_reserved = |p: u64| {
        reserved
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .any(|part| {
                let part = part.trim();
                match part.split_once('-') {
                    Some((a, b)) => {
                        a.parse::<u64>().is_ok_and(|a| a <= p)
                            && b.parse::<u64>().is_ok_and(|b| p <= b)
                    }
                    None => part.parse::<u64>().is_ok_and(|x| x == p),
                }
            })
    };
    let exposed: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| (range[0]..=range[1]).contains(&u64::from(p)) && !is_reserved(u64::from(p)))
        .collect();
    let value = if reserved.is_empty() {
        "(none)".to_string()
    } else {
        reserved.clone()
    };
    if exposed.is_empty() {
        return Finding::new(key, Status::Pass, value, wanted)
            .why("no listener port is inside the ephemeral range, or it is reserved");
    }
    let exposed: Vec<String> = exposed.iter().map(u16::to_string).collect();
    let mut all: Vec<String> = reserved
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    all.extend(exposed.iter().cloned());
    Finding::new(key, Status::Warn, value, wanted)
        .why(format!(
            "listener port {} is inside the ephemeral range {}-{}: an outgoing connection can \
             take it, and the server then cannot bind it after a restart",
            exposed.join(","),
            range[0],
            range[1]
        ))
        .fix(sysctl_fix(key, all.join(",")))
}

/// The conntrack table size needed: every connection plus a quarter for connections closing
/// and other traffic.
fn conntrack_need(connections: u64) -> u64 {
    connections + connections / 4
}

fn conntrack_max(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    let need = conntrack_need(input.connections);
    let wanted = format!(">= {} (if loaded)", group(need));
    if !probe.has_sysctl(key) {
        return Finding::new(key, Status::Pass, "not loaded".into(), wanted)
            .why("nf_conntrack is not loaded: no table to fill");
    }
    let max = match probe.sysctl_u64(key) {
        Ok(v) => v,
        Err(e) => return Finding::unreadable(key, wanted, &e),
    };
    let tracking = conntrack_tracking(probe);
    let port = input.listeners.first().map_or(0, |a| a.port());
    let fix = {
        let mut f = sysctl_fix(key, need);
        f.push(format!(
            "echo {} > /sys/module/nf_conntrack/parameters/hashsize",
            need / 4
        ));
        f.push(format!(
            "or leave the gateway's traffic untracked: iptables -t raw -I PREROUTING -p tcp \
             --dport {port} -j NOTRACK; iptables -t raw -I OUTPUT -p tcp --sport {port} -j NOTRACK"
        ));
        f
    };
    if max >= need {
        return Finding::new(key, Status::Pass, group(max), wanted);
    }
    if !tracking {
        return Finding::new(key, Status::Warn, group(max), wanted)
            .why(format!(
                "nf_conntrack is loaded but tracks nothing now; the first stateful firewall or \
                 NAT rule makes {} a hard cap on connections",
                group(max)
            ))
            .fix(fix);
    }
    Finding::new(key, Status::Fail, group(max), wanted)
        .why(format!(
            "netfilter tracks this box's connections and a full table drops new SYNs \
             (\"nf_conntrack: table full, dropping packet\") at {} entries",
            group(max)
        ))
        .fix(fix)
        .allows(max)
}

fn conntrack_timeout(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    // The longest a live connection stays silent: its lease (plus the server's margin), or
    // the keepalive idle time when keepalive is on and shorter.
    let mut silence_s = input.max_idle_ms.div_ceil(1000);
    if let Some(ka) = input.keepalive {
        silence_s = silence_s.min(u64::from(ka.idle_s));
    }
    let wanted = format!("> {silence_s} s (if loaded)");
    if !probe.has_sysctl(key) {
        return Finding::new(key, Status::Pass, "not loaded".into(), wanted)
            .why("nf_conntrack is not loaded: nothing forgets idle connections");
    }
    let v = match probe.sysctl_u64(key) {
        Ok(v) => v,
        Err(e) => return Finding::unreadable(key, wanted, &e),
    };
    let status = if v > silence_s {
        Status::Pass
    } else if conntrack_tracking(probe) {
        Status::Fail
    } else {
        Status::Warn
    };
    Finding::new(key, status, format!("{v} s"), wanted)
        .why(format!(
            "conntrack forgets a connection silent for {v} s; a live connection may be silent \
             for {silence_s} s, after which its packets are INVALID and a stateful firewall \
             drops them without a reset"
        ))
        .fix(sysctl_fix(key, (silence_s * 2).max(7_200)))
}

fn thp(key: &'static str, probe: &Probe, _: &CheckInput) -> Finding {
    let file = key.trim_start_matches("transparent_hugepage/");
    let enabled = file == "enabled";
    let wanted = if enabled {
        "madvise or never"
    } else {
        "not always"
    }
    .to_string();
    match probe.thp(file) {
        Err(e) => Finding::unreadable(key, wanted, &e),
        Ok(v) => {
            let status = if v == "always" {
                Status::Warn
            } else {
                Status::Pass
            };
            let (why, word) = if enabled {
                (
                    "with always, every large heap region is backed by 2 MiB pages: memory \
                     per connection grows and khugepaged's compaction stalls shards",
                    "madvise",
                )
            } else {
                (
                    "with always, a page fault may compact memory synchronously, stalling \
                     the shard that faulted for milliseconds",
                    "defer+madvise",
                )
            };
            Finding::new(key, status, v, wanted).why(why).fix([
                format!("echo {word} > /sys/kernel/mm/{key}"),
                format!(
                    "on every boot: echo 'w /sys/kernel/mm/{key} - - - - {word}' > \
                     /etc/tmpfiles.d/90-tether-thp.conf"
                ),
            ])
        }
    }
}

fn nic_queues(key: &'static str, probe: &Probe, input: &CheckInput) -> Finding {
    let shards = input.shards;
    let wanted = format!(">= {shards} rx queues or RPS CPUs");
    let nics = match probe.nics() {
        Ok(n) => n,
        Err(e) => return Finding::unreadable(key, wanted, &e),
    };
    let value = if nics.is_empty() {
        "no device-backed interface".to_string()
    } else {
        nics.iter()
            .map(|n| format!("{}: {} rx, RPS {}", n.name, n.rx_queues, n.rps_cpus))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if input.listeners.iter().all(|a| a.ip().is_loopback()) {
        return Finding::new(key, Status::Pass, value, wanted)
            .why("the listeners are on loopback: no NIC carries their traffic");
    }
    let short: Vec<_> = nics
        .iter()
        .filter(|n| n.rx_queues.max(n.rps_cpus) < shards)
        .collect();
    if short.is_empty() {
        return Finding::new(key, Status::Pass, value, wanted);
    }
    let mask = format!("{:x}", (1u128 << shards.min(127)) - 1);
    let mut fix = Vec::new();
    for n in &short {
        fix.push(format!("ethtool -L {} combined {shards}", n.name));
        fix.push(format!(
            "if the NIC has fewer queues: for q in /sys/class/net/{}/queues/rx-*; do echo {mask} > $q/rps_cpus; done",
            n.name
        ));
        fix.push(format!(
            "pin each queue's IRQ to its shard's CPU: grep {} /proc/interrupts, then echo CPU > /proc/irq/IRQ/smp_affinity_list (and keep irqbalance off those IRQs)",
            n.name
        ));
    }
    Finding::new(key, Status::Warn, value, wanted)
        .why(format!(
            "receive work of {} lands on fewer CPUs than the {shards} shards, so some shards \
             wait on softirq work of others",
            short
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .fix(fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_keys_are_unique() {
        let mut keys: Vec<&str> = RULES.iter().map(|r| r.key).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "duplicate rule key");
    }

    #[test]
    fn descriptor_targets_round_to_mebi_files() {
        assert_eq!(round_files(1_000_032), 1 << 20);
        assert_eq!(round_files(10_000_032), 10 << 20);
        assert_eq!(round_files(1 << 20), 1 << 20);
    }
}
