//! Stopping a running server: a flag every shard reads at its tick, set by a signal, the API's
//! drain or a test, and the mesh's doorbells to make the shards look at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tracing::{info, warn};

use crate::mesh::MeshShared;

/// Tells a running server to drain and stop. Cloneable; [`Shutdown::trigger`] may be called
/// from any thread (the signal thread, a test).
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Set once the drain must start.
    flag: Arc<AtomicBool>,
    /// The mesh to wake the shards through, once the server runs.
    mesh: Arc<OnceLock<Arc<MeshShared>>>,
}

impl Shutdown {
    /// A handle triggered only by [`Shutdown::trigger`].
    pub fn manual() -> Shutdown {
        Shutdown::default()
    }

    /// A handle triggered by SIGTERM or SIGINT (a second signal exits at once).
    pub fn on_signals() -> std::io::Result<Shutdown> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let shutdown = Shutdown::default();
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
        let handle = shutdown.clone();
        std::thread::Builder::new()
            .name("tether-signals".into())
            .spawn(move || {
                let mut seen = false;
                for signal in signals.forever() {
                    if seen {
                        warn!(signal, "second signal: exiting without drain");
                        std::process::exit(1);
                    }
                    seen = true;
                    info!(signal, "signal received: draining");
                    handle.trigger();
                }
            })?;
        Ok(shutdown)
    }

    /// Gives the handle the mesh of the server it stops, so a trigger wakes every shard.
    pub(crate) fn attach(&self, mesh: Arc<MeshShared>) {
        let _ = self.mesh.set(mesh);
    }

    /// The flag itself, for the shards to read at their tick.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }

    /// Whether the drain was started.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Starts the drain.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some(mesh) = self.mesh.get() {
            for i in 0..mesh.len() {
                mesh.wake(i);
            }
        }
    }
}
