//! Protocol settings shared by both sides of a pair.

use crate::error::ConfigError;
use std::time::Duration;

/// When the primary may acknowledge a write to the application (DRBD's protocols).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Asynchronous: after the local apply; the peer follows.
    A,
    /// Semi-synchronous: after the local apply and the peer's receipt.
    B,
    /// Synchronous: after the local apply and the peer's apply (the default).
    #[default]
    C,
}

/// What a primary does with writes once its peer is declared lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnPeerLoss {
    /// Keep serving without any evidence: commit on the local store alone
    /// (degraded mode) and resync later. A node that cannot tell a dead peer
    /// from its own isolation (no witness, no ping target) has only this; a
    /// cut cable then makes two primaries.
    #[default]
    Continue,
    /// Keep serving alone only while the driver holds evidence, obtained after
    /// the peer went silent, that this node is not the isolated one (a witness
    /// lease renewed since, a ping target's reply to a probe sent since): see
    /// [`Primary::grant_alone`](crate::Primary::grant_alone). Without it, writes are
    /// suspended (applied locally, not acknowledged).
    WithEvidence,
    /// Block writes (they are applied locally but not acknowledged) until the peer is back.
    Suspend,
}

/// Settings of the replication protocol. Both nodes of a pair should use the same values.
///
/// Build it, then call [`ProtocolConfig::validate`] before handing it to a state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolConfig {
    /// Commit rule.
    pub protocol: Protocol,
    /// Interval between heartbeats, and the retransmission interval for unacknowledged mutations.
    pub keepalive: Duration,
    /// Silence after which the peer is declared lost.
    pub deadtime: Duration,
    /// Most mutations the primary sends beyond what the peer has applied; also the
    /// replica's bound on buffered out-of-order mutations.
    pub max_in_flight: usize,
    /// Most payload bytes the replica holds in mutations that arrived after a
    /// gap ([`crate::MAX_EARLY_BYTES`] by default); beyond it they are dropped
    /// like lost packets, and the primary sends them again.
    pub max_early_bytes: usize,
    /// What happens to writes while the peer is lost.
    pub on_peer_loss: OnPeerLoss,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            protocol: Protocol::C,
            keepalive: Duration::from_secs(1),
            deadtime: Duration::from_secs(10),
            max_in_flight: 1024,
            max_early_bytes: crate::MAX_EARLY_BYTES,
            on_peer_loss: OnPeerLoss::Continue,
        }
    }
}

impl ProtocolConfig {
    /// Checks the cross-field rules; the error names the fields and their values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keepalive.is_zero() {
            return Err(ConfigError::ZeroKeepalive);
        }
        // A deadtime no longer than the heartbeat interval declares a healthy
        // peer dead between two heartbeats.
        if self.deadtime <= self.keepalive {
            return Err(ConfigError::DeadtimeNotAboveKeepalive {
                deadtime: self.deadtime,
                keepalive: self.keepalive,
            });
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::ZeroMaxInFlight);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_protocol_c() {
        let c = ProtocolConfig::default();
        assert_eq!(c.protocol, Protocol::C);
        c.validate().unwrap();
    }

    #[test]
    fn errors_name_the_fields() {
        let c = ProtocolConfig {
            deadtime: Duration::from_millis(500),
            keepalive: Duration::from_secs(1),
            ..ProtocolConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "deadtime (500ms) must exceed keepalive (1s)"
        );
        let c = ProtocolConfig {
            keepalive: Duration::ZERO,
            ..ProtocolConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("keepalive"));
        let c = ProtocolConfig {
            max_in_flight: 0,
            ..ProtocolConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_in_flight"));
    }
}
