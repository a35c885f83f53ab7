//! `TetherMachine`: the heartbeat machine alone, for apps that own their sockets, their clock
//! and their alarms.
//!
//! The app reports what happened (`tether_machine_connected`, `_received`, `_disconnected`,
//! `_network_up`, `_set_foreground`, the time in every call) and carries out what the machine
//! asks: after every call it takes actions (`tether_machine_poll_action`: connect, write these
//! bytes, close) and events (`tether_machine_poll_event`) until there are none, then sets an
//! alarm for `tether_machine_next_timeout` and calls `tether_machine_handle_timeout` then.
//! Time is the app's monotonic clock in milliseconds (any origin, never going back).
//!
//! The machine asks for protocol version 2; a server that refuses it (2007) is asked again
//! with version 1, as `tether-client` does.

use std::collections::HashMap;
use std::ffi::c_char;
use std::ptr;

use bytes::{Bytes, BytesMut};
use tether_proto::heartbeat::{Action, Client, ClientEvent, ConnId, Credentials};
use tether_proto::{
    codec, CloseCode, Frame, Millis, PushAck, Refresh, Upstream, PROTOCOL_V1, PROTOCOL_VERSION,
};

use crate::event::{Owned, TetherEvent};
use crate::{
    bytes_arg, guard, guard_status, network_key_arg, token_arg, Error, Settings, TetherOptions,
    TETHER_ERR_ARGUMENT, TETHER_ERR_BUFFER, TETHER_ERR_INTERNAL, TETHER_ERR_PROTOCOL,
    TETHER_ERR_STATE, TETHER_ERR_TOO_LARGE,
};

/// Open a TCP connection to the server; report it with
/// `tether_machine_connected` or `tether_machine_disconnected` under `conn`. `probe`: a
/// short-lived probe connection rather than the main one.
pub const TETHER_ACTION_CONNECT: u32 = 1;
/// Write `data` (`len` bytes) on `conn`, in order after what was written before.
pub const TETHER_ACTION_SEND: u32 = 2;
/// Close `conn`; the machine has forgotten it.
pub const TETHER_ACTION_CLOSE: u32 = 3;

/// Largest frame body accepted from the server before its `LoginOk` says its own limit.
const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// One thing the machine asks the app to do. `data` stays valid until the next
/// `tether_machine_poll_action` on the same machine.
#[repr(C)]
#[derive(Debug)]
pub struct TetherAction {
    /// A `TETHER_ACTION_*`.
    pub kind: u32,
    /// The connection it is about; ids are never reused.
    pub conn: u32,
    /// `CONNECT`: a probe connection.
    pub probe: bool,
    /// `SEND`: the bytes to write.
    pub data: *const u8,
    /// `SEND`: how many.
    pub len: usize,
}

/// The heartbeat machine with the wire codec around it. Opaque to C.
#[derive(Debug)]
pub struct TetherMachine {
    /// The sans-IO machine.
    client: Client,
    /// Who logs in; kept to log in again after a version fallback.
    credentials: Credentials,
    /// The protocol version logins ask for.
    version: u8,
    /// Bytes received per open connection, not yet decoded.
    received: HashMap<ConnId, BytesMut>,
    /// The bytes of the last `SEND` action handed out.
    action_bytes: BytesMut,
    /// The last event handed out, owning what its view points to.
    event: Option<Owned>,
    /// The latest time the app reported.
    now: Millis,
}

impl TetherMachine {
    fn new(settings: Settings) -> TetherMachine {
        let mut client = Client::new(
            settings.heartbeat,
            settings.credentials.clone(),
            settings.memory,
            settings.seed,
        );
        if settings.foreground {
            client.set_foreground(0, true);
        }
        TetherMachine {
            client,
            credentials: settings.credentials,
            version: PROTOCOL_VERSION,
            received: HashMap::new(),
            action_bytes: BytesMut::new(),
            event: None,
            now: 0,
        }
    }

    /// Moves the clock; a time that goes back is taken as the latest one.
    fn at(&mut self, now: Millis) -> Millis {
        self.now = self.now.max(now);
        self.now
    }

    /// The next action, as C sees it.
    fn next_action(&mut self) -> Result<Option<TetherAction>, Error> {
        let Some(action) = self.client.poll_action() else {
            return Ok(None);
        };
        let mut out = TetherAction {
            kind: 0,
            conn: 0,
            probe: false,
            data: ptr::null(),
            len: 0,
        };
        match action {
            Action::Connect { conn, probe } => {
                self.received.insert(conn, BytesMut::new());
                out.kind = TETHER_ACTION_CONNECT;
                out.conn = conn.0;
                out.probe = probe;
            }
            Action::Send { conn, mut frame } => {
                if let Frame::Login(login) = &mut frame {
                    login.version = self.version;
                }
                self.action_bytes.clear();
                codec::encode(&frame, &mut self.action_bytes).map_err(|e| {
                    Error::new(TETHER_ERR_INTERNAL, format!("encoding a frame: {e}"))
                })?;
                out.kind = TETHER_ACTION_SEND;
                out.conn = conn.0;
                out.data = self.action_bytes.as_ptr();
                out.len = self.action_bytes.len();
            }
            Action::Close { conn } => {
                self.received.remove(&conn);
                out.kind = TETHER_ACTION_CLOSE;
                out.conn = conn.0;
            }
        }
        Ok(Some(out))
    }

    /// The next event for the app, handling a refused version on the way.
    fn next_event(&mut self) -> Option<Owned> {
        while let Some(event) = self.client.poll_event() {
            if let ClientEvent::Stopped {
                code: CloseCode::UnsupportedVersion,
            } = event
            {
                if self.version > PROTOCOL_V1 {
                    // An older server: log in again, once, with version 1.
                    self.version = PROTOCOL_V1;
                    self.client.restart(self.now, self.credentials.clone());
                    continue;
                }
            }
            if let Some(e) = Owned::from_event(event) {
                return Some(e);
            }
        }
        None
    }

    /// Bytes arrived on `conn`: decodes every whole frame and hands it to the machine.
    fn receive(&mut self, now: Millis, conn: ConnId, bytes: &[u8]) -> Result<(), Error> {
        let max = self
            .client
            .max_frame()
            .map_or(DEFAULT_MAX_FRAME, |m| m as usize);
        let Some(buf) = self.received.get_mut(&conn) else {
            return Ok(()); // a connection the machine already closed: late bytes are dropped
        };
        buf.extend_from_slice(bytes);
        loop {
            let Some(buf) = self.received.get_mut(&conn) else {
                return Ok(()); // the machine closed it after an earlier frame
            };
            match codec::decode_version(buf, max, self.version) {
                Ok(Some(frame)) => self.client.handle_frame(now, conn, frame),
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.received.remove(&conn);
                    self.client.disconnected(now, conn);
                    return Err(Error::new(
                        TETHER_ERR_PROTOCOL,
                        format!("connection {}: the server sent bytes that do not decode: {e}; close it", conn.0),
                    ));
                }
            }
        }
    }

    /// Sends `frame` on the main connection, which must be logged in.
    fn send(&mut self, now: Millis, frame: Frame) -> Result<(), Error> {
        if !self.client.send(now, frame) {
            return Err(Error::new(
                TETHER_ERR_STATE,
                "the main connection is not logged in; send again after TETHER_EVENT_ONLINE",
            ));
        }
        Ok(())
    }
}

/// The machine behind a pointer from C.
///
/// # Safety
/// `m` is null or a pointer from `tether_machine_new` not yet freed, used by one thread.
unsafe fn machine<'a>(m: *mut TetherMachine) -> Result<&'a mut TetherMachine, Error> {
    // SAFETY: forwarded from the caller.
    unsafe { m.as_mut() }.ok_or_else(|| Error::new(TETHER_ERR_ARGUMENT, "machine is NULL"))
}

/// Runs `f` on the machine behind `m` once the clock moved to `now_ms`, inside the boundary's
/// guard: the shape of every call that reports something to the machine.
///
/// # Safety
/// As [`machine`].
unsafe fn at_time(
    m: *mut TetherMachine,
    now_ms: u64,
    f: impl FnOnce(&mut TetherMachine, Millis) -> Result<(), Error>,
) -> i32 {
    guard_status(|| {
        // SAFETY: forwarded from the caller.
        let m = unsafe { machine(m) }?;
        let now = m.at(now_ms);
        f(m, now)
    })
}

/// Makes a machine from `options` into `*out`. Nothing connects until
/// `tether_machine_network_up`.
///
/// # Safety
/// `options` points to a `TetherOptions` as the header describes; `out` to writable storage
/// for a pointer.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_new(
    options: *const TetherOptions,
    out: *mut *mut TetherMachine,
) -> i32 {
    guard_status(|| {
        if out.is_null() {
            return Err(Error::new(TETHER_ERR_ARGUMENT, "out is NULL"));
        }
        // SAFETY: per this function's contract.
        let settings = unsafe { Settings::read(options) }?;
        let m = Box::new(TetherMachine::new(settings));
        // SAFETY: `out` is not null and writable, per the contract.
        unsafe { *out = Box::into_raw(m) };
        Ok(())
    })
}

/// Frees a machine. NULL is ignored. Pointers it handed out die with it.
///
/// # Safety
/// `m` is null or a pointer from `tether_machine_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_free(m: *mut TetherMachine) {
    if !m.is_null() {
        // SAFETY: from `Box::into_raw` in `tether_machine_new`, freed once.
        let _ = guard(|| {
            drop(unsafe { Box::from_raw(m) });
            Ok(0)
        });
    }
}

/// The network is usable, with key `key` (NULL or "": none). A new key switches to what
/// was learned for that network and reconnects after a short random delay.
///
/// # Safety
/// `m` from `tether_machine_new`; `key` null or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_network_up(
    m: *mut TetherMachine,
    now_ms: u64,
    key: *const c_char,
) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            let key = network_key_arg(key, "key")?;
            m.client.network_up(now, &key);
            Ok(())
        })
    }
}

/// The network is not usable: every connection closes (see the actions), nothing reconnects
/// until `tether_machine_network_up`.
///
/// # Safety
/// `m` from `tether_machine_new`.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_network_down(m: *mut TetherMachine, now_ms: u64) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            m.client.network_down(now);
            Ok(())
        })
    }
}

/// The app came to the foreground (`true`: a fixed short interval, no probes) or went to
/// the background (`false`: the interval learned for this network).
///
/// # Safety
/// `m` from `tether_machine_new`.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_set_foreground(
    m: *mut TetherMachine,
    now_ms: u64,
    foreground: bool,
) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            m.client.set_foreground(now, foreground);
            Ok(())
        })
    }
}

/// A new token: every later login uses it, and a logged-in main connection hands it to the
/// server at once (`Refresh`; answered by `TETHER_EVENT_TOKEN_REFRESHED`).
///
/// # Safety
/// `m` from `tether_machine_new`; `token` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_set_token(
    m: *mut TetherMachine,
    now_ms: u64,
    token: *const c_char,
) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            let token = token_arg(token, "token")?;
            m.client.set_token(token.clone());
            m.credentials.token = token.clone();
            if m.client.is_online() && m.version > PROTOCOL_V1 {
                m.send(now, Frame::Refresh(Refresh { token }))?;
            }
            Ok(())
        })
    }
}

/// Starts again after `TETHER_EVENT_STOPPED` (with a new token first, if that was why).
/// Does nothing while the machine runs.
///
/// # Safety
/// `m` from `tether_machine_new`.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_restart(m: *mut TetherMachine, now_ms: u64) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            m.client.restart(now, m.credentials.clone());
            Ok(())
        })
    }
}

/// The transport `conn` asked for by a `CONNECT` action is up.
///
/// # Safety
/// `m` from `tether_machine_new`.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_connected(
    m: *mut TetherMachine,
    now_ms: u64,
    conn: u32,
) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            m.client.connected(now, ConnId(conn));
            Ok(())
        })
    }
}

/// The transport `conn` failed to connect, broke, or the server closed it.
///
/// # Safety
/// `m` from `tether_machine_new`.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_disconnected(
    m: *mut TetherMachine,
    now_ms: u64,
    conn: u32,
) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            m.received.remove(&ConnId(conn));
            m.client.disconnected(now, ConnId(conn));
            Ok(())
        })
    }
}

/// `len` bytes arrived on `conn` (any split: the machine reassembles frames).
/// `TETHER_ERR_PROTOCOL`: they do not decode; the machine forgot the connection, close it.
///
/// # Safety
/// `m` from `tether_machine_new`; `data` points to `len` readable bytes (or is NULL with 0).
#[no_mangle]
pub unsafe extern "C" fn tether_machine_received(
    m: *mut TetherMachine,
    now_ms: u64,
    conn: u32,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            let bytes = bytes_arg(data, len, "data")?;
            m.receive(now, ConnId(conn), bytes)
        })
    }
}

/// The moment asked for by `tether_machine_next_timeout` came (or passed).
///
/// # Safety
/// `m` from `tether_machine_new`.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_handle_timeout(m: *mut TetherMachine, now_ms: u64) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            m.client.handle_timeout(now);
            Ok(())
        })
    }
}

/// When to call `tether_machine_handle_timeout` next: 1 with the moment (the app's clock, ms)
/// in `*at_ms`, or 0 when no timer is needed until the app reports something; or an error.
///
/// # Safety
/// `m` from `tether_machine_new`; `at_ms` writable.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_next_timeout(
    m: *mut TetherMachine,
    at_ms: *mut u64,
) -> i32 {
    guard_status_count(|| {
        // SAFETY: per this function's contract.
        let m = unsafe { machine(m) }?;
        let at = unsafe { at_ms.as_mut() }
            .ok_or_else(|| Error::new(TETHER_ERR_ARGUMENT, "at_ms is NULL"))?;
        match m.client.poll_timeout() {
            Some(t) => {
                *at = t;
                Ok(1)
            }
            None => Ok(0),
        }
    })
}

/// Takes the next action into `*out`: 1 when there was one, 0 when none is left, or an
/// error. Carry out every action, in order, before the next call into the machine that
/// reports something.
///
/// # Safety
/// `m` from `tether_machine_new`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_poll_action(
    m: *mut TetherMachine,
    out: *mut TetherAction,
) -> i32 {
    guard_status_count(|| {
        // SAFETY: per this function's contract.
        let m = unsafe { machine(m) }?;
        let out = unsafe { out.as_mut() }
            .ok_or_else(|| Error::new(TETHER_ERR_ARGUMENT, "out is NULL"))?;
        match m.next_action()? {
            Some(a) => {
                *out = a;
                Ok(1)
            }
            None => Ok(0),
        }
    })
}

/// Takes the next event into `*out`: 1 when there was one, 0 when none is left, or an
/// error. Its pointers stay valid until the next call of this function on `m`.
///
/// # Safety
/// `m` from `tether_machine_new`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_poll_event(
    m: *mut TetherMachine,
    out: *mut TetherEvent,
) -> i32 {
    guard_status_count(|| {
        // SAFETY: per this function's contract.
        let m = unsafe { machine(m) }?;
        let out = unsafe { out.as_mut() }
            .ok_or_else(|| Error::new(TETHER_ERR_ARGUMENT, "out is NULL"))?;
        m.event = m.next_event();
        match &m.event {
            Some(e) => {
                *out = e.view();
                Ok(1)
            }
            None => {
                *out = TetherEvent::empty();
                Ok(0)
            }
        }
    })
}

/// Acknowledges push (or message) `id` on the main connection.
///
/// # Safety
/// `m` from `tether_machine_new`.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_ack(m: *mut TetherMachine, now_ms: u64, id: u64) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            m.send(now, Frame::PushAck(PushAck { id }))
        })
    }
}

/// Sends `len` bytes to the app's backend (protocol version 2), answered by exactly one
/// `TETHER_EVENT_UPSTREAM_RESULT` with the same `client_id`. Keep `client_id` when resending
/// after a reconnect so the backend can recognise the message.
///
/// # Safety
/// `m` from `tether_machine_new`; `data` points to `len` readable bytes (or is NULL with 0).
#[no_mangle]
pub unsafe extern "C" fn tether_machine_upstream(
    m: *mut TetherMachine,
    now_ms: u64,
    client_id: u64,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: `m` and every pointer argument as this function's contract says.
    unsafe {
        at_time(m, now_ms, |m, now| {
            let payload = bytes_arg(data, len, "data")?;
            let frame = upstream_frame(m.version, m.client.max_frame(), client_id, payload)?;
            m.send(now, frame)
        })
    }
}

/// An `Upstream` frame, checked against the version and the server's frame limit.
pub(crate) fn upstream_frame(
    version: u8,
    max_frame: Option<u32>,
    client_id: u64,
    payload: &[u8],
) -> Result<Frame, Error> {
    if version < tether_proto::PROTOCOL_V2 {
        return Err(Error::new(
            TETHER_ERR_STATE,
            "the server speaks protocol version 1 only: no upstream messages",
        ));
    }
    let frame = Frame::Upstream(Upstream {
        client_id,
        flags: 0,
        payload: Bytes::copy_from_slice(payload),
    });
    if let Some(max) = max_frame {
        if codec::encoded_len(&frame) > max as usize {
            return Err(Error::new(
                TETHER_ERR_TOO_LARGE,
                format!(
                    "{} bytes exceed the server's frame limit of {max}",
                    payload.len()
                ),
            ));
        }
    }
    Ok(frame)
}

/// What the machine learned about networks, as JSON, into `buf` (NUL-terminated): persist it
/// and hand it back in `TetherOptions.memory_json` next time. Returns the length without the
/// NUL; with `buf` NULL or `cap` too small nothing is written and the return is
/// `TETHER_ERR_BUFFER` (`tether_machine_memory_len` says how large `buf` must be).
///
/// # Safety
/// `m` from `tether_machine_new`; `buf` null or `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_memory(
    m: *mut TetherMachine,
    buf: *mut c_char,
    cap: usize,
) -> i64 {
    guard(|| {
        // SAFETY: per this function's contract.
        let m = unsafe { machine(m) }?;
        let json = memory_json(m)?;
        if buf.is_null() || cap < json.len() + 1 {
            return Err(Error::new(
                TETHER_ERR_BUFFER,
                format!("the memory needs {} bytes with its NUL", json.len() + 1),
            ));
        }
        // SAFETY: `buf` holds `cap` ≥ len + 1 writable bytes, per the contract.
        unsafe {
            ptr::copy_nonoverlapping(json.as_ptr(), buf.cast::<u8>(), json.len());
            *buf.add(json.len()) = 0;
        }
        Ok(json.len() as i64)
    })
}

/// How many bytes `tether_machine_memory` needs, with the NUL.
///
/// # Safety
/// `m` from `tether_machine_new`.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_memory_len(m: *mut TetherMachine) -> i64 {
    guard(|| {
        // SAFETY: per this function's contract.
        let m = unsafe { machine(m) }?;
        Ok(memory_json(m)?.len() as i64 + 1)
    })
}

fn memory_json(m: &TetherMachine) -> Result<String, Error> {
    serde_json::to_string(m.client.memory())
        .map_err(|e| Error::new(TETHER_ERR_INTERNAL, format!("memory to JSON: {e}")))
}

/// The main connection's heartbeat interval now, ms.
///
/// # Safety
/// `m` from `tether_machine_new`.
#[no_mangle]
pub unsafe extern "C" fn tether_machine_interval_ms(m: *mut TetherMachine) -> i64 {
    guard(|| {
        // SAFETY: per this function's contract.
        let m = unsafe { machine(m) }?;
        Ok(i64::from(m.client.interval_ms()))
    })
}

/// [`guard`] for a call that returns a count (0 or 1) or an error.
fn guard_status_count(f: impl FnOnce() -> Result<i64, Error>) -> i32 {
    // The values are 0, 1 or a small negative code.
    guard(f) as i32
}
