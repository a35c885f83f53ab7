//! How payloads, senders and outcomes read on a terminal.

use tether_proto::{RefuseReason, UpstreamStatus};

/// A payload for a terminal: its text when it is printable UTF-8, otherwise hex.
pub fn payload(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t') =>
        {
            format!("{text:?}")
        }
        _ => {
            let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
            format!("{} bytes: {hex}", payload.len())
        }
    }
}

/// `user/device`, or `user` alone for an empty device.
pub fn sender(user: &str, device: &str) -> String {
    if device.is_empty() {
        user.to_owned()
    } else {
        format!("{user}/{device}")
    }
}

/// `accepted` or `refused <reason>`, the reason named as in the HTTP API's results.
pub fn upstream_status(status: UpstreamStatus) -> String {
    match status {
        UpstreamStatus::Accepted => "accepted".to_owned(),
        UpstreamStatus::Refused(reason) => format!("refused {}", reason_name(reason)),
    }
}

/// A refusal reason's name, as the HTTP API writes it (`too_large`, `no_backend`...); a
/// reason this version does not know is `other(N)`.
fn reason_name(reason: RefuseReason) -> String {
    match reason {
        RefuseReason::Other(n) => format!("other({n})"),
        named => named.name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_like_the_api() {
        assert_eq!(upstream_status(UpstreamStatus::Accepted), "accepted");
        assert_eq!(
            upstream_status(UpstreamStatus::Refused(RefuseReason::NoBackend)),
            "refused no_backend"
        );
        assert_eq!(
            upstream_status(UpstreamStatus::Refused(RefuseReason::Other(200))),
            "refused other(200)"
        );
        assert_eq!(sender("alice", "phone"), "alice/phone");
        assert_eq!(sender("alice", ""), "alice");
        assert_eq!(payload(b"yo"), "\"yo\"");
        assert_eq!(payload(b"\x00\xff"), "2 bytes: 00ff");
    }
}
