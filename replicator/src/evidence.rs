//! The right to acknowledge alone: the evidence a primary needs to keep
//! acknowledging writes after its peer went silent.
//!
//! A primary that loses its peer cannot tell a dead peer from its own
//! isolation. Under protocol C nothing is acknowledged while the peer is
//! silent; once the peer is declared lost the node acknowledges on its own
//! store only while it holds evidence, obtained *after* the peer's last frame,
//! that it is not the isolated one:
//!
//! - with a witness: the primary lease, renewed since the peer went silent
//!   (the witness never grants the peer a lease that overlaps it);
//! - without a witness: an answer of the ping target to a probe sent since.
//!
//! The supervisor posts what it learns on an [`EvidenceBoard`] (shared with
//! the node in the same process, a typed handle: no socket); the node reads it
//! while its peer is lost and hands a valid piece to the protocol core as an
//! [`AloneRight`](twinfs_replicator_proto::AloneRight). Without evidence writes block (applied locally, never
//! acknowledged) until the peer is back, evidence arrives, or the node is
//! demoted (then they fail).

use std::sync::Mutex;

/// Where the evidence must come from (decided by the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvidenceSource {
    /// Neither a witness nor a ping target: the node cannot tell a dead peer
    /// from its own isolation and continues alone without evidence. A cut
    /// cable can then cause a split brain.
    Unguarded,
    /// The witness at this address: only its lease counts.
    Witness(String),
    /// These ping targets (as the admin wrote them): an answer counts.
    Ping(String),
}

impl EvidenceSource {
    /// One line for the status and the log.
    pub fn describe(&self) -> String {
        match self {
            EvidenceSource::Unguarded => "none configured (no witness, no ping target): a primary \
                 that loses its peer continues alone, so a cut cable can cause a split brain"
                .into(),
            EvidenceSource::Witness(w) => format!("the witness {w}'s primary lease"),
            EvidenceSource::Ping(p) => format!("an answer from the ping target {p}"),
        }
    }
}

/// One piece of evidence (the node core's type).
pub use twinfs_replicator_proto::node::Evidence;

/// The latest evidence, posted by the supervisor's probes, read by the node.
#[derive(Debug)]
pub struct EvidenceBoard {
    source: EvidenceSource,
    latest: Mutex<Option<Evidence>>,
}

impl EvidenceBoard {
    /// A board that accepts evidence of `source`'s kind only.
    pub fn new(source: EvidenceSource) -> EvidenceBoard {
        EvidenceBoard {
            source,
            latest: Mutex::new(None),
        }
    }

    /// Where the evidence must come from.
    pub fn source(&self) -> &EvidenceSource {
        &self.source
    }

    /// Records new evidence; an older or shorter piece never replaces a newer one.
    pub fn post(&self, ev: Evidence) {
        let mut l = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if l.as_ref().is_none_or(|cur| {
            ev.obtained_at >= cur.obtained_at && ev.valid_until >= cur.valid_until
        }) {
            *l = Some(ev);
        }
    }

    /// Withdraws the evidence (a lease given up or refused).
    pub fn withdraw(&self) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The latest evidence, if any.
    pub fn latest(&self) -> Option<Evidence> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn newer_evidence_replaces_older_and_never_the_reverse() {
        let b = EvidenceBoard::new(EvidenceSource::Ping("10.0.0.1".into()));
        let t = Instant::now();
        let ev = |at: u64, until: u64, what: &str| Evidence {
            what: what.into(),
            obtained_at: t + Duration::from_millis(at),
            valid_until: t + Duration::from_millis(until),
        };
        assert_eq!(b.latest(), None);
        b.post(ev(10, 510, "first"));
        b.post(ev(5, 505, "late answer to an older probe"));
        assert_eq!(b.latest().unwrap().what, "first");
        b.post(ev(20, 520, "second"));
        assert_eq!(b.latest().unwrap().what, "second");
        assert_eq!(
            b.latest().unwrap().obtained_at,
            t + Duration::from_millis(20)
        );
        b.withdraw();
        assert_eq!(b.latest(), None);
    }
}
