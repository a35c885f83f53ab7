//! tether-loadgen: the connection-density benchmark of the tether gateway.
//!
//! The parent process ([`run`]) splits a scenario's connections over worker processes (each
//! below the open-files limit), drives them through the phases of the run and samples the
//! server from /proc between phases. A worker ([`worker`]) is one epoll loop holding up to
//! ~15,000 non-blocking connections, each a few words of state, spread over many loopback
//! source addresses. Latencies go into HdrHistograms that the workers ship back as JSON.
//!
//! Code map: `cli` (subcommands, plan) → `run` (parent, phases) → `job` (parent/worker
//! messages) → `worker` (event loop) using `conn`, `net`, `epoll`, `rate`, `wire`, `payload`,
//! `clock`, `tls` when the run speaks TLS and `ws` when it speaks WebSocket; results: `stats`,
//! `report`, `hgrm`, `svg`, and `resolution` (what each counter can resolve); server sampling: `procfs`. The state-only benchmark (millions of sessions without
//! sockets) lives with the server, in `server/benches/state.rs`, so it drives the server's own
//! path.
//!
//! `wire` is the only place that knows a protocol: tether's own (`wire/tether.rs`), MQTT 3.1.1
//! (`wire/mqtt.rs`) and NATS (`wire/nats.rs`), so the same scenarios measure mosquitto,
//! rumqttd or nats-server beside tether (`scripts/compare.sh`).

pub mod cli;
pub mod clock;
pub mod conn;
mod during;
pub mod epoll;
pub mod hgrm;
pub mod job;
pub mod net;
pub mod payload;
pub mod procfs;
pub mod rate;
pub mod report;
pub mod resolution;
pub mod run;
pub mod stats;
pub mod svg;
pub mod tls;
pub mod wire;
pub mod worker;
pub mod ws;
