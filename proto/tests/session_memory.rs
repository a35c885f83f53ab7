//! An idle server session owns no heap memory: whatever it allocated for pending outputs is
//! freed once they are drained. Counted with an allocator wrapper, per thread, so the test
//! harness's own threads do not disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use tether_proto::session::{Accept, ServerSession, SessionConfig};
use tether_proto::token::{Authenticate, Grant, KeyId, Principal};
use tether_proto::{CloseCode, Frame, Login, Ping, PROTOCOL_VERSION};

struct Counting;

thread_local! {
    /// Bytes allocated and not yet freed by this thread.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| l.set(l.get() + layout.size() as isize));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get() - layout.size() as isize));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live() -> isize {
    LIVE.with(|l| l.get())
}

struct Anyone;

impl Authenticate for Anyone {
    fn authenticate(&self, _login: &Login, _now_unix: u64) -> Result<Grant, CloseCode> {
        Ok(grant(Principal::Client))
    }
}

#[test]
fn an_idle_session_holds_no_heap_memory() {
    let cfg = SessionConfig::default();
    let mut s = ServerSession::new(&cfg, 0);
    let login = Frame::Login(Login {
        version: PROTOCOL_VERSION,
        flags: 0,
        user: "alice".into(),
        device: "phone".into(),
        token: "t".into(),
        heartbeat_ms: 60_000,
        network_key: "wifi:home".into(),
    });
    let before = live();
    s.handle_frame(&cfg, 1, 0, login, &Anyone);
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    drop(events);
    s.accept(
        &cfg,
        2,
        Accept {
            session_id: 1,
            server_epoch: 1,
            prior_ms: 0,
        },
    )
    .unwrap();
    let payload = Bytes::from_static(b"static payload");
    for id in 0..10 {
        s.push(id, payload.clone()).unwrap();
    }
    s.handle_frame(&cfg, 3, 0, Frame::Ping(Ping { lease_ms: 1 }), &Anyone);
    assert!(live() > before, "the allocator wrapper counts");
    while let Some(frame) = s.poll_transmit() {
        drop(frame);
    }
    assert_eq!(s.poll_event(), None);
    // The login frame's strings were freed by the event's drop; everything the session
    // allocated for its outputs is gone too.
    assert!(
        live() <= before,
        "idle session still holds {} bytes",
        live() - before
    );
    assert!(s.is_open());
}

/// A grant for `principal` whose token never expires, by no secret.
fn grant(principal: Principal) -> Grant {
    Grant {
        principal,
        expiry_unix: u64::MAX,
        key: KeyId::NONE,
    }
}
