//! The fuzz loop every decoder of peer input is tested with: seeded, bounded
//! in cases and in time, and a failure names the case that replays it.
//!
//! Used by the fuzz tests of the frame codec (this crate), of
//! `Mutation::from_wire` (`twinfs-fs`) and of the node's payload decoders
//! (`twinfs-replicator`). The environment sets the budget:
//! `TWINFS_FUZZ_CASES` (a count that then runs in full), `TWINFS_FUZZ_SECS`,
//! and `TWINFS_FUZZ_SEED` (decimal or `0x` hex; else the clock).

use std::time::{Duration, Instant};

/// splitmix64: small, seeded, good enough to drive mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (0 when `n` is 0; the tiny modulo bias does not matter here).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How many cases a fuzz test runs, for how long at most, and from which seed.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Cases at most.
    pub max_cases: u64,
    /// Time at most (`None` when a case count was asked for: it runs in full).
    pub max_time: Option<Duration>,
    /// The run's seed; case `i` draws from [`Budget::case_rng`].
    pub seed: u64,
}

impl Budget {
    /// The budget from the environment, else `default_cases` within `default_time`.
    pub fn from_env(default_cases: u64, default_time: Duration) -> Budget {
        let cases = env_u64("TWINFS_FUZZ_CASES");
        let max_time = match (env_u64("TWINFS_FUZZ_SECS"), cases) {
            (Some(s), _) => Some(Duration::from_secs(s)),
            (None, None) => Some(default_time),
            (None, Some(_)) => None,
        };
        let seed = env_u64("TWINFS_FUZZ_SEED").unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            mix(t.as_nanos() as u64 ^ u64::from(std::process::id()))
        });
        Budget {
            max_cases: cases.unwrap_or(default_cases),
            max_time,
            seed,
        }
    }

    /// Case `case`'s own generator: independent of the cases before it, so
    /// one case replays alone.
    pub fn case_rng(&self, case: u64) -> Rng {
        Rng(mix(self.seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    /// Runs `case` for each case of the budget (each with its own generator)
    /// until a limit is reached, and returns how many ran. A case that returns
    /// `Err(why)` panics with `why`, the seed and the command that replays it
    /// (`replay`, e.g. `cargo test -p twinfs-fs fuzz`). Prints the seed first
    /// and the count at the end, under `name`.
    pub fn run(
        &self,
        name: &str,
        replay: &str,
        mut case: impl FnMut(&mut Rng) -> Result<(), String>,
    ) -> u64 {
        let seed = self.seed;
        eprintln!("fuzz {name}: seed {seed:#x} (TWINFS_FUZZ_SEED={seed:#x} replays this run)");
        let started = Instant::now();
        let mut run = 0;
        while run < self.max_cases {
            if run % 256 == 0 && self.max_time.is_some_and(|t| started.elapsed() >= t) {
                break;
            }
            if let Err(why) = case(&mut self.case_rng(run)) {
                panic!(
                    "fuzz {name}: case {run} of seed {seed:#x}: {why}\nreplay: \
                     TWINFS_FUZZ_SEED={seed:#x} TWINFS_FUZZ_CASES={} {replay}",
                    run + 1
                );
            }
            run += 1;
        }
        let limit = if run < self.max_cases {
            "time limit"
        } else {
            "case limit"
        };
        eprintln!(
            "fuzz {name}: {run} cases in {:.1?} ({limit})",
            started.elapsed()
        );
        run
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

/// Byte values at the edges of what decoders read (varint continuation,
/// signs, JSON quoting).
pub const INTERESTING: [u8; 12] = [0, 1, 2, 0x7f, 0x80, 0x81, 0xfe, 0xff, b'"', b'\\', b',', 13];

/// One byte-level change to `buf`, as a broken or hostile peer would make it:
/// a flipped bit, a boundary byte, a truncation, a random tail, an inserted
/// string from `inserts` (huge varints, stray tokens), a removed or inserted
/// byte, or a splice with another input of `corpus`.
pub fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, corpus: &[Vec<u8>], inserts: &[&[u8]]) {
    let len = buf.len();
    match rng.below(9) {
        0 if len > 0 => {
            let at = rng.below(len);
            buf[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            buf[at] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 => buf.truncate(rng.below(len + 1)),
        3 => buf.extend((0..1 + rng.below(64)).map(|_| rng.next_u64() as u8)),
        4 | 5 if !inserts.is_empty() => {
            let at = rng.below(len + 1);
            let v = inserts[rng.below(inserts.len())];
            buf.splice(at..at, v.iter().copied());
        }
        6 if len > 0 => {
            buf.remove(rng.below(len));
        }
        7 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())];
            let (a, b) = (rng.below(len + 1), rng.below(other.len() + 1));
            buf.truncate(a);
            buf.extend_from_slice(&other[b..]);
        }
        _ => {
            let at = rng.below(len + 1);
            buf.insert(at, rng.next_u64() as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_replays_from_the_seed_and_its_index_alone() {
        let b = Budget {
            max_cases: 10,
            max_time: None,
            seed: 42,
        };
        let mut seen = Vec::new();
        assert_eq!(
            b.run("t", "-", |rng| {
                seen.push(rng.next_u64());
                Ok(())
            }),
            10
        );
        assert_eq!(b.case_rng(7).next_u64(), seen[7]);
        let mut buf = b"hello".to_vec();
        for i in 0..1000 {
            mutate(&mut b.case_rng(i), &mut buf, &[b"xyz".to_vec()], &[b"\""]);
            buf.truncate(64);
        }
    }
}
