//! Admission limits for input nobody has authenticated yet: token buckets per
//! source address, a log limiter that counts what it suppressed, and [`clip`]
//! for bounded text fields.
//!
//! Pure like the rest of this crate: the caller passes the current [`Instant`].
//! Both keep a bounded amount of state whatever arrives, so a flood from many
//! sources costs O(1) per datagram and a fixed amount of memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilled with `rate` tokens a second, holding at most `burst`.
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Whether the bucket has refilled completely (its source has been quiet).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One [`TokenBucket`] per source, for at most `max_sources` sources.
///
/// Sources beyond that share one overflow bucket with the same rate, so a
/// flood from a million spoofed addresses gets one source's budget in total
/// and a known source already in the table keeps its own.
#[derive(Debug)]
pub struct PerSource<K> {
    rate: u32,
    burst: u32,
    max_sources: usize,
    buckets: HashMap<K, TokenBucket>,
    overflow: TokenBucket,
    last_sweep: Instant,
}

impl<K: Hash + Eq + Clone> PerSource<K> {
    /// `rate` admissions a second per source, `burst` at once, for up to
    /// `max_sources` sources with their own bucket.
    pub fn new(rate: u32, burst: u32, max_sources: usize, now: Instant) -> PerSource<K> {
        PerSource {
            rate,
            burst,
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
            overflow: TokenBucket::new(rate, burst, now),
            last_sweep: now,
        }
    }

    /// Admits one item from `source`, or says it is over its rate.
    pub fn admit(&mut self, source: &K, now: Instant) -> bool {
        if let Some(bucket) = self.buckets.get_mut(source) {
            return bucket.take(now);
        }
        if self.buckets.len() >= self.max_sources {
            self.sweep(now);
        }
        if self.buckets.len() >= self.max_sources {
            return self.overflow.take(now);
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst, now);
        let admitted = bucket.take(now);
        self.buckets.insert(source.clone(), bucket);
        admitted
    }

    /// Forgets sources whose bucket is full again, at most once a second (so
    /// a full table costs O(1) amortised per admission).
    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_sweep) < Duration::from_secs(1) {
            return;
        }
        self.last_sweep = now;
        self.buckets.retain(|_, b| !b.is_full(now));
    }

    /// How many sources have their own bucket now.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

/// At most `per_second` log lines (and a burst of as many) per kind of event;
/// the ones it suppresses are counted and reported with the next admitted one.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    kinds: HashMap<&'static str, (TokenBucket, u64)>,
}

impl LogLimiter {
    /// A limiter letting `per_second` lines a second through for each kind.
    pub fn new(per_second: u32) -> LogLimiter {
        LogLimiter {
            per_second: per_second.max(1),
            kinds: HashMap::new(),
        }
    }

    /// `Some(n)` if a line of `kind` may be logged now, `n` being how many of
    /// that kind were suppressed since the last one logged; `None` if this one
    /// is suppressed (and counted). Kinds are static strings, so the table is
    /// bounded by the program's text.
    pub fn admit(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        let rate = self.per_second;
        let (bucket, suppressed) = self
            .kinds
            .entry(kind)
            .or_insert_with(|| (TokenBucket::new(rate, rate, now), 0));
        if bucket.take(now) {
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary: what goes into a
/// bounded field (a close reason, a name on the wire).
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn clip_cuts_on_a_character_boundary() {
        assert_eq!(super::clip("abc", 5), "abc");
        assert_eq!(super::clip("abcdef", 3), "abc");
        assert_eq!(super::clip("aé", 2), "a", "é is two bytes");
    }

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // Idle for long: only the burst is saved up.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }

    #[test]
    fn one_flooding_source_does_not_use_up_another_sources_budget() {
        let t0 = Instant::now();
        let mut p = PerSource::new(5, 5, 16, t0);
        let admitted = (0..1000).filter(|_| p.admit(&"flood", t0)).count();
        assert_eq!(admitted, 5);
        assert!(p.admit(&"peer", t0));
    }

    #[test]
    fn many_sources_share_one_overflow_budget_and_the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut p = PerSource::new(5, 5, 16, t0);
        assert!(p.admit(&0u32, t0)); // a known source, in the table early
        let admitted = (1..100_000u32).filter(|i| p.admit(i, t0)).count();
        assert!(p.sources() <= 16);
        // 15 new sources got a table slot, then the overflow bucket's 5.
        assert_eq!(admitted, 15 + 5);
        assert!(p.admit(&0u32, t0), "a known source keeps its own budget");
        // Once quiet sources refill, they are swept out and new ones get slots.
        let later = t0 + Duration::from_secs(10);
        assert!(p.admit(&1_000_000u32, later));
        assert!(p.sources() <= 16);
    }

    #[test]
    fn the_log_limiter_counts_what_it_suppressed() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(2);
        assert_eq!(l.admit("x", t0), Some(0));
        assert_eq!(l.admit("x", t0), Some(0));
        for _ in 0..10 {
            assert_eq!(l.admit("x", t0), None);
        }
        assert_eq!(l.admit("y", t0), Some(0), "kinds are limited separately");
        assert_eq!(l.admit("x", t0 + Duration::from_secs(1)), Some(10));
    }
}
