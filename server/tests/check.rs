//! `tether check` against fake /proc and /sys trees: a box set up for a million connections
//! passes, a badly set-up one fails with the right fixes, unreadable files are reported, and
//! every rule is documented in tuning.md.

use std::fs;
use std::path::Path;

use tempfile::TempDir;
use tether_server::check::probes::Probe;
use tether_server::check::report::{Report, Status};
use tether_server::check::rules::RULES;
use tether_server::check::{evaluate, CheckArgs, CheckInput};
use tether_server::config::Config;

/// A fake box: `root/proc/...` and `root/sys/...` in a temporary directory.
struct FakeBox {
    /// Holds the tree; removed on drop.
    dir: TempDir,
}

impl FakeBox {
    /// A 4-CPU, 16 GiB box tuned for a million connections, conntrack not loaded.
    fn good() -> FakeBox {
        let b = FakeBox {
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        b.limits(1_048_576, 67_108_864);
        b.write(
            "proc/self/status",
            "Name:\ttether\nCapEff:\t0000000000000000\n",
        );
        b.write(
            "proc/meminfo",
            "MemTotal:       16777216 kB\nMemFree:        15000000 kB\n",
        );
        for (name, value) in [
            ("kernel.osrelease", "6.8.0-45-generic"),
            ("kernel.io_uring_disabled", "0"),
            ("fs.nr_open", "1048576"),
            ("fs.file-max", "9223372036854775807"),
            ("net.core.somaxconn", "65535"),
            ("net.ipv4.tcp_max_syn_backlog", "65535"),
            ("net.ipv4.tcp_migrate_req", "1"),
            ("net.ipv4.tcp_mem", "1000000\t1500000\t2000000"),
            ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
            ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
            ("net.ipv4.tcp_keepalive_time", "7200"),
            ("net.ipv4.tcp_keepalive_intvl", "75"),
            ("net.ipv4.tcp_keepalive_probes", "9"),
            ("net.ipv4.ip_local_port_range", "1024\t65535"),
            ("net.ipv4.ip_local_reserved_ports", "7700"),
        ] {
            b.sysctl(name, value);
        }
        b.write(
            "sys/kernel/mm/transparent_hugepage/enabled",
            "always [madvise] never\n",
        );
        b.write(
            "sys/kernel/mm/transparent_hugepage/defrag",
            "always defer defer+madvise [madvise] never\n",
        );
        b.write("sys/devices/system/cpu/online", "0-3\n");
        b.nic("eth0", 4, "0");
        b.write("sys/class/net/lo/queues/rx-0/rps_cpus", "0\n");
        b
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.root().join(rel);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    fn sysctl(&self, name: &str, value: &str) {
        self.write(
            &format!("proc/sys/{}", name.replace('.', "/")),
            &format!("{value}\n"),
        );
    }

    fn remove(&self, rel: &str) {
        let path = self.root().join(rel);
        if path.is_dir() {
            fs::remove_dir_all(path).expect("rm -r");
        } else {
            fs::remove_file(path).expect("rm");
        }
    }

    fn limits(&self, nofile: u64, memlock: u64) {
        self.write(
            "proc/self/limits",
            &format!(
                "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max cpu time              unlimited            unlimited            seconds   \n\
                 Max open files            {nofile:<20} {nofile:<20} files     \n\
                 Max locked memory         {memlock:<20} {memlock:<20} bytes     \n"
            ),
        );
    }

    fn nic(&self, name: &str, rx_queues: u32, rps: &str) {
        fs::create_dir_all(self.root().join(format!("sys/class/net/{name}/device")))
            .expect("mkdir");
        for q in 0..rx_queues {
            self.write(
                &format!("sys/class/net/{name}/queues/rx-{q}/rps_cpus"),
                &format!("{rps}\n"),
            );
            self.write(
                &format!("sys/class/net/{name}/queues/tx-{q}/xps_cpus"),
                "0\n",
            );
        }
    }

    /// The report for `connections` with `cfg`.
    fn check(&self, cfg: &Config, connections: u64) -> Report {
        let args = CheckArgs {
            proc_root: self.root().to_path_buf(),
            sys_root: self.root().to_path_buf(),
            connections: Some(connections),
            json: false,
        };
        let probe = Probe::new(&args.proc_root, &args.sys_root);
        evaluate(&probe, &CheckInput::new(&args, cfg, &probe))
    }
}

/// The default configuration listening on every address (so the NIC rule applies).
fn public_config() -> Config {
    let mut cfg = Config::default();
    cfg.server.listen = "0.0.0.0:7700".parse().expect("address");
    cfg
}

fn finding<'a>(report: &'a Report, key: &str) -> &'a tether_server::check::report::Finding {
    report
        .findings
        .iter()
        .find(|f| f.check == key)
        .unwrap_or_else(|| panic!("no finding {key}"))
}

#[test]
fn a_box_set_up_for_a_million_connections_passes() {
    let b = FakeBox::good();
    let report = b.check(&public_config(), 1_000_000);
    let text = report.to_text();
    for f in &report.findings {
        assert_eq!(f.status, Status::Pass, "{} should pass:\n{text}", f.check);
        assert!(f.fix.is_empty(), "{} passes but has fixes", f.check);
    }
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.shards, 4, "shards = 0 means one per online CPU");
    assert!(
        text.contains("This box is set up for 1,000,000 connections."),
        "{text}"
    );
    assert_eq!(report.findings.len(), RULES.len());
}

#[test]
fn the_same_box_fails_ten_million_and_names_the_limits() {
    let b = FakeBox::good();
    let report = b.check(&public_config(), 10_000_000);
    assert_eq!(report.exit_code(), 1);
    for key in ["RLIMIT_NOFILE", "fs.nr_open", "MemTotal"] {
        assert_eq!(finding(&report, key).status, Status::Fail, "{key}");
    }
    // 2,500,000 connections per shard: more than the 2^20 slots the kernel gives one ring's
    // file table, whatever the limits say. More shards are the fix, not a higher limit.
    for key in ["RLIMIT_NOFILE", "fs.nr_open"] {
        let f = finding(&report, key);
        assert!(
            f.fix.contains(&"server.shards = 10 or more".to_string()),
            "{key}: {:?}",
            f.fix
        );
        assert!(f.why.contains("1,048,576 slots"), "{key}: {}", f.why);
    }
    // The four tables hold 4 x 1,048,576 connections; memory (16 GiB / 4,566 B = 3.8 M)
    // binds first.
    let (allows, first) = report.capacity().expect("a capacity");
    assert_eq!(first, "MemTotal", "{}", report.to_text());
    assert!(allows < 4 * 1_048_576, "{}", report.to_text());

    // With ten shards each table needs a million slots: the same limits hold them.
    let mut cfg = public_config();
    cfg.server.shards = 10;
    let report = b.check(&cfg, 10_000_000);
    for key in ["RLIMIT_NOFILE", "fs.nr_open"] {
        assert_eq!(finding(&report, key).status, Status::Pass, "{key}");
    }
    assert_eq!(finding(&report, "MemTotal").status, Status::Fail);
}

/// A box like this one: hard NOFILE 20,000 and no CAP_SYS_RESOURCE, small memory, conntrack
/// tracking with a small table and a short timeout, io_uring off, untuned everything.
fn bad_box() -> FakeBox {
    let b = FakeBox::good();
    b.limits(20_000, 65_536);
    b.write(
        "proc/self/status",
        "Name:\ttether\nCapEff:\t000001fffeffffff\n",
    );
    b.write("proc/meminfo", "MemTotal:        2097152 kB\n");
    for (name, value) in [
        ("kernel.osrelease", "5.10.0"),
        ("kernel.io_uring_disabled", "2"),
        ("fs.file-max", "400000"),
        ("net.core.somaxconn", "4096"),
        ("net.ipv4.tcp_max_syn_backlog", "2048"),
        ("net.ipv4.tcp_migrate_req", "0"),
        ("net.ipv4.tcp_mem", "287901\t383869\t575802"),
        ("net.ipv4.tcp_rmem", "16384\t262144\t6291456"),
        ("net.ipv4.ip_local_port_range", "32768\t60999"),
        ("net.ipv4.ip_local_reserved_ports", ""),
        ("net.netfilter.nf_conntrack_max", "262144"),
        ("net.netfilter.nf_conntrack_count", "1234"),
        ("net.netfilter.nf_conntrack_tcp_timeout_established", "600"),
    ] {
        b.sysctl(name, value);
    }
    b.write(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never\n",
    );
    b.remove("sys/class/net/eth0");
    b.nic("eth0", 1, "0");
    b
}

#[test]
fn a_bad_box_fails_with_the_commands_that_fix_it() {
    let b = bad_box();
    let mut cfg = public_config();
    cfg.server.listen = "0.0.0.0:40000".parse().expect("address");
    let report = b.check(&cfg, 1_000_000);
    let text = report.to_text();
    assert_eq!(report.exit_code(), 1, "{text}");

    let status = |key| finding(&report, key).status;
    for key in [
        "kernel.osrelease",
        "kernel.io_uring_disabled",
        "RLIMIT_NOFILE",
        "fs.file-max",
        "MemTotal",
        "net.netfilter.nf_conntrack_max",
        "net.netfilter.nf_conntrack_tcp_timeout_established",
    ] {
        assert_eq!(status(key), Status::Fail, "{key}:\n{text}");
    }
    for key in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.tcp_migrate_req",
        "net.ipv4.tcp_mem",
        "net.ipv4.tcp_rmem",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_local_reserved_ports",
        "transparent_hugepage/enabled",
        "NIC queues",
    ] {
        assert_eq!(status(key), Status::Warn, "{key}:\n{text}");
    }
    // Kernel 5.10 charges the rings to memlock: 64 KiB is below glommio's 512 KiB anyway.
    assert_eq!(status("RLIMIT_MEMLOCK"), Status::Fail, "{text}");

    let fixes: Vec<&str> = report
        .findings
        .iter()
        .flat_map(|f| f.fix.iter().map(String::as_str))
        .collect();
    for wanted in [
        "sysctl -w kernel.io_uring_disabled=0",
        "systemd: LimitNOFILE=1048576 in the [Service] section (systemctl edit tether)",
        "or, with this limit, server.shards = 50 (more shards than cores is fine: each holds up to the limit)",
        "upgrade to Linux 6.8 or later",
        "sysctl -w net.core.somaxconn=65535",
        "sysctl -w net.ipv4.tcp_migrate_req=1",
        "echo 'net.core.somaxconn = 65535' >> /etc/sysctl.d/90-tether.conf",
        "sysctl -w net.netfilter.nf_conntrack_max=1250000",
        "sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=7200",
        "sysctl -w net.ipv4.tcp_rmem='4096 131072 6291456'",
        "sysctl -w net.ipv4.tcp_mem='500000 750000 1000000'",
        "sysctl -w net.ipv4.ip_local_port_range='1024 65535'",
        "sysctl -w net.ipv4.ip_local_reserved_ports=40000",
        "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled",
        "ethtool -L eth0 combined 4",
    ] {
        assert!(
            fixes.contains(&wanted),
            "missing fix {wanted:?} in:\n{text}"
        );
    }

    // The explanation of why a million connections cannot be held here.
    assert!(
        text.contains("This box cannot hold 1,000,000 connections as it is:"),
        "{text}"
    );
    assert!(text.contains("no CAP_SYS_RESOURCE"), "{text}");
    assert!(
        text.contains(
            "At most 80,000 connections fit now; RLIMIT_NOFILE is the first limit reached."
        ),
        "{text}"
    );
}

#[test]
fn conntrack_loaded_but_idle_only_warns() {
    let b = FakeBox::good();
    b.sysctl("net.netfilter.nf_conntrack_max", "262144");
    b.sysctl("net.netfilter.nf_conntrack_count", "0");
    b.sysctl(
        "net.netfilter.nf_conntrack_tcp_timeout_established",
        "432000",
    );
    let report = b.check(&public_config(), 1_000_000);
    let f = finding(&report, "net.netfilter.nf_conntrack_max");
    assert_eq!(f.status, Status::Warn);
    assert!(f.why.contains("tracks nothing now"), "{}", f.why);
    assert_eq!(
        finding(
            &report,
            "net.netfilter.nf_conntrack_tcp_timeout_established"
        )
        .status,
        Status::Pass
    );
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn unreadable_files_are_reported_not_guessed() {
    let b = FakeBox::good();
    // A directory where a file should be cannot be read; a missing file neither; garbage
    // does not parse.
    b.remove("proc/sys/net/core/somaxconn");
    fs::create_dir_all(b.root().join("proc/sys/net/core/somaxconn")).expect("mkdir");
    b.remove("proc/self/limits");
    b.sysctl("net.ipv4.tcp_mem", "lots");
    let report = b.check(&public_config(), 1_000_000);
    let text = report.to_text();
    for key in [
        "net.core.somaxconn",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "net.ipv4.tcp_mem",
    ] {
        let f = finding(&report, key);
        assert!(f.unreadable, "{key}");
        assert_eq!(f.status, Status::Warn, "{key}");
        assert_eq!(f.value, "?");
    }
    let limits = b.root().join("proc/self/limits");
    assert!(
        text.contains(&format!(
            "could not read {}: no such file",
            limits.display()
        )),
        "{text}"
    );
    assert!(text.contains("unexpected content \"lots\""), "{text}");
    assert!(
        text.contains(
            "not verified (could not read): RLIMIT_NOFILE, RLIMIT_MEMLOCK, net.core.somaxconn, net.ipv4.tcp_mem"
        ),
        "{text}"
    );
    // Nothing failed: what could be read is fine.
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn a_loopback_listener_needs_no_nic_queues() {
    let b = bad_box();
    let report = b.check(&Config::default(), 1_000);
    assert_eq!(finding(&report, "NIC queues").status, Status::Pass);
}

#[test]
fn json_output_carries_every_finding() {
    let b = bad_box();
    let report = b.check(&public_config(), 1_000_000);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    assert_eq!(json["status"], "fail");
    assert_eq!(json["connections"], 1_000_000);
    assert_eq!(json["first_limit"], "RLIMIT_NOFILE");
    let findings = json["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), RULES.len());
    assert_eq!(findings[0]["check"], RULES[0].key);
}

/// The keys of tuning.md's summary table (first column, in backticks).
fn tuning_table_keys() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning.md");
    let text = fs::read_to_string(&path).expect("tuning.md at the repository root");
    let start = text
        .find("<!-- rules -->")
        .expect("tuning.md marks its rules table with <!-- rules -->");
    text[start..]
        .lines()
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .filter_map(|l| {
            let cell = l.split('|').nth(1)?.trim();
            Some(cell.strip_prefix('`')?.strip_suffix('`')?.to_string())
        })
        .collect()
}

#[test]
fn tuning_md_documents_exactly_the_checked_rules() {
    let keys = tuning_table_keys();
    let rules: Vec<&str> = RULES.iter().map(|r| r.key).collect();
    for key in &rules {
        assert!(
            keys.iter().any(|k| k == key),
            "rule {key} is not in tuning.md's table"
        );
    }
    for key in &keys {
        assert!(
            rules.contains(&key.as_str()),
            "tuning.md lists {key}, which tether check does not check"
        );
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning.md");
    let text = fs::read_to_string(path).expect("tuning.md");
    for key in &rules {
        assert!(
            text.contains(&format!("### `{key}`")),
            "tuning.md has no section for {key}"
        );
    }
    // The figures the rules compute with are the ones the guide states.
    use tether_server::check::report::group;
    use tether_server::check::rules;
    for figure in [
        format!(
            "**Kernel: {} bytes per socket**",
            group(rules::KERNEL_BYTES_PER_CONN)
        ),
        format!(
            "**tether's user space: {} bytes**",
            rules::TETHER_BYTES_PER_CONN
        ),
        format!("**io_uring: {} bytes**", rules::IO_URING_BYTES_PER_CONN),
        format!(
            "{}-byte `nf_conntrack` entry",
            rules::CONNTRACK_BYTES_PER_CONN
        ),
        format!("above {} % of memory", rules::MEMORY_BUDGET_PCT),
        format!("keeps {} for it", group(rules::SYSTEM_FILES)),
        format!("- **Value.** {}.", rules::BACKLOG),
    ] {
        assert!(text.contains(&figure), "tuning.md does not say {figure:?}");
    }
}
