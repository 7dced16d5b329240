//! Fault injection for the end-to-end tests (issue 13), compiled only into
//! debug builds (`cfg(debug_assertions)`): a release build has no switch, and
//! its hooks are empty inline functions.
//!
//! `TWINFS_FAULT=panic-in-applier:N` (N >= 1; `panic-in-applier` alone is 1):
//! the N-th mutation from the peer that this node takes to apply panics, on the
//! applier thread or on the node task when it applies inline. `twinfs run`'s
//! panic hook then ends the process, which is what the test checks: a node
//! never lives on half-alive without its applier.

/// Called by the applier before each job; `from_peer`: the job applies a
/// mutation the peer sent.
#[cfg(debug_assertions)]
pub(crate) fn before_apply(from_peer: bool) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    if !from_peer {
        return;
    }
    let at = AT.get_or_init(|| std::env::var("TWINFS_FAULT").ok().and_then(|v| parse(&v)));
    if let Some(n) = *at {
        if SEEN.fetch_add(1, Ordering::Relaxed) + 1 == n {
            panic!("fault injection (TWINFS_FAULT=panic-in-applier:{n}): the applier panics at the peer's mutation {n}");
        }
    }
}

/// Release builds: no fault injection.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub(crate) fn before_apply(_from_peer: bool) {}

/// `panic-in-applier[:N]` -> N; anything else -> no fault.
#[cfg(debug_assertions)]
fn parse(v: &str) -> Option<u64> {
    match v.trim().split_once(':') {
        None if v.trim() == "panic-in-applier" => Some(1),
        Some(("panic-in-applier", n)) => n.trim().parse().ok().filter(|n| *n >= 1),
        _ => None,
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn parses_the_switch() {
        assert_eq!(parse("panic-in-applier"), Some(1));
        assert_eq!(parse("panic-in-applier:25"), Some(25));
        assert_eq!(parse("panic-in-applier:0"), None);
        assert_eq!(parse("panic-in-applier:x"), None);
        assert_eq!(parse("panic-elsewhere:3"), None);
        assert_eq!(parse(""), None);
    }
}
