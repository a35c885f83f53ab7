//! Who sent an upstream message, as the webhook and NATS sinks tell the backend: the same
//! header names and the same encoding on both.
//!
//! | header             | value                                                        |
//! |--------------------|--------------------------------------------------------------|
//! | `Tether-User`      | the sender's user id, percent-encoded UTF-8 ([`encode_id`])  |
//! | `Tether-Device`    | the sender's device id, percent-encoded UTF-8                |
//! | `Tether-Session`   | the sender connection's `LoginOk.session_id`, decimal        |
//! | `Tether-Client-Id` | the client's id for the message, decimal (a resend keeps it) |
//!
//! Ids may hold any UTF-8 (a token's user id is not restricted to ASCII), and a header value
//! may not: every byte of the id's UTF-8 other than `A-Z a-z 0-9 - . _ ~` (RFC 3986's
//! unreserved characters) is written `%XX`, so any URL decoder (`decodeURIComponent`,
//! `urllib.parse.unquote`, `url.PathUnescape`) gives the id back, and `+` is never ambiguous.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::UpstreamJob;

/// The sender's user id.
pub(crate) const USER: &str = "Tether-User";
/// The sender's device id.
pub(crate) const DEVICE: &str = "Tether-Device";
/// The sender connection's session id.
pub(crate) const SESSION: &str = "Tether-Session";
/// The client's id for the message.
pub(crate) const CLIENT_ID: &str = "Tether-Client-Id";
/// In a NATS reply: `rejected` refuses the message (see `nats.rs`).
pub(crate) const STATUS: &str = "Tether-Status";

/// Bytes written as `%XX`: everything but RFC 3986's unreserved characters.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An id as a header value: see the [module documentation](self).
pub(crate) fn encode_id(id: &str) -> String {
    utf8_percent_encode(id, ESCAPED).to_string()
}

/// The four headers of `job`, names and values, in the order above.
pub(crate) fn of(job: &UpstreamJob) -> [(&'static str, String); 4] {
    [
        (USER, encode_id(&job.user)),
        (DEVICE, encode_id(&job.device)),
        (SESSION, job.session_id.to_string()),
        (CLIENT_ID, job.origin.client_id.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_bytes_stay_and_the_rest_are_escaped() {
        assert_eq!(encode_id("alice-01.x_y~z"), "alice-01.x_y~z");
        assert_eq!(encode_id("a b+c%/:"), "a%20b%2Bc%25%2F%3A");
        assert_eq!(encode_id("José"), "Jos%C3%A9");
        assert_eq!(encode_id("用户"), "%E7%94%A8%E6%88%B7");
        assert_eq!(encode_id("a\r\nb"), "a%0D%0Ab");
    }
}
