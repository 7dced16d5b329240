//! twinfs-supervisor: the failover supervisor (issues 4 and 14).
//!
//! - [`machine`]: the failover state machine. Pure: time is an input, decisions
//!   (with their reasons) are outputs; no I/O, no Lua.
//! - [`actions`]: what a hook may do to the world ([`actions::Actuators`]), as a
//!   trait, so that `twinfs hooks dry-run` can record instead of act.
//! - [`hooks`]: the Lua 5.4 hook runtime (mlua): the `twinfs.*` API, the
//!   restricted standard library, the wall-time limit, rollback of the steps a
//!   failed hook had already done.
//! - [`actuators`]: the real actions: VIP with checked gratuitous ARP, services
//!   (systemd or a command), HTTP checks, exec with a timeout, ping.
//! - [`witness`]: the diskless tie-breaker (`twinfs witness`) and its client.
//! - [`driver`]: the supervisor itself: feeds what it observes of the
//!   replication node and the peer to the machine, carries out its steps
//!   (the witness lease, the node's role, the hooks), publishes its status
//!   and serves `failover.sock`. `twinfs run` starts it with a
//!   [`driver::SupervisorConfig`].

#![forbid(unsafe_code)]

pub mod actions;
pub mod actuators;
pub mod driver;
pub mod hooks;
pub mod machine;
pub mod witness;
