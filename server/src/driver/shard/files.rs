//! The driver's table of connections' sockets: direct descriptors in the shard ring's own file
//! table ([`Direct`]), not the process's descriptors.
//!
//! A socket is in the process's descriptor table only while it is being set up: the accept
//! delivers it there (so its options, its peer's address and a refusal work as for any
//! socket), [`Shard::install`] moves it into a free slot of the ring's table and closes the
//! process descriptor. From then on every request names the slot. A connection that moves to
//! its user's home shard is brought out into the process's table again
//! ([`RingIo::bring_out`]), travels through the mesh as a descriptor, and the home shard
//! installs it in its own table. Closing empties the slot through the ring; the slot is used
//! again only once that close has completed, so no request queued before it can reach the next
//! socket in the same slot.
//!
//! The process's `RLIMIT_NOFILE` caps each ring's table, not their sum: S shards hold up to S
//! times the limit in connections, and the process itself keeps a few dozen descriptors.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tracing::warn;

use super::layered::Transport;
use super::{Feedback, Shard, Slot};
use crate::core::{ConnId, Now, Transfer};
use crate::driver::ring::{unpack_file, Completion, Direct, FileOp};
use crate::layers::Layers;
use crate::mesh::{Handover, MeshMsg};

/// The slots of the ring's file table: which are free. A slot is taken when a socket is
/// installed and given back when its close completes.
#[derive(Debug)]
pub(super) struct Files {
    /// Slots given back, used first (the table stays dense).
    free: Vec<Direct>,
    /// Slots from here to `capacity` were never used.
    next: u32,
    /// Slots of the table.
    capacity: u32,
}

impl Files {
    /// A table of `capacity` slots, all free.
    pub(super) fn new(capacity: u32) -> Files {
        Files {
            free: Vec::new(),
            next: 0,
            capacity,
        }
    }

    /// Whether a slot is free.
    pub(super) fn has_room(&self) -> bool {
        !self.free.is_empty() || self.next < self.capacity
    }

    /// Takes a free slot.
    pub(super) fn take(&mut self) -> Option<Direct> {
        if let Some(d) = self.free.pop() {
            return Some(d);
        }
        (self.next < self.capacity).then(|| {
            self.next += 1;
            Direct::new(self.next - 1)
        })
    }

    /// Gives slot `d` back (its close completed, or it was never filled).
    pub(super) fn give_back(&mut self, d: Direct) {
        debug_assert!(d.index() < self.next && !self.free.contains(&d));
        self.free.push(d);
    }

    /// Slots taken: sockets of connections, and sockets being closed or moved.
    pub(super) fn in_use(&self) -> u32 {
        self.next - self.free.len() as u32
    }

    /// Slots of the table.
    pub(super) fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// The socket of a connection being refused: where its last word is written before it closes.
#[derive(Debug)]
pub(super) enum Socket {
    /// Still in a slot of the ring's table (closed through the ring).
    Slot(Direct),
    /// A descriptor of the process: brought out of the table for a move, or arrived from
    /// another shard.
    Fd(OwnedFd),
}

/// A connection on its way to its home shard while its socket is brought out of the ring's
/// table into the process's.
#[derive(Debug)]
pub(super) struct Moving {
    /// The home shard.
    to: usize,
    /// The session and what it had read.
    transfer: Box<Transfer>,
    /// Its TLS and WebSocket, when it has them.
    layers: Option<Box<Layers>>,
}

impl Shard {
    /// The slot of `id`, if the driver holds its socket.
    pub(super) fn file(&self, id: ConnId) -> Option<Direct> {
        self.slots
            .get(id.key as usize)
            .filter(|s| s.gen == id.gen)
            .and_then(|s| s.file)
    }

    /// Takes the slot of `id` out of the table, and its layers if it has them.
    pub(super) fn take_file(&mut self, id: ConnId) -> Option<(Direct, Option<Box<Transport>>)> {
        let slot = self.slots.get_mut(id.key as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        let d = slot.file.take()?;
        Some((d, self.layered.remove(&id.key)))
    }

    /// Moves the socket `fd` of the connection the core just opened or adopted as `id` into a
    /// slot of the ring's table and closes the process's descriptor. The caller made sure a
    /// slot is free; should the kernel refuse it, the connection ends as a failed socket.
    pub(super) fn install(
        &mut self,
        id: ConnId,
        fd: OwnedFd,
        layers: Option<Box<Transport>>,
        now: Now,
    ) {
        let installed = match self.files.take() {
            Some(d) => match self.ring.install(d, fd.as_raw_fd()) {
                Ok(()) => Ok(d),
                Err(e) => {
                    self.files.give_back(d);
                    Err(e)
                }
            },
            None => Err(std::io::Error::other("the file table is full")),
        };
        // The slot holds its own reference; the process's descriptor goes now.
        drop(fd);
        let d = match installed {
            Ok(d) => d,
            Err(e) => {
                warn!(shard = self.index, error = %e, "socket could not enter the ring's file table");
                self.core.on_hangup(id, Some(ErrorKind::Other), now);
                return;
            }
        };
        let i = id.key as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, Slot { file: None, gen: 0 });
        }
        debug_assert!(
            self.slots[i].file.is_none(),
            "slot {i} still holds a socket"
        );
        self.slots[i] = Slot {
            file: Some(d),
            gen: id.gen,
        };
        match layers {
            Some(t) => {
                self.layered.insert(id.key, t);
            }
            None => {
                self.layered.remove(&id.key);
            }
        }
    }

    /// Closes slot `d` after writing `last` to it (nothing when empty), straight away: no
    /// send of the connection may follow. The slot is free once the close completes.
    pub(super) fn close_with(&mut self, d: Direct, last: Vec<u8>) {
        if last.is_empty() {
            self.ring.close(d);
            return;
        }
        let len = u32::try_from(last.len()).unwrap_or(u32::MAX);
        let ptr = last.as_ptr();
        // A slot has one close in flight at a time: it is taken again only after it completes.
        self.last_words.insert(d.index(), last);
        // SAFETY: the bytes are owned by the `Vec` kept in `self.last_words` (its heap buffer
        // does not move with it) until the close's completion is reaped (`on_file`).
        unsafe { self.ring.close_after(d, ptr, len) };
    }

    /// Sends connection `conn`'s socket, session and layers to shard `to`: first the socket
    /// leaves the ring's table for the process's ([`Shard::on_file`] continues). Carried out
    /// as a command: what cannot happen is fed back to the core afterwards.
    pub(super) fn hand_over(&mut self, conn: ConnId, to: usize, transfer: Box<Transfer>) {
        let Some((d, layers)) = self.take_file(conn) else {
            return;
        };
        // Bytes leave in order: a connection with a send of its own still in flight here
        // cannot send from another ring yet. (Its login came after the handshake's or the
        // upgrade's answer was written, so this is not expected.)
        let layers = match layers {
            Some(t) if t.busy || !t.queued.is_empty() => {
                let layers = Some(Box::new(t.layers));
                self.feedback
                    .push(Feedback::HandoverRefused(Socket::Slot(d), transfer, layers));
                return;
            }
            t => t.map(|t| Box::new(t.layers)),
        };
        self.ring.bring_out(d);
        self.moving.insert(
            d.index(),
            Moving {
                to,
                transfer,
                layers,
            },
        );
    }

    /// A request on a slot completed: a close (the slot is free), or a socket brought out for
    /// its move (it goes through the mesh; the slot is closed). A move that cannot go on is
    /// left in [`Shard::feedback`] for the core.
    pub(super) fn on_file(&mut self, c: Completion) {
        let (op, d) = unpack_file(c.user_data);
        match op {
            FileOp::Close => {
                self.last_words.remove(&d.index());
                self.files.give_back(d);
            }
            FileOp::BringOut => {
                let Some(m) = self.moving.remove(&d.index()) else {
                    return;
                };
                if c.result < 0 {
                    // Out of process descriptors: the move cannot happen; the client is told
                    // through the slot, like a full mesh channel.
                    warn!(
                        shard = self.index,
                        error = %std::io::Error::from_raw_os_error(-c.result),
                        "a connection could not leave the ring's file table for its home shard"
                    );
                    let refused = Feedback::HandoverRefused(Socket::Slot(d), m.transfer, m.layers);
                    self.feedback.push(refused);
                    return;
                }
                self.ring.close(d);
                // SAFETY: the kernel installed this descriptor for us; nobody else owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
                let h = Handover {
                    fd,
                    transfer: m.transfer,
                    layers: m.layers,
                };
                if let Err(MeshMsg::Handover(h)) = self.port.send(m.to, MeshMsg::Handover(h)) {
                    let refused = Feedback::HandoverRefused(Socket::Fd(h.fd), h.transfer, h.layers);
                    self.feedback.push(refused);
                }
            }
        }
    }

    /// Figures of the file table for `/metrics`: (slots in use, slots).
    pub(super) fn file_figures(&self) -> (u32, u32) {
        (self.files.in_use(), self.files.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_only_once_given_back_and_never_beyond_the_table() {
        let mut files = Files::new(3);
        let a = files.take().unwrap();
        let b = files.take().unwrap();
        let c = files.take().unwrap();
        assert_eq!((a.index(), b.index(), c.index()), (0, 1, 2));
        assert!(!files.has_room());
        assert_eq!(files.take(), None);
        assert_eq!(files.in_use(), 3);
        files.give_back(b);
        assert!(files.has_room());
        assert_eq!(files.in_use(), 2);
        assert_eq!(files.take(), Some(b));
        assert_eq!(files.take(), None);
    }
}
