//! twinfs-lua: the supervisor (issue 4): the pure failover state machine, the Lua
//! hook runtime (mlua, Lua 5.4) and the actuators (VIP, services, fencing).
//!
//! Nothing is implemented yet: this crate exists so the workspace layout is in
//! place from the start.

#![forbid(unsafe_code)]
