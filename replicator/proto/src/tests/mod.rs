//! Tests of both state machines together on a simulated network ([`util::Pair`]).

mod fuzz;
mod random;
mod spec;
pub(crate) mod util;
