//! `tether-sdk`: the tether client for apps in any language, through a C ABI.
//!
//! The header is `sdk/include/tether.h`, generated from this crate by cbindgen and checked
//! against it by a test. Two levels:
//!
//! - [`machine`]: `TetherMachine`, the sans-IO heartbeat machine of
//!   [`tether_proto::heartbeat::Client`] with the wire codec around it. The app owns its
//!   sockets, its clock and its alarms (Android's `AlarmManager`, iOS's background tasks):
//!   it reports connects, received bytes, closes, network changes and the time, and takes out
//!   bytes to write, the next moment to call back, and events.
//! - [`connection`]: `TetherConnection`, the real-socket driver of [`tether_client::Driver`] on
//!   a thread of its own, which calls the app back with each event.
//!
//! # Rules at the boundary
//!
//! - Nothing unwinds across it: each exported function runs inside [`guard`], which turns a
//!   panic into `TETHER_ERR_INTERNAL`.
//! - Pointers from the app are read during the call only; strings are UTF-8 and
//!   NUL-terminated, byte buffers come with their length, and a null pointer where one is
//!   required is `TETHER_ERR_ARGUMENT`, never a crash.
//! - What the library hands out ([`TetherEvent`], [`TetherAction`]) borrows from the object
//!   that produced it, until the next call that takes an event or an action from it.
//! - Every error also leaves a sentence in [`tether_last_error`], per thread.

pub mod connection;
pub mod event;
pub mod machine;

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tether_proto::heartbeat::{Credentials, HeartbeatConfig, NetMemory};
use tether_proto::limits::{DEVICE_MAX, NETWORK_KEY_MAX, TOKEN_MAX, USER_MAX};

pub use event::TetherEvent;
pub use machine::TetherAction;

/// Success.
pub const TETHER_OK: i32 = 0;
/// A required pointer was null, a string was not UTF-8, or a value is out of its range.
pub const TETHER_ERR_ARGUMENT: i32 = -1;
/// The heartbeat configuration or the remembered networks (JSON) could not be read.
pub const TETHER_ERR_CONFIG: i32 = -2;
/// Not possible in the current state: not logged in, already stopped, or called from the
/// connection's own callback where that is not allowed.
pub const TETHER_ERR_STATE: i32 = -3;
/// The payload is larger than the server accepts (its `max_frame`, told at login).
pub const TETHER_ERR_TOO_LARGE: i32 = -4;
/// The server sent bytes that are not the protocol: the connection is unusable; the machine
/// has forgotten it and the app closes its socket.
pub const TETHER_ERR_PROTOCOL: i32 = -5;
/// The operating system refused something (a thread, a socket, an address lookup).
pub const TETHER_ERR_IO: i32 = -6;
/// The buffer given is too small (`tether_machine_memory_len` says how large it must be).
pub const TETHER_ERR_BUFFER: i32 = -7;
/// A fault inside the library, caught at the boundary. A bug: please report it.
pub const TETHER_ERR_INTERNAL: i32 = -8;

/// The size of [`TetherOptions`] this library knows; `TetherOptions::size` must be at least
/// this. Fields are only ever appended, so a newer library reads an older app's options.
pub const TETHER_OPTIONS_SIZE_V1: usize = std::mem::size_of::<TetherOptions>();

/// Who logs in and how the machine behaves. Strings are UTF-8, NUL-terminated, read during
/// the call only.
#[repr(C)]
#[derive(Debug)]
pub struct TetherOptions {
    /// `sizeof(TetherOptions)` as the app was compiled with.
    pub size: usize,
    /// User id (1..=128 bytes). Required.
    pub user: *const c_char,
    /// Device id (1..=64 bytes). Required.
    pub device: *const c_char,
    /// The token from the app's login service. Required.
    pub token: *const c_char,
    /// `TetherConnection`: the network the device is on at start (an SSID hash, a carrier id,
    /// at most 64 bytes; NULL or "": none, so nothing learned is remembered). A
    /// `TetherMachine` takes it from `tether_machine_network_up` instead.
    pub network_key: *const c_char,
    /// Heartbeat parameters as a JSON object of `HeartbeatConfig` fields (docs/heartbeat.md,
    /// "Parameters"); fields left out keep their defaults. NULL: the defaults, tuned for
    /// phones on carrier networks.
    pub heartbeat_json: *const c_char,
    /// What was learned about networks before, as returned by `tether_machine_memory` (JSON).
    /// NULL: nothing remembered.
    pub memory_json: *const c_char,
    /// When not 0: every interval is scaled for a NAT that forgets idle flows after roughly
    /// this many milliseconds (tests and desks; `heartbeat_json` then overrides single fields).
    pub nat_hint_ms: u32,
    /// Starts in the foreground: a fixed short interval and no probe connections.
    pub foreground: bool,
    /// Seeds the machine's random choices (jitter), so a run can be repeated. 0 is a seed too.
    pub seed: u64,
}

thread_local! {
    /// The last error of this thread, as a sentence.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Why the last call on this thread failed, as a sentence (empty when none failed yet). The
/// pointer stays valid until the next call on this thread that fails.
#[no_mangle]
pub extern "C" fn tether_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library's version, "MAJOR.MINOR.PATCH". A static string.
#[no_mangle]
pub extern "C" fn tether_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// An error code with its sentence.
#[derive(Debug)]
pub(crate) struct Error {
    /// One of the `TETHER_ERR_*` codes.
    code: i32,
    /// Why.
    message: String,
}

impl Error {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }
}

/// Records `message` as this thread's last error.
fn set_last_error(message: &str) {
    // A NUL inside a message would cut it short; none of ours holds one, but be exact.
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// Runs `f` at the boundary: an error becomes its code (and the thread's last error), a panic
/// becomes `TETHER_ERR_INTERNAL`. `f`'s own non-negative value is returned as it is.
pub(crate) fn guard(f: impl FnOnce() -> Result<i64, Error>) -> i64 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            i64::from(e.code)
        }
        Err(_) => {
            set_last_error("internal fault in the tether library (caught at the boundary)");
            i64::from(TETHER_ERR_INTERNAL)
        }
    }
}

/// [`guard`] for functions that return an `int` status.
pub(crate) fn guard_status(f: impl FnOnce() -> Result<(), Error>) -> i32 {
    // Statuses are 0 or a small negative code, so the narrowing is exact.
    guard(|| f().map(|()| 0)) as i32
}

/// A required string argument.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string alive for the call.
pub(crate) unsafe fn required_str(p: *const c_char, what: &str) -> Result<String, Error> {
    // SAFETY: forwarded from the caller.
    unsafe { optional_str(p, what) }?
        .ok_or_else(|| Error::new(TETHER_ERR_ARGUMENT, format!("{what} is required (NULL)")))
}

/// An optional string argument (`None` for null).
///
/// # Safety
/// `p` is null or points to a NUL-terminated string alive for the call.
unsafe fn optional_str(p: *const c_char, what: &str) -> Result<Option<String>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: not null, and the caller promises a NUL-terminated string alive for the call.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(|s| Some(s.to_owned()))
        .map_err(|_| Error::new(TETHER_ERR_ARGUMENT, format!("{what} is not UTF-8")))
}

/// A token argument: required, 1..=512 bytes.
///
/// # Safety
/// As [`optional_str`].
pub(crate) unsafe fn token_arg(p: *const c_char, what: &str) -> Result<String, Error> {
    // SAFETY: forwarded from the caller.
    let token = unsafe { required_str(p, what) }?;
    check_len(&token, what, 1, TOKEN_MAX)?;
    Ok(token)
}

/// A network key argument: NULL or at most 64 bytes ("" and NULL: none).
///
/// # Safety
/// As [`optional_str`].
pub(crate) unsafe fn network_key_arg(p: *const c_char, what: &str) -> Result<String, Error> {
    // SAFETY: forwarded from the caller.
    let key = unsafe { optional_str(p, what) }?.unwrap_or_default();
    check_len(&key, what, 0, NETWORK_KEY_MAX)?;
    Ok(key)
}

/// A byte buffer argument (`len` 0 may come with a null pointer).
///
/// # Safety
/// `p` is null or points to `len` readable bytes alive for the call.
pub(crate) unsafe fn bytes_arg<'a>(
    p: *const u8,
    len: usize,
    what: &str,
) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::new(
            TETHER_ERR_ARGUMENT,
            format!("{what} is NULL with length {len}"),
        ));
    }
    // SAFETY: not null, and the caller promises `len` readable bytes alive for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The options, read and checked.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) credentials: Credentials,
    pub(crate) network_key: String,
    pub(crate) heartbeat: HeartbeatConfig,
    pub(crate) memory: NetMemory,
    pub(crate) foreground: bool,
    pub(crate) seed: u64,
}

impl Settings {
    /// Reads `opts`.
    ///
    /// # Safety
    /// `opts` is null or points to a `TetherOptions` whose first `size` bytes are readable
    /// and whose string fields are null or NUL-terminated, all alive for the call.
    pub(crate) unsafe fn read(opts: *const TetherOptions) -> Result<Settings, Error> {
        if opts.is_null() {
            return Err(Error::new(
                TETHER_ERR_ARGUMENT,
                "options are required (NULL)",
            ));
        }
        // SAFETY: not null; `size` is the first field, readable in every version.
        let size = unsafe { (*opts).size };
        if size < TETHER_OPTIONS_SIZE_V1 {
            return Err(Error::new(
                TETHER_ERR_ARGUMENT,
                format!(
                    "options.size is {size}; set it to sizeof(TetherOptions) (at least \
                     {TETHER_OPTIONS_SIZE_V1})"
                ),
            ));
        }
        // SAFETY: at least as large as this version's struct, so every field is readable.
        let o = unsafe { &*opts };
        // SAFETY (all six): string fields, per this function's contract.
        let user = unsafe { required_str(o.user, "options.user") }?;
        let device = unsafe { required_str(o.device, "options.device") }?;
        let token = unsafe { token_arg(o.token, "options.token") }?;
        let network_key = unsafe { network_key_arg(o.network_key, "options.network_key") }?;
        let heartbeat_json = unsafe { optional_str(o.heartbeat_json, "options.heartbeat_json") }?;
        let memory_json = unsafe { optional_str(o.memory_json, "options.memory_json") }?;
        check_len(&user, "options.user", 1, USER_MAX)?;
        check_len(&device, "options.device", 1, DEVICE_MAX)?;
        let heartbeat = heartbeat_config(o.nat_hint_ms, heartbeat_json.as_deref())?;
        let memory = match memory_json {
            None => NetMemory::new(heartbeat.memory_capacity),
            Some(j) => serde_json::from_str::<NetMemory>(&j)
                .map_err(|e| Error::new(TETHER_ERR_CONFIG, format!("options.memory_json: {e}")))?
                .with_capacity(heartbeat.memory_capacity),
        };
        Ok(Settings {
            credentials: Credentials {
                user,
                device,
                token,
            },
            network_key,
            heartbeat,
            memory,
            foreground: o.foreground,
            seed: o.seed,
        })
    }
}

/// A string the protocol bounds: `min..=max` bytes.
fn check_len(v: &str, what: &str, min: usize, max: usize) -> Result<(), Error> {
    if v.len() < min || v.len() > max {
        return Err(Error::new(
            TETHER_ERR_ARGUMENT,
            format!("{what} must be {min}..={max} bytes, not {}", v.len()),
        ));
    }
    Ok(())
}

/// The heartbeat parameters: the defaults, or scaled for `nat_hint_ms`, then `json`'s fields.
fn heartbeat_config(nat_hint_ms: u32, json: Option<&str>) -> Result<HeartbeatConfig, Error> {
    let base = if nat_hint_ms > 0 {
        tether_client::preset::scaled(nat_hint_ms)
    } else {
        HeartbeatConfig::default()
    };
    let cfg = match json {
        None => base,
        Some(j) => {
            let overrides: serde_json::Value = serde_json::from_str(j).map_err(|e| {
                Error::new(TETHER_ERR_CONFIG, format!("options.heartbeat_json: {e}"))
            })?;
            let serde_json::Value::Object(fields) = overrides else {
                return Err(Error::new(
                    TETHER_ERR_CONFIG,
                    "options.heartbeat_json must be a JSON object",
                ));
            };
            let mut merged = serde_json::to_value(&base)
                .map_err(|e| Error::new(TETHER_ERR_INTERNAL, e.to_string()))?;
            if let serde_json::Value::Object(m) = &mut merged {
                m.extend(fields);
            }
            serde_json::from_value(merged).map_err(|e| {
                Error::new(TETHER_ERR_CONFIG, format!("options.heartbeat_json: {e}"))
            })?
        }
    };
    cfg.validate()
        .map_err(|e| Error::new(TETHER_ERR_CONFIG, format!("heartbeat parameters: {e}")))?;
    Ok(cfg)
}
