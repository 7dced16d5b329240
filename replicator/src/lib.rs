//! twinfs-replicator: ships the numbered mutations of `twinfs-fs` to the peer.
//!
//! Planned shape (issue 3): a sans-IO protocol core (sequence numbers, acks,
//! protocols A/B/C, resync planning, generations, split-brain detection,
//! heartbeats) with `handle_*` inputs and `poll_*` outputs and time passed in,
//! plus a thin QUIC transport (quinn + rustls, mutual TLS). The core must never
//! depend on tokio, quinn or sled; CI checks this with `cargo tree`.
//!
//! The protocol core now lives in `twinfs-replicator-proto` (`replicator/proto/`);
//! this crate will hold the QUIC transport that drives it.

#![forbid(unsafe_code)]

pub mod control;
pub mod evidence;
mod fault;
pub mod inflight;
pub mod node;
pub mod state;
pub mod status;
pub mod store;
pub mod tls;
pub mod transport;
