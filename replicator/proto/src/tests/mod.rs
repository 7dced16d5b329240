//! Tests of both protocol state machines together on a simulated network
//! ([`util::Pair`]), and of two node cores ([`node_sim::Sim`]).

mod fuzz;
mod node_cases;
pub(crate) mod node_sim;
mod random;
mod spec;
pub(crate) mod util;
