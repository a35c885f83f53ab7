//! What the machine tells the app, in a form C can read: [`TetherEvent`], whose pointers
//! borrow from an [`Owned`] event kept by the object that produced it.

use std::ffi::{c_char, CString};
use std::ptr;

use bytes::Bytes;
use tether_proto::heartbeat::ClientEvent;
use tether_proto::{CloseCode, Frame, UpstreamStatus};

/// The main connection is logged in. `id`: the server's id of the connection; `value`: the
/// server's epoch (a change means the server restarted).
pub const TETHER_EVENT_ONLINE: u32 = 1;
/// The main connection is gone; the machine reconnects by itself unless `STOPPED` follows.
pub const TETHER_EVENT_OFFLINE: u32 = 2;
/// A push. `id`: the push's id, to acknowledge; `data`, `len`: the payload.
pub const TETHER_EVENT_PUSH: u32 = 3;
/// A message from another user (`Send`). `id`: to acknowledge like a push; `from_user`,
/// `from_device`: the sender as the server authenticated it; `data`, `len`: the payload.
pub const TETHER_EVENT_MESSAGE: u32 = 4;
/// The one result of an upstream message. `id`: its `client_id`; `code`: 0 when the backend
/// accepted it, else a refuse reason (`TETHER_REFUSED_*`); `data`, `len`: the backend's reply.
pub const TETHER_EVENT_UPSTREAM_RESULT: u32 = 5;
/// The main connection's heartbeat interval changed. `value`: the new interval, ms.
pub const TETHER_EVENT_INTERVAL: u32 = 6;
/// Learning converged for this network. `value`: the largest idle gap verified to survive,
/// ms; `value2`: the smallest seen to fail (0: none). Save `tether_machine_memory` now.
pub const TETHER_EVENT_LEARNED: u32 = 7;
/// The server said not to reconnect. `code`: its close code (2005 bad token, 2006 expired
/// token, 2008 replaced, 2009 kicked, ...). Nothing happens until a restart.
pub const TETHER_EVENT_STOPPED: u32 = 8;
/// The token ends in `value` ms: get a new one and hand it over (`..._set_token`), or the
/// connection closes then.
pub const TETHER_EVENT_TOKEN_NOTICE: u32 = 9;
/// The server took the new token; the connection lives on.
pub const TETHER_EVENT_TOKEN_REFRESHED: u32 = 10;

/// Refuse reasons of `TETHER_EVENT_UPSTREAM_RESULT` (`code`), as on the wire.
pub const TETHER_REFUSED_TOO_LARGE: i32 = 2;
/// Too many upstream messages in flight on this connection: wait for results.
pub const TETHER_REFUSED_RATE_LIMITED: i32 = 3;
/// The server sheds load: retry later.
pub const TETHER_REFUSED_OVERLOADED: i32 = 4;
/// Upstream messages are off on this server.
pub const TETHER_REFUSED_NOT_ALLOWED: i32 = 5;
/// The server is draining: resend on the next connection.
pub const TETHER_REFUSED_SHUTTING_DOWN: i32 = 6;
/// No answer in time: the backend may or may not have processed it.
pub const TETHER_REFUSED_TIMED_OUT: i32 = 9;
/// No backend took it: it was not processed.
pub const TETHER_REFUSED_NO_BACKEND: i32 = 10;
/// The backend said no; its reply says why.
pub const TETHER_REFUSED_REJECTED: i32 = 11;

/// One event. Which fields mean something depends on `kind` (a `TETHER_EVENT_*`); the others
/// are 0 or NULL. Pointers stay valid until the next call that takes an event from the same
/// object (in a callback: until it returns).
#[repr(C)]
#[derive(Debug)]
pub struct TetherEvent {
    /// A `TETHER_EVENT_*`.
    pub kind: u32,
    /// A close code or a result code, per `kind`.
    pub code: i32,
    /// An id, per `kind`.
    pub id: u64,
    /// A number, per `kind`.
    pub value: u64,
    /// A second number, per `kind`.
    pub value2: u64,
    /// Bytes (a payload, a reply), `len` long; not NUL-terminated.
    pub data: *const u8,
    /// Length of `data`.
    pub len: usize,
    /// The sender's user id (`MESSAGE`), NUL-terminated.
    pub from_user: *const c_char,
    /// The sender's device id (`MESSAGE`), NUL-terminated.
    pub from_device: *const c_char,
}

impl TetherEvent {
    /// No event.
    pub(crate) fn empty() -> TetherEvent {
        TetherEvent {
            kind: 0,
            code: 0,
            id: 0,
            value: 0,
            value2: 0,
            data: ptr::null(),
            len: 0,
            from_user: ptr::null(),
            from_device: ptr::null(),
        }
    }
}

/// An event with its bytes, kept while the app reads the [`TetherEvent`] that borrows them.
#[derive(Debug)]
pub(crate) struct Owned {
    kind: u32,
    code: i32,
    id: u64,
    value: u64,
    value2: u64,
    data: Bytes,
    from_user: Option<CString>,
    from_device: Option<CString>,
}

impl Owned {
    fn new(kind: u32) -> Owned {
        Owned {
            kind,
            code: 0,
            id: 0,
            value: 0,
            value2: 0,
            data: Bytes::new(),
            from_user: None,
            from_device: None,
        }
    }

    /// `STOPPED` with `code`, for an end the machine did not report itself.
    pub(crate) fn stopped(code: CloseCode) -> Owned {
        let mut e = Owned::new(TETHER_EVENT_STOPPED);
        e.code = code.to_u16().into();
        e
    }

    /// The app's form of `event`; `None` for what an app does not need (frames meant for
    /// backends, extension frames).
    pub(crate) fn from_event(event: ClientEvent) -> Option<Owned> {
        let mut e;
        match event {
            ClientEvent::Online {
                session_id,
                server_epoch,
            } => {
                e = Owned::new(TETHER_EVENT_ONLINE);
                e.id = session_id;
                e.value = server_epoch;
            }
            ClientEvent::Offline => e = Owned::new(TETHER_EVENT_OFFLINE),
            ClientEvent::IntervalChanged { interval_ms } => {
                e = Owned::new(TETHER_EVENT_INTERVAL);
                e.value = interval_ms.into();
            }
            ClientEvent::Learned {
                verified_ms,
                failed_ms,
            } => {
                e = Owned::new(TETHER_EVENT_LEARNED);
                e.value = verified_ms.into();
                e.value2 = failed_ms.into();
            }
            ClientEvent::Stopped { code } => {
                e = Owned::new(TETHER_EVENT_STOPPED);
                e.code = code.to_u16().into();
            }
            ClientEvent::Received(frame) => return Owned::from_frame(frame),
        }
        Some(e)
    }

    fn from_frame(frame: Frame) -> Option<Owned> {
        let mut e;
        match frame {
            Frame::Push(p) => {
                e = Owned::new(TETHER_EVENT_PUSH);
                e.id = p.id;
                e.data = p.payload;
            }
            Frame::Message(m) => {
                e = Owned::new(TETHER_EVENT_MESSAGE);
                e.id = m.id;
                e.data = m.payload;
                // Ids are checked on decode to be 1..=128 bytes of UTF-8; a NUL inside one
                // would make it unreadable in C, so such an id is handed over empty.
                e.from_user = Some(CString::new(m.from_user).unwrap_or_default());
                e.from_device = Some(CString::new(m.from_device).unwrap_or_default());
            }
            Frame::UpstreamResult(r) => {
                e = Owned::new(TETHER_EVENT_UPSTREAM_RESULT);
                e.id = r.client_id;
                e.code = match r.status {
                    UpstreamStatus::Accepted => 0,
                    UpstreamStatus::Refused(reason) => reason.to_u8().into(),
                };
                e.data = r.reply;
            }
            Frame::TokenNotice(n) => {
                e = Owned::new(TETHER_EVENT_TOKEN_NOTICE);
                e.value = n.expires_in_ms.into();
            }
            Frame::Refreshed => e = Owned::new(TETHER_EVENT_TOKEN_REFRESHED),
            _ => return None,
        }
        Some(e)
    }

    /// The C view, borrowing from `self`.
    pub(crate) fn view(&self) -> TetherEvent {
        TetherEvent {
            kind: self.kind,
            code: self.code,
            id: self.id,
            value: self.value,
            value2: self.value2,
            data: if self.data.is_empty() {
                ptr::null()
            } else {
                self.data.as_ptr()
            },
            len: self.data.len(),
            from_user: self.from_user.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
            from_device: self
                .from_device
                .as_ref()
                .map_or(ptr::null(), |s| s.as_ptr()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::RefuseReason;

    #[test]
    fn refuse_codes_are_the_wire_values() {
        for (code, reason) in [
            (TETHER_REFUSED_TOO_LARGE, RefuseReason::TooLarge),
            (TETHER_REFUSED_RATE_LIMITED, RefuseReason::RateLimited),
            (TETHER_REFUSED_OVERLOADED, RefuseReason::Overloaded),
            (TETHER_REFUSED_NOT_ALLOWED, RefuseReason::NotAllowed),
            (TETHER_REFUSED_SHUTTING_DOWN, RefuseReason::ShuttingDown),
            (TETHER_REFUSED_TIMED_OUT, RefuseReason::TimedOut),
            (TETHER_REFUSED_NO_BACKEND, RefuseReason::NoBackend),
            (TETHER_REFUSED_REJECTED, RefuseReason::Rejected),
        ] {
            assert_eq!(code, i32::from(reason.to_u8()), "{reason:?}");
        }
    }
}
