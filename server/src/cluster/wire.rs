//! What nodes say to each other on their subjects (`<prefix>.<node>`), as JSON: a request
//! names its operation, a reply carries a push's status, a count, or an error. Pure
//! functions; anything malformed a peer sends decodes to an error that is answered, never a
//! panic.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tether_proto::{PushStatus, RefuseReason};

use crate::core::msg::Kick;

/// A request to another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Deliver a push to the user's devices on the receiving node.
    Push {
        /// The target user.
        user: String,
        /// The application bytes, standard base64.
        payload: String,
        /// Whether the sender wants an `Acked` follow-up.
        want_ack: bool,
        /// The forwarding node (where an `Acked` goes).
        from: String,
        /// The forwarding node's id for this push (echoed in `Acked`).
        job: u64,
        /// A client's `Send`: who sent it (its recipients' version-2 devices get a `Message`
        /// naming them). Absent for a backend's or the API's push. A node that does not know
        /// the field refuses the request (unknown fields are refused), so a client's message
        /// never reaches a device as a backend's `Push`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<crate::mesh::SendFrom>,
    },
    /// A device the push was written to acknowledged it (no reply).
    Acked {
        /// The forwarding node's id for the push.
        job: u64,
    },
    /// Kick the user's main connections (only `device`'s when given). On the wire its fields
    /// stand beside `op`, as they always have: `user`, `device` (`null` for every device),
    /// `code` (the close code's number) and `may_reconnect`.
    Kick(Kick),
    /// The user logged in with `device` on another node: its older connection here is
    /// replaced (kicked with `Replaced`, not to reconnect). Sent before the sender writes the
    /// directory entry, so it also says what `Joined` says.
    Replace {
        /// The user.
        user: String,
        /// The device that logged in elsewhere.
        device: String,
    },
    /// The sender is about to write itself into the user's directory entry (it holds a
    /// device of the user): the receiver's note that the entry names it alone goes
    /// (`local.rs`). Answered with a count of 0 once taken in. A login sends `Replace`, which
    /// says the same.
    Joined {
        /// The user.
        user: String,
    },
    /// How many main connections of the user this node holds.
    Presence {
        /// The user.
        user: String,
    },
}

impl Request {
    /// A push request.
    pub fn push(
        user: &str,
        payload: &[u8],
        want_ack: bool,
        from: &str,
        job: u64,
        sender: Option<&crate::mesh::SendFrom>,
    ) -> Request {
        Request::Push {
            user: user.to_string(),
            payload: base64::engine::general_purpose::STANDARD.encode(payload),
            want_ack,
            from: from.to_string(),
            job,
            sender: sender.cloned(),
        }
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a request; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Request, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("malformed request: {e}"))
    }
}

/// A node's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// A push's first result there.
    Status {
        /// `delivered`, `offline`, `refused` or `acked`.
        status: String,
        /// Devices (delivered) or refuse reason (refused, its wire value).
        #[serde(default)]
        n: u32,
    },
    /// Connections kicked, or devices present.
    Count {
        /// The number.
        n: u32,
    },
    /// The request could not be carried out.
    Error {
        /// Why.
        message: String,
    },
}

impl Reply {
    /// A push status as a reply.
    pub fn status(s: PushStatus) -> Reply {
        let (status, n) = match s {
            PushStatus::Delivered(n) => ("delivered", n),
            PushStatus::Offline => ("offline", 0),
            PushStatus::Refused(r) => ("refused", u32::from(r.to_u8())),
            PushStatus::Acked => ("acked", 0),
            PushStatus::Accepted => ("accepted", 0),
        };
        Reply::Status {
            status: status.to_string(),
            n,
        }
    }

    /// The push status this reply carries, if it is a well-formed one.
    pub fn to_status(&self) -> Option<PushStatus> {
        let Reply::Status { status, n } = self else {
            return None;
        };
        match status.as_str() {
            "delivered" if *n > 0 => Some(PushStatus::Delivered(*n)),
            "offline" => Some(PushStatus::Offline),
            "refused" => u8::try_from(*n)
                .ok()
                .map(|r| PushStatus::Refused(RefuseReason::from_u8(r))),
            "acked" => Some(PushStatus::Acked),
            _ => None,
        }
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a reply; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Reply, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("malformed reply: {e}"))
    }
}

/// What one part of a push (this node, or one other node) came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The node answered.
    Status(PushStatus),
    /// Nobody listens on the node's subject: the node is gone (its directory entry is stale).
    Gone,
    /// The node did not answer in time.
    TimedOut,
    /// The directory or the node could not be reached (NATS down, or a failed request).
    Unavailable,
}

/// One result for the whole push from its parts: delivered when any part delivered (devices
/// added up); else a refusal a node decided (slow consumer, too large, …); else timed out when
/// a node did not answer; else cluster unavailable when the cluster could not be asked; else
/// offline.
pub fn combine(parts: &[Part]) -> PushStatus {
    let delivered: u32 = parts
        .iter()
        .filter_map(|p| match p {
            Part::Status(PushStatus::Delivered(n)) => Some(*n),
            _ => None,
        })
        .fold(0u32, |a, n| a.saturating_add(n));
    if delivered > 0 {
        return PushStatus::Delivered(delivered);
    }
    if let Some(r) = parts.iter().find_map(|p| match p {
        Part::Status(PushStatus::Refused(r)) => Some(*r),
        _ => None,
    }) {
        return PushStatus::Refused(r);
    }
    if parts.contains(&Part::TimedOut) {
        return PushStatus::Refused(RefuseReason::TimedOut);
    }
    if parts.contains(&Part::Unavailable) {
        return PushStatus::Refused(RefuseReason::ClusterUnavailable);
    }
    PushStatus::Offline
}

#[cfg(test)]
mod tests {
    use tether_proto::CloseCode;

    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let reqs = [
            Request::push("u", b"\x00\xffhi", true, "a", 7, None),
            Request::push(
                "u",
                b"yo",
                false,
                "a",
                8,
                Some(&crate::mesh::SendFrom {
                    user: "alice".into(),
                    device: "phone".into(),
                }),
            ),
            Request::Acked { job: 7 },
            Request::Kick(Kick {
                user: "u".into(),
                device: Some("d".into()),
                code: CloseCode::Kicked,
                may_reconnect: false,
            }),
            Request::Replace {
                user: "u".into(),
                device: "d".into(),
            },
            Request::Joined { user: "u".into() },
            Request::Presence { user: "u".into() },
        ];
        for r in reqs {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        for s in [
            PushStatus::Delivered(3),
            PushStatus::Offline,
            PushStatus::Refused(RefuseReason::SlowConsumer),
            PushStatus::Refused(RefuseReason::Other(200)),
            PushStatus::Acked,
        ] {
            let r = Reply::decode(&Reply::status(s).encode()).unwrap();
            assert_eq!(r.to_status(), Some(s));
        }
    }

    #[test]
    fn a_kick_is_the_same_bytes_as_ever() {
        // Nodes of different versions kick each other's users: these bytes must not change.
        let kick = |device: Option<&str>| {
            Request::Kick(Kick {
                user: "u".into(),
                device: device.map(str::to_string),
                code: CloseCode::Kicked,
                may_reconnect: false,
            })
        };
        let one = br#"{"op":"kick","user":"u","device":"d","code":2009,"may_reconnect":false}"#;
        let every = br#"{"op":"kick","user":"u","device":null,"code":2009,"may_reconnect":false}"#;
        assert_eq!(kick(Some("d")).encode(), one);
        assert_eq!(kick(None).encode(), every);
        assert_eq!(Request::decode(one).unwrap(), kick(Some("d")));
        assert_eq!(Request::decode(every).unwrap(), kick(None));
        let no_device = br#"{"op":"kick","user":"u","code":2009,"may_reconnect":false}"#;
        assert_eq!(Request::decode(no_device).unwrap(), kick(None));
        let extra =
            br#"{"op":"kick","user":"u","device":null,"code":2009,"may_reconnect":false,"x":1}"#;
        assert!(
            Request::decode(extra).is_err(),
            "unknown fields are refused"
        );
        let other = br#"{"op":"kick","user":"u","device":null,"code":4321,"may_reconnect":true}"#;
        assert_eq!(
            Request::decode(other).unwrap().encode(),
            other,
            "any code, as it came"
        );
        let wide = br#"{"op":"kick","user":"u","device":null,"code":70000,"may_reconnect":false}"#;
        assert!(Request::decode(wide).is_err(), "a code is a u16");
    }

    #[test]
    fn anything_malformed_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{}",
            b"{\"op\":\"push\"}",
            b"{\"op\":\"nope\",\"user\":\"u\"}",
            b"\xff\xfe",
            b"[1,2]",
        ] {
            assert!(Request::decode(bad).is_err());
            assert!(Reply::decode(bad).is_err());
        }
        let zero = Reply::Status {
            status: "delivered".into(),
            n: 0,
        };
        assert_eq!(zero.to_status(), None, "Delivered(0) is malformed");
        let wide = Reply::Status {
            status: "refused".into(),
            n: 300,
        };
        assert_eq!(wide.to_status(), None);
        assert_eq!(Reply::Count { n: 1 }.to_status(), None);
    }

    #[test]
    fn one_result_from_the_parts() {
        use Part::*;
        let d = |n| Status(PushStatus::Delivered(n));
        assert_eq!(
            combine(&[d(1), Gone, d(2)]),
            PushStatus::Delivered(3),
            "devices on two nodes"
        );
        assert_eq!(combine(&[d(1), Unavailable]), PushStatus::Delivered(1));
        assert_eq!(
            combine(&[Status(PushStatus::Offline), TimedOut]),
            PushStatus::Refused(RefuseReason::TimedOut)
        );
        assert_eq!(
            combine(&[Status(PushStatus::Offline), Unavailable]),
            PushStatus::Refused(RefuseReason::ClusterUnavailable)
        );
        assert_eq!(
            combine(&[Status(PushStatus::Offline), Gone]),
            PushStatus::Offline
        );
        assert_eq!(
            combine(&[
                Status(PushStatus::Offline),
                Status(PushStatus::Refused(RefuseReason::SlowConsumer))
            ]),
            PushStatus::Refused(RefuseReason::SlowConsumer)
        );
        assert_eq!(combine(&[]), PushStatus::Offline);
    }
}
