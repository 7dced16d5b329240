//! The one integration-test binary (style P13).
//!
//! Every end-to-end test starts with `util::require_fuse(name)`: without root and
//! `/dev/fuse` it skips with a printed reason, except under `CI=true`, where a skip
//! is a failure.
//!
//! Run: `cargo test --test tests -- --test-threads=1 [filter]`.

// The tests talk to the kernel directly (pread/pwrite at offsets, renameat2,
// xattrs, mmap, per-thread setfsuid); that needs libc calls.
#![allow(unsafe_code)]
// Test modules are private; `pub` items in them are the harness API.
#![allow(unreachable_pub)]

mod harness;

mod differential;
mod posix;

mod apache;
mod badinput;
mod balance;
mod crash;
mod deps;
mod durability;
mod enospc;
mod failover;
mod fault;
mod flood;
mod handshakes;
mod isolation;
mod lab_selftest;
mod online_verify;
mod package;
mod replication;
mod resync;
mod splitbrain;
mod standby;
