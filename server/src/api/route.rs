//! The route table: every route's path, method and the scope a key needs for it, written once.
//! `router.rs` checks each request against it and calls the route's handler; `keys.rs` says
//! which scopes a key holds.

use hyper::Method;

use super::ctx::Surface;
use super::scope::Scope;

/// A route: its path, method and the scope a key needs for it. The one table of routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Healthz,
    Readyz,
    Metrics,
    Push,
    Batch,
    Kick,
    Presence,
    Stats,
    Drain,
}

impl Route {
    /// Every route.
    pub(crate) const ALL: [Route; 9] = [
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Push,
        Route::Batch,
        Route::Kick,
        Route::Presence,
        Route::Stats,
        Route::Drain,
    ];

    /// The route at `path` on `surface` (the metrics listener serves only the open ones).
    pub(crate) fn find(path: &str, surface: Surface) -> Option<Route> {
        Route::ALL
            .into_iter()
            .find(|r| r.path() == path && (surface == Surface::Api || r.scope().is_none()))
    }

    /// Its path (also its metric label, so labels stay bounded).
    pub(crate) fn path(self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Push => "/api/push",
            Route::Batch => "/api/batch",
            Route::Kick => "/api/kick",
            Route::Presence => "/api/presence",
            Route::Stats => "/api/stats",
            Route::Drain => "/api/drain",
        }
    }

    /// Its method.
    pub(crate) fn method(self) -> Method {
        match self {
            Route::Push | Route::Batch | Route::Kick | Route::Drain => Method::POST,
            Route::Healthz | Route::Readyz | Route::Metrics | Route::Presence | Route::Stats => {
                Method::GET
            }
        }
    }

    /// The scope a key needs; `None` for the routes anyone may call (probes, scrapes).
    pub(crate) fn scope(self) -> Option<Scope> {
        match self {
            Route::Healthz | Route::Readyz | Route::Metrics => None,
            Route::Push | Route::Batch => Some(Scope::Push),
            Route::Presence | Route::Stats => Some(Scope::Read),
            // Kick acts on a user without being a push; drain on everyone.
            Route::Kick | Route::Drain => Some(Scope::Admin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_route_needs_a_scope_and_the_metrics_listener_serves_only_open_ones() {
        for r in Route::ALL {
            assert_eq!(Route::find(r.path(), Surface::Api), Some(r));
            assert_eq!(r.path().starts_with("/api/"), r.scope().is_some(), "{r:?}");
            let on_metrics = Route::find(r.path(), Surface::Metrics);
            assert_eq!(on_metrics.is_some(), r.scope().is_none(), "{r:?}");
        }
        assert_eq!(
            Route::find("/api/push", Surface::Api).and_then(Route::scope),
            Some(Scope::Push)
        );
        assert_eq!(
            Route::find("/api/stats", Surface::Api).and_then(Route::scope),
            Some(Scope::Read)
        );
        assert_eq!(
            Route::find("/api/drain", Surface::Api).and_then(Route::scope),
            Some(Scope::Admin)
        );
        assert_eq!(
            Route::find("/api/kick", Surface::Api).and_then(Route::scope),
            Some(Scope::Admin)
        );
        assert_eq!(Route::find("/api/push/", Surface::Api), None);
    }
}
