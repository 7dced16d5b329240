//! The witness's lease table: who holds the primary lease, until when, and
//! when each node was last heard. Pure: `now` is an argument.

use std::time::{Duration, Instant};

use super::message::{Op, Outcome};

#[derive(Debug)]
struct Slot {
    name: String,
    heard: Option<Instant>,
    expires: Option<Instant>,
}

/// What the table decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) outcome: Outcome,
    /// The holder after the request, and its remaining time.
    pub(crate) holder: Option<(String, Duration)>,
    /// How long ago the other node(s) were last heard; `None`: never.
    pub(crate) peer_heard_ago: Option<Duration>,
}

/// The primary lease among the trusted nodes.
///
/// A node is granted the lease iff no other node holds an unexpired one.
/// Expiry is one lease after the last grant or renewal the witness
/// *received*. For one startup grace period (at least the lease of the
/// previous run: what it granted may still run) only `Renew` is granted,
/// never `Acquire`; see the safety argument in the [module docs](super).
#[derive(Debug)]
pub(crate) struct LeaseTable {
    lease: Duration,
    grace_until: Instant,
    slots: Vec<Slot>,
}

impl LeaseTable {
    pub(crate) fn new(now: Instant, names: &[String], lease: Duration, grace: Duration) -> Self {
        LeaseTable {
            lease,
            grace_until: now + grace,
            slots: names
                .iter()
                .map(|n| Slot {
                    name: n.clone(),
                    heard: None,
                    expires: None,
                })
                .collect(),
        }
    }

    /// Handles an authenticated request of `node` (a trusted name).
    pub(crate) fn handle(&mut self, now: Instant, node: &str, op: Op) -> Decision {
        let Some(me) = self.slots.iter().position(|s| s.name == node) else {
            // The verifier only lets trusted names through; refuse anyway.
            return Decision {
                outcome: Outcome::Refused,
                holder: self.holder(now),
                peer_heard_ago: None,
            };
        };
        self.slots[me].heard = Some(now);
        let other_holds = self
            .slots
            .iter()
            .enumerate()
            .any(|(i, s)| i != me && s.expires.is_some_and(|e| e > now));
        let i_hold = self.slots[me].expires.is_some_and(|e| e > now);
        let outcome = match op {
            Op::Ping => Outcome::Pinged,
            Op::Release => {
                self.slots[me].expires = None;
                Outcome::Released
            }
            Op::Acquire | Op::Renew if other_holds => Outcome::Refused,
            Op::Acquire if now < self.grace_until && !i_hold => Outcome::Grace,
            Op::Acquire | Op::Renew => {
                self.slots[me].expires = Some(now + self.lease);
                Outcome::Granted
            }
        };
        let peer_heard_ago = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != me)
            .filter_map(|(_, s)| s.heard)
            .max()
            .map(|t| now.saturating_duration_since(t));
        Decision {
            outcome,
            holder: self.holder(now),
            peer_heard_ago,
        }
    }

    fn holder(&self, now: Instant) -> Option<(String, Duration)> {
        self.slots.iter().find_map(|s| {
            s.expires
                .filter(|&e| e > now)
                .map(|e| (s.name.clone(), e - now))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(3);

    fn table(t0: Instant, grace: Duration) -> LeaseTable {
        LeaseTable::new(t0, &["alpha".to_owned(), "beta".to_owned()], LEASE, grace)
    }

    #[test]
    fn one_holder_at_a_time() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = table(t0, Duration::ZERO);
        assert_eq!(
            t.handle(ms(0), "alpha", Op::Acquire).outcome,
            Outcome::Granted
        );
        let d = t.handle(ms(100), "beta", Op::Acquire);
        assert_eq!(d.outcome, Outcome::Refused);
        assert_eq!(
            d.holder,
            Some(("alpha".to_owned(), Duration::from_millis(2900)))
        );
        assert_eq!(d.peer_heard_ago, Some(Duration::from_millis(100)));
        // alpha renews; beta is refused until a full lease after that renewal.
        assert_eq!(
            t.handle(ms(2000), "alpha", Op::Renew).outcome,
            Outcome::Granted
        );
        assert_eq!(
            t.handle(ms(4999), "beta", Op::Acquire).outcome,
            Outcome::Refused
        );
        let d = t.handle(ms(5000), "beta", Op::Acquire);
        assert_eq!(d.outcome, Outcome::Granted);
        assert_eq!(d.peer_heard_ago, Some(Duration::from_millis(3000)));
        // Now alpha is the one refused, even when it says "renew".
        assert_eq!(
            t.handle(ms(5001), "alpha", Op::Renew).outcome,
            Outcome::Refused
        );
        // A planned handover: beta releases, alpha may take it at once.
        assert_eq!(
            t.handle(ms(5002), "beta", Op::Release).outcome,
            Outcome::Released
        );
        assert_eq!(
            t.handle(ms(5003), "alpha", Op::Acquire).outcome,
            Outcome::Granted
        );
        // Pings change nothing but the heard times.
        let d = t.handle(ms(5004), "beta", Op::Ping);
        assert_eq!(d.outcome, Outcome::Pinged);
        assert_eq!(d.holder.map(|h| h.0), Some("alpha".to_owned()));
    }

    #[test]
    fn startup_grace_grants_only_renewals() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = table(t0, LEASE);
        let d = t.handle(ms(10), "beta", Op::Ping);
        assert_eq!(d.peer_heard_ago, None, "alpha never heard yet");
        assert_eq!(
            t.handle(ms(20), "beta", Op::Acquire).outcome,
            Outcome::Grace
        );
        // The node whose lease from the previous run is still valid renews.
        assert_eq!(
            t.handle(ms(30), "alpha", Op::Renew).outcome,
            Outcome::Granted
        );
        assert_eq!(
            t.handle(ms(40), "beta", Op::Acquire).outcome,
            Outcome::Refused
        );
        // After the grace period, acquiring works as usual.
        let mut t = table(t0, LEASE);
        assert_eq!(
            t.handle(ms(3000), "beta", Op::Acquire).outcome,
            Outcome::Granted
        );
    }
}
