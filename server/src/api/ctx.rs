//! [`Ctx`], the state the control plane's tasks share, and [`Surface`], what a listener serves.

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use super::plane::ControlPlane;
use crate::prom::ApiMetrics;
use crate::results::Waiters;

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Surface {
    /// Everything.
    Api,
    /// `/metrics`, `/healthz`, `/readyz` only.
    Metrics,
}

impl Surface {
    /// The `listener` label of the connection metrics.
    pub(super) fn label(self) -> &'static str {
        match self {
            Surface::Api => "api",
            Surface::Metrics => "metrics",
        }
    }
}

/// State shared by the control plane's tasks (all on one thread).
pub(crate) struct Ctx {
    /// The plane's settings and handles.
    pub(crate) plane: ControlPlane,
    /// API pushes waiting for results.
    pub(crate) pending: Pending,
    /// The plane's own metrics.
    pub(crate) metrics: ApiMetrics,
}

impl Ctx {
    /// Whether the server listens and is not draining.
    pub(crate) fn ready(&self) -> bool {
        self.plane.ready.load(Ordering::Relaxed) && !self.plane.shutdown.is_triggered()
    }
}

/// API pushes waiting for results, by API push id; an `Acked` goes to the request's channel.
/// The plane runs on one thread, hence the `RefCell`.
pub(crate) type Pending = RefCell<Waiters<flume::Sender<()>>>;
