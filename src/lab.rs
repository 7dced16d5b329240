//! The one lab of the repository: two nodes of a pair, a client and a
//! witness on this machine, in network namespaces, for the end-to-end tests,
//! the demo and the benches.
//!
//! - [`net`]: the namespaces, links, addresses, partitions and processes
//!   (the addresses are written down only there);
//! - [`apache`]: the one writer of the lab's Apache configs;
//! - [`http`]: the one HTTP client of the tests and the scripts;
//! - [`cmd`]: the hidden `twinfs lab` command the scripts drive it with
//!   (`scripts/lib/lab.sh`).
//!
//! The end-to-end tests compile `net.rs`, `apache.rs` and `http.rs` into their
//! harness (`tests/harness/mod.rs`), so each file stands alone: they refer to
//! each other only from `cmd.rs`.

pub(crate) mod apache;
pub(crate) mod cmd;
pub(crate) mod http;
pub(crate) mod net;
/// The product's site writer, which [`apache`] wraps (the tests' harness
/// includes the same file under the same name).
pub(crate) use crate::apache as site;
