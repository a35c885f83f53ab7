//! `TetherConnection`: the real-socket driver ([`tether_client::Driver`]) on a thread of its
//! own, calling the app back with each event.
//!
//! The app's calls (acknowledge, send upstream, network and visibility changes, a new token,
//! stop) are queued and the driver's doorbell rung; the driver carries them out on its thread
//! between two turns of its `poll(2)` loop. Reconnects, backoff, `GoAway` windows and learning
//! are the machine's, as in `tether-client`.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use tether_client::{Control, Doorbell, Driver, Input, Options, Report, Role, Status};
use tether_proto::heartbeat::ClientEvent;
use tether_proto::{CloseCode, Frame, PushAck, PROTOCOL_VERSION};

use crate::event::{Owned, TetherEvent};
use crate::machine::upstream_frame;
use crate::{
    bytes_arg, guard_status, network_key_arg, required_str, token_arg, Error, Settings,
    TetherOptions, TETHER_ERR_ARGUMENT, TETHER_ERR_IO, TETHER_ERR_STATE,
};

/// Largest frame body accepted from the server.
const MAX_FRAME: usize = 1 << 20;

/// The server's frame limit assumed before its first `LoginOk` tells it (its default).
const DEFAULT_SERVER_MAX_FRAME: u32 = 65_536;

/// Commands queued at most, and frames waiting for the main connection while it is offline;
/// beyond either a call is refused rather than queued without bound.
const MAX_QUEUED: usize = 4096;

/// The app's callback: `event` and what it points to are valid until it returns. Runs on the
/// connection's thread, one call at a time.
pub type TetherCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const TetherEvent)>;

/// What the app asked, waiting for the driver's thread.
#[derive(Debug)]
enum Command {
    Frame(Frame),
    Input(Input),
    Stop,
}

impl Link {
    /// The frame limit and protocol version a frame is checked against: the last login's, or
    /// before any, the server's default limit and the version asked for.
    fn limits(&self) -> (u32, u8) {
        if self.version == 0 {
            (DEFAULT_SERVER_MAX_FRAME, PROTOCOL_VERSION)
        } else {
            (self.max_frame, self.version)
        }
    }
}

/// State shared between the app's threads and the driver's.
#[derive(Debug, Default)]
struct Shared {
    /// Commands in order.
    queue: Mutex<VecDeque<Command>>,
    /// What the app's threads need to know of the main connection.
    link: Mutex<Link>,
}

/// The main connection as the app's threads see it.
#[derive(Debug, Default)]
struct Link {
    /// The server's frame limit, from the last login (0: none yet).
    max_frame: u32,
    /// The protocol version of the last login (0: none yet).
    version: u8,
    /// Logged in now.
    online: bool,
    /// Frames handed over since the main connection was last logged in: while offline they
    /// wait in the driver, so their number is bounded here.
    waiting: usize,
}

/// A connection owned by its own thread. Opaque to C.
#[derive(Debug)]
pub struct TetherConnection {
    shared: Arc<Shared>,
    bell: Doorbell,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

/// The app's `user_data`, handed to the driver's thread. The app promises in the header that
/// its callback may be called from that thread with it.
struct UserData(*mut c_void);
// SAFETY: the pointer is only handed back to the app's callback; the header makes the app
// responsible for what it points to being usable from the connection's thread.
unsafe impl Send for UserData {}

impl TetherConnection {
    /// Queues `command` and wakes the driver.
    fn queue(&self, command: Command) -> Result<(), Error> {
        if let Command::Frame(_) = command {
            let mut link = self.shared.link.lock().unwrap_or_else(|e| e.into_inner());
            if !link.online {
                if link.waiting >= MAX_QUEUED {
                    return Err(Error::new(
                        TETHER_ERR_STATE,
                        format!("{MAX_QUEUED} frames wait for the connection to come back"),
                    ));
                }
                link.waiting += 1;
            }
        }
        let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_QUEUED && !matches!(command, Command::Stop) {
            return Err(Error::new(
                TETHER_ERR_STATE,
                format!("{MAX_QUEUED} calls are waiting for the connection's thread"),
            ));
        }
        q.push_back(command);
        drop(q);
        self.bell.ring();
        Ok(())
    }

    /// Stops the thread and waits for it.
    fn stop(&mut self) {
        let _ = self.queue(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The connection behind a pointer from C.
///
/// # Safety
/// `c` is null or a pointer from `tether_connection_start` not yet stopped.
unsafe fn connection<'a>(c: *mut TetherConnection) -> Result<&'a TetherConnection, Error> {
    // SAFETY: forwarded from the caller.
    unsafe { c.as_ref() }.ok_or_else(|| Error::new(TETHER_ERR_ARGUMENT, "connection is NULL"))
}

/// Queues the command `f` makes for the connection behind `c`, inside the boundary's guard:
/// the shape of every call the app makes on a running connection.
///
/// # Safety
/// As [`connection`].
unsafe fn queue_on(
    c: *mut TetherConnection,
    f: impl FnOnce(&TetherConnection) -> Result<Command, Error>,
) -> i32 {
    guard_status(|| {
        // SAFETY: forwarded from the caller.
        let c = unsafe { connection(c) }?;
        let command = f(c)?;
        c.queue(command)
    })
}

/// Connects to `server` ("host:port") as `options` say, on a thread of its own, and calls
/// `callback(user_data, event)` there with every event. Returns once the thread runs; the
/// first event (`ONLINE`, or `OFFLINE`/`STOPPED`) follows. Stop it with
/// `tether_connection_stop`.
///
/// # Safety
/// `options` as the header describes; `server` NUL-terminated; `callback` callable from
/// another thread with `user_data` until `tether_connection_stop` returns; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn tether_connection_start(
    options: *const TetherOptions,
    server: *const c_char,
    callback: TetherCallback,
    user_data: *mut c_void,
    out: *mut *mut TetherConnection,
) -> i32 {
    guard_status(|| {
        if out.is_null() {
            return Err(Error::new(TETHER_ERR_ARGUMENT, "out is NULL"));
        }
        let callback =
            callback.ok_or_else(|| Error::new(TETHER_ERR_ARGUMENT, "callback is NULL"))?;
        // SAFETY: per this function's contract.
        let settings = unsafe { Settings::read(options) }?;
        let server = unsafe { required_str(server, "server") }?;
        let addr = resolve(&server)?;
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let user = UserData(user_data);
        let thread_shared = shared.clone();
        let thread = thread::Builder::new()
            .name("tether-connection".into())
            .spawn(move || run(settings, addr, thread_shared, callback, user, ready_tx))
            .map_err(|e| Error::new(TETHER_ERR_IO, format!("starting its thread: {e}")))?;
        let thread_id = thread.thread().id();
        let bell = match ready_rx.recv() {
            Ok(Ok(bell)) => bell,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::new(TETHER_ERR_IO, "its thread ended at start"));
            }
        };
        let c = Box::new(TetherConnection {
            shared,
            bell,
            thread: Some(thread),
            thread_id,
        });
        // SAFETY: `out` is not null and writable, per the contract.
        unsafe { *out = Box::into_raw(c) };
        Ok(())
    })
}

/// The first address `server` names.
fn resolve(server: &str) -> Result<SocketAddr, Error> {
    server
        .to_socket_addrs()
        .map_err(|e| Error::new(TETHER_ERR_ARGUMENT, format!("server {server:?}: {e}")))?
        .next()
        .ok_or_else(|| {
            Error::new(
                TETHER_ERR_ARGUMENT,
                format!("server {server:?}: no address"),
            )
        })
}

/// The connection's thread.
fn run(
    settings: Settings,
    addr: SocketAddr,
    shared: Arc<Shared>,
    callback: unsafe extern "C" fn(*mut c_void, *const TetherEvent),
    user: UserData,
    ready: mpsc::Sender<Result<Doorbell, Error>>,
) {
    let role = if settings.foreground {
        Role::Foreground
    } else {
        Role::Learner
    };
    let opts = Options {
        server: addr,
        bind: None,
        credentials: settings.credentials,
        network_key: settings.network_key,
        heartbeat: settings.heartbeat,
        seed: settings.seed,
        max_frame: MAX_FRAME,
        tls: None,
    };
    let mut driver = match Driver::with_role(opts, role) {
        Ok(d) => d.with_memory(settings.memory),
        Err(e) => {
            let _ = ready.send(Err(Error::new(crate::TETHER_ERR_CONFIG, e.to_string())));
            return;
        }
    };
    match driver.doorbell() {
        Ok(bell) => {
            if ready.send(Ok(bell)).is_err() {
                return;
            }
        }
        Err(e) => {
            let _ = ready.send(Err(Error::new(TETHER_ERR_IO, e.to_string())));
            return;
        }
    }
    let tell = |owned: &Owned| {
        let view = owned.view();
        // SAFETY: the app's callback, called as the header says: on this thread, with its
        // `user_data`, and an event valid until it returns.
        unsafe { callback(user.0, &view) };
    };
    let observe = |control: &mut Control, status: &Status, report: &Report| {
        match report {
            Report::Event(event) => {
                let mut link = shared.link.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    // Logged in: the driver sends what waited right after this report.
                    ClientEvent::Online { .. } => {
                        *link = Link {
                            max_frame: status.max_frame,
                            version: status.version,
                            online: true,
                            waiting: 0,
                        };
                    }
                    ClientEvent::Offline | ClientEvent::Stopped { .. } => link.online = false,
                    _ => {}
                }
                drop(link);
                if let Some(owned) = Owned::from_event(event.clone()) {
                    tell(&owned);
                }
            }
            Report::Wake => {
                let commands: Vec<Command> = shared
                    .queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drain(..)
                    .collect();
                for command in commands {
                    match command {
                        Command::Frame(f) => control.send(f),
                        Command::Input(i) => control.input(i),
                        Command::Stop => return ControlFlow::Break(()),
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    };
    // Ten years: the loop ends when the app stops it.
    let until = Instant::now() + Duration::from_secs(10 * 365 * 86_400);
    if driver.run_app(until, observe).is_err() {
        // `poll(2)` itself failed: nothing more can happen on this thread.
        tell(&Owned::stopped(CloseCode::InternalError));
    }
}

/// Stops the connection: closes its sockets, ends its thread (waiting for it) and frees it.
/// NULL is ignored. From inside the callback it returns `TETHER_ERR_STATE` and does nothing.
///
/// # Safety
/// `c` is null or from `tether_connection_start`, not yet stopped.
#[no_mangle]
pub unsafe extern "C" fn tether_connection_stop(c: *mut TetherConnection) -> i32 {
    guard_status(|| {
        if c.is_null() {
            return Ok(());
        }
        // SAFETY: per this function's contract.
        let conn = unsafe { connection(c) }?;
        if thread::current().id() == conn.thread_id {
            return Err(Error::new(
                TETHER_ERR_STATE,
                "tether_connection_stop from the connection's own callback",
            ));
        }
        // SAFETY: from `Box::into_raw` in `tether_connection_start`, freed once.
        let mut conn = unsafe { Box::from_raw(c) };
        conn.stop();
        Ok(())
    })
}

/// Acknowledges push (or message) `id`. Sent when the main connection is logged in.
///
/// # Safety
/// `c` from `tether_connection_start`.
#[no_mangle]
pub unsafe extern "C" fn tether_connection_ack(c: *mut TetherConnection, id: u64) -> i32 {
    // SAFETY: `c` and every pointer argument as this function's contract says.
    unsafe { queue_on(c, |_| Ok(Command::Frame(Frame::PushAck(PushAck { id })))) }
}

/// Sends `len` bytes to the app's backend, answered by exactly one
/// `TETHER_EVENT_UPSTREAM_RESULT` with `client_id`. Queued while offline and sent once the
/// main connection is logged in again; at most 4,096 frames (upstream messages and acks) wait
/// so, beyond that the call returns `TETHER_ERR_STATE`.
///
/// # Safety
/// `c` from `tether_connection_start`; `data` `len` readable bytes (or NULL with 0).
#[no_mangle]
pub unsafe extern "C" fn tether_connection_upstream(
    c: *mut TetherConnection,
    client_id: u64,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: `c` and every pointer argument as this function's contract says.
    unsafe {
        queue_on(c, |c| {
            let payload = bytes_arg(data, len, "data")?;
            // Checked against the last login's version and frame limit; before any login, against
            // the protocol's default limit.
            let (max, version) = c
                .shared
                .link
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .limits();
            let frame = upstream_frame(version, (max > 0).then_some(max), client_id, payload)?;
            Ok(Command::Frame(frame))
        })
    }
}

/// The network is usable, with key `key` (NULL or "": none); a new key switches to what was
/// learned for it and reconnects.
///
/// # Safety
/// `c` from `tether_connection_start`; `key` null or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tether_connection_network_up(
    c: *mut TetherConnection,
    key: *const c_char,
) -> i32 {
    // SAFETY: `c` and every pointer argument as this function's contract says.
    unsafe {
        queue_on(c, |_| {
            let key = network_key_arg(key, "key")?;
            Ok(Command::Input(Input::NetworkUp(key)))
        })
    }
}

/// The network is not usable: everything closes until `tether_connection_network_up`.
///
/// # Safety
/// `c` from `tether_connection_start`.
#[no_mangle]
pub unsafe extern "C" fn tether_connection_network_down(c: *mut TetherConnection) -> i32 {
    // SAFETY: `c` and every pointer argument as this function's contract says.
    unsafe { queue_on(c, |_| Ok(Command::Input(Input::NetworkDown))) }
}

/// The app came to the foreground (`true`) or went to the background (`false`).
///
/// # Safety
/// `c` from `tether_connection_start`.
#[no_mangle]
pub unsafe extern "C" fn tether_connection_set_foreground(
    c: *mut TetherConnection,
    foreground: bool,
) -> i32 {
    // SAFETY: `c` and every pointer argument as this function's contract says.
    unsafe { queue_on(c, |_| Ok(Command::Input(Input::Foreground(foreground)))) }
}

/// A new token (after `TETHER_EVENT_TOKEN_NOTICE`, or before a restart): later logins use it
/// and a logged-in connection hands it to the server at once.
///
/// # Safety
/// `c` from `tether_connection_start`; `token` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tether_connection_set_token(
    c: *mut TetherConnection,
    token: *const c_char,
) -> i32 {
    // SAFETY: `c` and every pointer argument as this function's contract says.
    unsafe {
        queue_on(c, |_| {
            let token = token_arg(token, "token")?;
            Ok(Command::Input(Input::Token(token)))
        })
    }
}

/// Starts again after `TETHER_EVENT_STOPPED`; does nothing while the connection runs.
///
/// # Safety
/// `c` from `tether_connection_start`.
#[no_mangle]
pub unsafe extern "C" fn tether_connection_restart(c: *mut TetherConnection) -> i32 {
    // SAFETY: `c` and every pointer argument as this function's contract says.
    unsafe { queue_on(c, |_| Ok(Command::Input(Input::Restart))) }
}
