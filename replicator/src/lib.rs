//! twinfs-replicator: ships the numbered mutations of `twinfs-fs` to the peer.
//!
//! Planned shape (issue 3): a sans-IO protocol core (sequence numbers, acks,
//! protocols A/B/C, resync planning, generations, split-brain detection,
//! heartbeats) with `handle_*` inputs and `poll_*` outputs and time passed in,
//! plus a thin QUIC transport (quinn + rustls, mutual TLS). The core must never
//! depend on tokio, quinn or sled; CI checks this with `cargo tree`.
//!
//! Nothing is implemented yet: this crate exists so the workspace layout and the
//! dependency boundary check are in place from the start.

#![forbid(unsafe_code)]
