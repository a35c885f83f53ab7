//! Figures kept by a thread other than a shard (the cluster's, the upstream sink's): named
//! atomics, each declared once with its help and whether it only grows, read by `/metrics`
//! and `/api/stats`. (A shard's own counters are plain integers: `counters.rs`.)

/// Whether a figure only grows or is a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows: a `/metrics` counter (`_total`).
    Counter,
    /// Goes up and down: a `/metrics` gauge.
    Gauge,
}

/// One figure as it was declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Figure {
    /// Field name, also its key in `/api/stats` and the end of its metric name.
    pub name: &'static str,
    /// What it counts: its doc comment and its `# HELP`.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
}

/// Declares a struct of figures, one `AtomicU64` field each, a row per figure:
/// `name => "help";` for a counter, `name: gauge => "help";` for a level.
macro_rules! figures {
    (@kind) => {
        $crate::figures::Kind::Counter
    };
    (@kind gauge) => {
        $crate::figures::Kind::Gauge
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $stats:ident;
        $($name:ident $(: $kind:ident)? => $help:literal;)*
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $stats {
            $(#[doc = $help] pub $name: std::sync::atomic::AtomicU64,)*
        }

        impl $stats {
            /// Every figure with its atomic, in declaration order.
            pub fn all(&self) -> Vec<($crate::figures::Figure, &std::sync::atomic::AtomicU64)> {
                vec![$((
                    $crate::figures::Figure {
                        name: stringify!($name),
                        help: $help,
                        kind: $crate::figures::figures!(@kind $($kind)?),
                    },
                    &self.$name,
                ),)*]
            }
        }
    };
}

pub(crate) use figures;
