//! [`Transport`]: a layered connection's layers and its bytes waiting their turn on the wire.

use crate::layers::Layers;

/// A layered connection in the driver: its layers and the order of its bytes on the wire.
/// TLS records are numbered as they are protected and WebSocket frames must not interleave,
/// so while one send is in flight, later bytes (the core's next frames, a `KeyUpdate`, a
/// Pong) wait here.
#[derive(Debug)]
pub(super) struct Transport {
    /// TLS and WebSocket.
    pub(super) layers: Layers,
    /// Bytes waiting for the send in flight.
    pub(super) queued: Vec<u8>,
    /// The length of the core's bytes inside `queued`, reported when they are written.
    pub(super) queued_report: Option<usize>,
    /// A send of this connection is in flight.
    pub(super) busy: bool,
}

impl Transport {
    /// A connection with `layers`, nothing in flight.
    pub(super) fn new(layers: Layers) -> Box<Transport> {
        Box::new(Transport {
            layers,
            queued: Vec::new(),
            queued_report: None,
            busy: false,
        })
    }

    /// The last word of a closing connection's layers, written just before its socket closes:
    /// the answer to the peer's Close, or a WebSocket Close with the code of the tether frame
    /// that ended the connection. Nothing while a send is in flight (the bytes would mix).
    pub(super) fn last_word(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        if !self.busy {
            // What waits (the answer to the peer's Close), then the layers' own Close.
            wire = std::mem::take(&mut self.queued);
            self.layers.close(&mut wire);
        }
        wire
    }
}
