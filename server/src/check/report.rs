//! What `tether check` found, and how it is shown: a table for people, JSON for tools.

use std::fmt::Write as _;

use serde::Serialize;

use super::probes::ReadError;

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The box is set up for the target.
    Pass,
    /// Works, but something will hurt under load or could not be verified.
    Warn,
    /// The box cannot hold the target (or the server cannot start) until this is fixed.
    Fail,
}

impl Status {
    /// The word shown in the table.
    pub fn word(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// The result of one rule.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// The rule's key, as written in tuning.md.
    pub check: &'static str,
    /// The value found on the box.
    pub value: String,
    /// The value the target needs.
    pub wanted: String,
    /// Pass, warn or fail.
    pub status: Status,
    /// Why this status, in one or two sentences (for an unreadable file: what and why).
    pub why: String,
    /// Commands that fix it, now and persistently; empty when nothing needs doing.
    pub fix: Vec<String>,
    /// Connections this setting allows as it is now, when it bounds them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allows: Option<u64>,
    /// Whether a file could not be read (the finding is then a warning about that).
    pub unreadable: bool,
}

impl Finding {
    /// A finding with no fix and no bound.
    pub fn new(check: &'static str, status: Status, value: String, wanted: String) -> Finding {
        Finding {
            check,
            value,
            wanted,
            status,
            why: String::new(),
            fix: Vec::new(),
            allows: None,
            unreadable: false,
        }
    }

    /// The finding for a value that could not be read.
    pub fn unreadable(check: &'static str, wanted: String, err: &ReadError) -> Finding {
        Finding {
            why: err.to_string(),
            unreadable: true,
            ..Finding::new(check, Status::Warn, "?".to_string(), wanted)
        }
    }

    /// Sets the explanation.
    pub fn why(mut self, why: impl Into<String>) -> Finding {
        self.why = why.into();
        self
    }

    /// Sets the fix commands (ignored on a pass: nothing to fix).
    pub fn fix<I: IntoIterator<Item = String>>(mut self, fix: I) -> Finding {
        if self.status != Status::Pass {
            self.fix = fix.into_iter().collect();
        }
        self
    }

    /// Records how many connections this setting allows now.
    pub fn allows(mut self, n: u64) -> Finding {
        self.allows = Some(n);
        self
    }
}

/// Everything `tether check` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Connections the box was checked for.
    pub connections: u64,
    /// Shards the server would run.
    pub shards: u64,
    /// Listening addresses of the configuration.
    pub listeners: Vec<String>,
    /// One finding per rule, in the order of the rules table.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The worst status of all findings.
    pub fn worst(&self) -> Status {
        self.findings
            .iter()
            .map(|f| f.status)
            .max()
            .unwrap_or(Status::Pass)
    }

    /// The smallest number of connections any setting allows now, and which one.
    pub fn capacity(&self) -> Option<(u64, &'static str)> {
        self.findings
            .iter()
            .filter_map(|f| f.allows.map(|n| (n, f.check)))
            .min_by_key(|&(n, _)| n)
    }

    /// Exit code: 1 on any failure, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.worst() == Status::Fail)
    }

    /// The table for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tether check: {} connections, {} shards, listening on {}\n",
            group(self.connections),
            self.shards,
            self.listeners.join(", ")
        );
        let w_check = width(self.findings.iter().map(|f| f.check), "CHECK");
        let w_value = width(self.findings.iter().map(|f| f.value.as_str()), "VALUE");
        let _ = writeln!(
            out,
            "{:<6} {:<w_check$}  {:<w_value$}  WANTED",
            "STATUS", "CHECK", "VALUE"
        );
        for f in &self.findings {
            let _ = writeln!(
                out,
                "{:<6} {:<w_check$}  {:<w_value$}  {}",
                f.status.word(),
                f.check,
                f.value,
                f.wanted
            );
            if f.status != Status::Pass || f.unreadable {
                if !f.why.is_empty() {
                    let _ = writeln!(out, "       {}", f.why);
                }
                for cmd in &f.fix {
                    let _ = writeln!(out, "       fix: {cmd}");
                }
            }
        }
        let count = |s: Status| self.findings.iter().filter(|f| f.status == s).count();
        let _ = writeln!(
            out,
            "\n{} pass, {} warn, {} fail",
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail)
        );
        let unreadable: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.unreadable)
            .map(|f| f.check)
            .collect();
        if !unreadable.is_empty() {
            let _ = writeln!(
                out,
                "not verified (could not read): {}",
                unreadable.join(", ")
            );
        }
        match (self.worst(), self.capacity()) {
            (Status::Fail, cap) => {
                let _ = writeln!(
                    out,
                    "This box cannot hold {} connections as it is:",
                    group(self.connections)
                );
                for f in self.findings.iter().filter(|f| f.status == Status::Fail) {
                    let _ = writeln!(out, "  - {}: {}", f.check, f.why);
                }
                if let Some((n, check)) = cap {
                    let _ = writeln!(
                        out,
                        "At most {} connections fit now; {} is the first limit reached.",
                        group(n),
                        check
                    );
                }
            }
            _ => {
                let _ = writeln!(
                    out,
                    "This box is set up for {} connections.",
                    group(self.connections)
                );
            }
        }
        out
    }

    /// The same findings as JSON.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            report: &'a Report,
            status: Status,
            capacity: Option<u64>,
            first_limit: Option<&'static str>,
        }
        let cap = self.capacity();
        let out = Out {
            report: self,
            status: self.worst(),
            capacity: cap.map(|c| c.0),
            first_limit: cap.map(|c| c.1),
        };
        serde_json::to_string_pretty(&out).expect("a report always serialises")
    }
}

/// Width of a column: its longest cell or its header.
fn width<'a>(cells: impl Iterator<Item = &'a str>, header: &str) -> usize {
    cells.map(str::len).max().unwrap_or(0).max(header.len())
}

/// A number with thousands separators (`1,000,000`).
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte count in the largest binary unit that keeps it readable (`3.9 GiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(10_000_000), "10,000,000");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
