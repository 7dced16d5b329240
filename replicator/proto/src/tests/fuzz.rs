//! Structure-aware mutational fuzzing of the frame decoder, [`Frame::decode`].
//!
//! A corpus of valid encoded frames of every type and edge values
//! ([`MAKERS`] x [`knobs`]) is mutated the way a broken or hostile peer would:
//! bit flips, bytes set to interesting values, truncation, random tails,
//! splices of two frames, the length field set to interesting values (with or
//! without a body to match), other type and version bytes, fields overwritten
//! with extreme numbers, enum bytes set to small values, broken UTF-8 in text.
//! Each input is checked against an oracle that knows the header rules and a
//! little about bodies (see [`check`]):
//!
//! - decode never panics and is deterministic;
//! - `Ok(Some((f, used)))`: `used` is the header plus the announced body,
//!   `used <= input.len()`, and `f` re-encodes to exactly `input[..used]`
//!   (the encoding is canonical), which also means that the frame holds no
//!   more than the bytes that were there; bytes after `used` change nothing;
//! - a strict prefix of a whole frame is `Ok(None)`;
//! - a bad magic, a wrong version, an unknown type and an announced length
//!   above [`MAX_BODY_LEN`] give exactly that error, as soon as the offending
//!   header byte is there (before the body arrives);
//! - body errors name the frame's own type and are consistent with the body
//!   length: `Truncated` only below the type's fixed fields, `TrailingBytes`
//!   only above a fixed-size type's size, with the right counts.
//!
//! What cannot be observed here: how much `decode` allocates. The crate
//! forbids `unsafe`, so a counting global allocator is out; the canonical
//! re-encoding above is the observable part (a decoded frame is made of bytes
//! that arrived), and `decode` reads the announced length only to compare it
//! with the cap and with the bytes present.
//!
//! Budget: `TWINFS_FUZZ_CASES` cases (default 200,000) and, unless
//! `TWINFS_FUZZ_CASES` is set, at most 10 s of wall time (`TWINFS_FUZZ_SECS`
//! sets it explicitly). Seed: `TWINFS_FUZZ_SEED` (decimal or `0x` hex), else
//! the clock. Every case uses its own RNG derived from the seed and its index,
//! so a failure message names the one case to replay. Run with `--nocapture` to
//! see the seed, the cases run and the outcome counts.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::util::Rng;
use crate::{
    DiskState, Frame, FrameError, Generation, Hello, Role, Seq, FRAME_VERSION, HEADER_LEN, MAGIC,
    MAX_BODY_LEN, MAX_PAYLOAD_LEN,
};

/// The values one corpus frame is built from; [`knobs`] lists the edge cases.
struct Knobs {
    /// Numbers for the integer fields (seqs, generations, times, counts).
    n: [u64; 4],
    /// Text for string fields (names, reasons).
    text: String,
    /// Bytes for opaque fields (payloads).
    bytes: Vec<u8>,
    /// A flag, and an index for enum fields (taken modulo the enum's size).
    flag: bool,
    pick: usize,
}

const ROLES: [Role; 2] = [Role::Primary, Role::Secondary];
const DISKS: [DiskState; 4] = [
    DiskState::UpToDate,
    DiskState::Outdated,
    DiskState::Inconsistent,
    DiskState::Diskless,
];

/// One entry per frame variant: builds an example from a set of knobs. A new
/// `Frame` variant is one more entry here (the fuzz test fails, naming the type
/// byte, while one is missing).
const MAKERS: &[fn(&Knobs) -> Frame] = &[
    |k| {
        Frame::Hello(Hello {
            version: k.n[0] as u16,
            node: k.text.clone(),
            generation: Generation(k.n[1]),
            last_applied: Seq(k.n[2]),
            role: ROLES[k.pick % ROLES.len()],
            disk: DISKS[k.pick % DISKS.len()],
            shared: Generation(k.n[3]),
            changed_blocks: k.n[0],
            primary_since_ms: k.n[1],
            floor: Seq(k.n[2]),
        })
    },
    |k| Frame::Mutation {
        seq: Seq(k.n[0]),
        flush: k.flag,
        payload: k.bytes.clone().into(),
    },
    |k| Frame::Ack {
        received: Seq(k.n[0]),
        applied: Seq(k.n[1]),
        flushed: Seq(k.n[2]),
    },
    |k| Frame::Heartbeat { now_ms: k.n[0] },
    |k| Frame::Flush { seq: Seq(k.n[0]) },
    |k| Frame::ResyncRequest { floor: Seq(k.n[0]) },
    |k| Frame::ResyncKeys {
        last: k.flag,
        known: k.pick % 2 == 0,
        payload: k.bytes.clone(),
    },
    |k| Frame::ResyncData {
        payload: k.bytes.clone(),
    },
    |k| Frame::Report {
        payload: k.bytes.clone(),
    },
    |k| Frame::VerifyRequest {
        payload: k.bytes.clone(),
    },
    |k| Frame::VerifyResponse {
        payload: k.bytes.clone(),
    },
    |k| Frame::Repair {
        payload: k.bytes.clone(),
    },
    |k| Frame::ResyncDone {
        position: Seq(k.n[0]),
        consistent_at: Seq(k.n[1]),
        generation: Generation(k.n[2]),
    },
    |k| Frame::Goodbye {
        reason: k.text.clone(),
    },
];

/// The edge cases every maker is fed. The first has empty text and bytes, so
/// the corpus holds each type's smallest body (the oracle relies on that).
fn knobs() -> Vec<Knobs> {
    let text = |n: usize| "x".repeat(n);
    vec![
        Knobs {
            n: [0; 4],
            text: String::new(),
            bytes: Vec::new(),
            flag: false,
            pick: 0,
        },
        Knobs {
            n: [u64::MAX; 4],
            text: "node-a".into(),
            bytes: b"hello world".to_vec(),
            flag: true,
            pick: 1,
        },
        Knobs {
            n: [1, u64::MAX - 1, 1 << 63, (1 << 63) - 1],
            // Two-, three- and four-byte characters: cuts and flips break them.
            text: "shutting down: ünïcodé ✓ 🦀".into(),
            bytes: vec![0xff; 300],
            flag: false,
            pick: 2,
        },
        Knobs {
            n: [0x0102_0304_0506_0708, 42, 0x8000, u32::MAX.into()],
            text: text(4096),
            bytes: (0..=255).cycle().take(5000).collect(),
            flag: true,
            pick: 3,
        },
        Knobs {
            n: [7, 0, 7, 0],
            text: "\0".into(),
            bytes: vec![0],
            flag: false,
            pick: 5,
        },
    ]
}

fn encoded(f: &Frame) -> Vec<u8> {
    let mut buf = Vec::new();
    f.encode(&mut buf);
    buf
}

/// Every corpus frame, with its encoding.
fn corpus() -> Vec<(Frame, Vec<u8>)> {
    let knobs = knobs();
    MAKERS
        .iter()
        .flat_map(|make| knobs.iter().map(make))
        .map(|f| {
            let bytes = encoded(&f);
            (f, bytes)
        })
        .collect()
}

/// What the oracle knows about one frame type, learnt from the corpus.
#[derive(Debug)]
struct TypeInfo {
    /// `Frame::name()` of the type, as body errors report it.
    name: &'static str,
    /// Smallest body in the corpus: the type's fixed fields.
    min: usize,
    /// The body size if every corpus frame of the type has the same one.
    fixed: Option<usize>,
}

/// Type byte -> what the oracle knows, for every type in the corpus.
fn type_table(corpus: &[(Frame, Vec<u8>)]) -> BTreeMap<u8, TypeInfo> {
    let mut table: BTreeMap<u8, TypeInfo> = BTreeMap::new();
    for (f, bytes) in corpus {
        let body = bytes.len() - HEADER_LEN;
        let e = table.entry(bytes[5]).or_insert(TypeInfo {
            name: f.name(),
            min: body,
            fixed: Some(body),
        });
        assert_eq!(
            e.name,
            f.name(),
            "two variants share type byte {}",
            bytes[5]
        );
        e.min = e.min.min(body);
        if e.fixed != Some(body) {
            e.fixed = None;
        }
    }
    table
}

/// Type bytes the decoder accepts: those whose header is not refused as unknown.
fn known_type_bytes() -> Vec<u8> {
    (0..=u8::MAX)
        .filter(|&ty| {
            let mut head = MAGIC.to_vec();
            head.extend([FRAME_VERSION, ty]);
            !matches!(Frame::decode(&head), Err(FrameError::UnknownType { .. }))
        })
        .collect()
}

/// What the header alone says about an input.
#[derive(Debug)]
enum Verdict {
    /// The decoder must return exactly this.
    Exactly(Result<Option<(Frame, usize)>, FrameError>),
    /// A whole header of a known type and a whole body of `len` bytes.
    Body { ty: u8, len: usize },
}

/// The header rules, written out independently of the decoder.
fn judge(input: &[u8], types: &BTreeMap<u8, TypeInfo>) -> Verdict {
    let magic = &input[..input.len().min(MAGIC.len())];
    if magic != &MAGIC[..magic.len()] {
        return Verdict::Exactly(Err(FrameError::BadMagic {
            found: magic.to_vec(),
            expected: MAGIC,
        }));
    }
    match input.get(4) {
        None => return Verdict::Exactly(Ok(None)),
        Some(&found) if found != FRAME_VERSION => {
            return Verdict::Exactly(Err(FrameError::UnsupportedVersion {
                found,
                supported: FRAME_VERSION,
            }))
        }
        Some(_) => {}
    }
    let Some(&ty) = input.get(5) else {
        return Verdict::Exactly(Ok(None));
    };
    if !types.contains_key(&ty) {
        return Verdict::Exactly(Err(FrameError::UnknownType { ty }));
    }
    let Some(len) = input.get(6..HEADER_LEN) else {
        return Verdict::Exactly(Ok(None));
    };
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes"));
    if len as usize > MAX_BODY_LEN {
        return Verdict::Exactly(Err(FrameError::Oversized {
            len: len.into(),
            max: MAX_BODY_LEN as u64,
        }));
    }
    let len = len as usize;
    if input.len() < HEADER_LEN + len {
        return Verdict::Exactly(Ok(None));
    }
    Verdict::Body { ty, len }
}

/// Tallies outcomes, to show (and check) that the fuzzer reaches every path.
#[derive(Default)]
struct Stats {
    outcomes: BTreeMap<&'static str, u64>,
}

impl Stats {
    fn count(&mut self, r: &Result<Option<(Frame, usize)>, FrameError>) {
        *self.outcomes.entry(outcome(r)).or_default() += 1;
    }

    fn get(&self, k: &str) -> u64 {
        self.outcomes.get(k).copied().unwrap_or(0)
    }
}

fn outcome(r: &Result<Option<(Frame, usize)>, FrameError>) -> &'static str {
    match r {
        Ok(Some(_)) => "ok",
        Ok(None) => "incomplete",
        Err(FrameError::BadMagic { .. }) => "bad-magic",
        Err(FrameError::UnsupportedVersion { .. }) => "version",
        Err(FrameError::UnknownType { .. }) => "unknown-type",
        Err(FrameError::Oversized { .. }) => "oversized",
        Err(FrameError::Truncated { .. }) => "truncated",
        Err(FrameError::TrailingBytes { .. }) => "trailing",
        Err(FrameError::InvalidUtf8 { .. }) => "utf8",
        Err(FrameError::InvalidValue { .. }) => "invalid-value",
    }
}

/// Checks every invariant of the module docs for one input; `Err` says which
/// one broke. `corpus` holds the valid encodings, which must decode.
fn check(
    input: &[u8],
    types: &BTreeMap<u8, TypeInfo>,
    corpus: &HashSet<Vec<u8>>,
    rng: &mut Rng,
    stats: &mut Stats,
) -> Result<(), String> {
    let got = Frame::decode(input);
    stats.count(&got);
    if Frame::decode(input) != got {
        return Err("decode is not deterministic".into());
    }
    if let Err(e) = &got {
        let _ = e.to_string(); // Display never panics either
    }
    let (ty, len) = match judge(input, types) {
        Verdict::Exactly(want) => {
            return if got == want {
                Ok(())
            } else {
                Err(format!("header rules say {want:?}, decode says {got:?}"))
            };
        }
        Verdict::Body { ty, len } => (ty, len),
    };
    let info = &types[&ty];
    let end = HEADER_LEN + len;
    // Bytes after the announced body are the next frame's business.
    if end < input.len() && Frame::decode(&input[..end]) != got {
        return Err(format!(
            "bytes after the frame ({}) changed the result",
            input.len() - end
        ));
    }
    match got {
        Ok(Some((f, used))) => {
            if used != end {
                return Err(format!("used {used}, but the header announces {end}"));
            }
            if f.name() != info.name {
                return Err(format!("type byte {ty} decoded as a {} frame", f.name()));
            }
            let again = encoded(&f);
            if again != input[..used] {
                return Err(format!(
                    "not canonical: {f:?} re-encodes to {}",
                    hex(&again)
                ));
            }
            if len < info.min || info.fixed.is_some_and(|n| n != len) {
                return Err(format!("{} body of {len} bytes accepted", info.name));
            }
            // Any strict prefix of a whole frame is incomplete.
            let cut = rng.below(used as u64) as usize;
            let prefix = Frame::decode(&input[..cut]);
            if prefix != Ok(None) {
                return Err(format!("prefix of {cut} bytes: {prefix:?}, not Ok(None)"));
            }
            Ok(())
        }
        Ok(None) => Err("whole header and body, yet Ok(None)".into()),
        Err(e) => {
            if corpus.contains(&input[..end]) {
                return Err(format!("a valid frame was refused: {e}"));
            }
            let frame = match &e {
                FrameError::Truncated { frame, len: l } => {
                    if *l != len || len >= info.min {
                        return Err(format!(
                            "{e:?} for a body of {len} (fixed part {})",
                            info.min
                        ));
                    }
                    frame
                }
                FrameError::TrailingBytes { frame, extra } => {
                    let want = info.fixed.and_then(|n| len.checked_sub(n));
                    if want != Some(*extra) || *extra == 0 {
                        return Err(format!("{e:?} for a body of {len}, size {:?}", info.fixed));
                    }
                    frame
                }
                FrameError::InvalidUtf8 { frame, .. } => {
                    if info.fixed.is_some() {
                        return Err(format!("{e:?} from a fixed-size type"));
                    }
                    frame
                }
                FrameError::InvalidValue { frame, .. } => frame,
                _ => return Err(format!("header error {e:?} for a valid header")),
            };
            if *frame != info.name {
                return Err(format!(
                    "{e:?} names the wrong frame, expected {}",
                    info.name
                ));
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Mutations

/// Byte values that tend to sit on boundaries (and the small enum values).
const INTERESTING_BYTES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 0x7f, 0x80, 0xfe, 0xff];
/// Numbers for 8-byte fields.
const INTERESTING_U64: [u64; 7] = [
    0,
    1,
    u64::MAX,
    u64::MAX - 1,
    1 << 63,
    (1 << 63) - 1,
    1 << 32,
];
/// Byte sequences that are not UTF-8: a lone continuation byte, a lead byte
/// without its continuation, an overlong NUL, a surrogate, a code point above
/// U+10FFFF, and a cut four-byte character.
const BAD_UTF8: [&[u8]; 6] = [
    &[0x80],
    &[0xc3],
    &[0xc0, 0x80],
    &[0xed, 0xa0, 0x80],
    &[0xf4, 0x90, 0x80, 0x80],
    &[0xf0, 0x9f, 0xa6],
];

fn below(rng: &mut Rng, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        rng.below(n as u64) as usize
    }
}

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[below(rng, xs.len())]
}

/// A position in `buf` (which must not be empty), often in the header.
fn position(rng: &mut Rng, buf: &[u8]) -> usize {
    if rng.below(3) == 0 {
        below(rng, buf.len().min(HEADER_LEN))
    } else {
        below(rng, buf.len())
    }
}

/// Sets the length field to the body actually there (if there is a header).
fn fix_len(buf: &mut [u8]) {
    if buf.len() >= HEADER_LEN {
        let body = u32::try_from(buf.len() - HEADER_LEN).unwrap_or(u32::MAX);
        buf[6..HEADER_LEN].copy_from_slice(&body.to_be_bytes());
    }
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// Applies one random mutation to `buf`.
fn mutate_once(rng: &mut Rng, buf: &mut Vec<u8>, corpus: &[Vec<u8>], types: &[u8]) {
    if buf.is_empty() {
        buf.extend_from_slice(pick::<Vec<u8>>(rng, corpus));
        return;
    }
    let body = buf.len().saturating_sub(HEADER_LEN);
    match rng.below(16) {
        0 => {
            let at = position(rng, buf);
            buf[at] ^= 1 << rng.below(8);
        }
        1 => {
            let at = position(rng, buf);
            buf[at] = *pick(rng, &INTERESTING_BYTES);
        }
        2 => buf.truncate(below(rng, buf.len() + 1)),
        3 => {
            let n = 1 + below(rng, 32);
            buf.extend(random_bytes(rng, n));
        }
        4 => {
            // Splice: our head, another frame's tail.
            let other = pick(rng, corpus);
            let (a, b) = (below(rng, buf.len() + 1), below(rng, other.len() + 1));
            buf.truncate(a);
            buf.extend_from_slice(&other[b..]);
        }
        5 => buf.extend_from_slice(pick::<Vec<u8>>(rng, corpus)), // two frames back to back
        6 | 7 => {
            // The length field, to an interesting value; the body stays.
            if buf.len() < HEADER_LEN {
                buf.resize(HEADER_LEN, 0);
            }
            let actual = body as u32;
            let choices = [
                0,
                1,
                actual.wrapping_sub(1),
                actual + 1,
                MAX_BODY_LEN as u32 - 1,
                MAX_BODY_LEN as u32,
                MAX_BODY_LEN as u32 + 1,
                u32::MAX,
                0x8000_0000,
                rng.next_u64() as u32,
                rng.below(64) as u32,
            ];
            let len = *pick(rng, &choices);
            buf[6..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        }
        8 => {
            // A body of another size, with the length field to match.
            if buf.len() < HEADER_LEN {
                buf.resize(HEADER_LEN, 0);
            }
            let n = match rng.below(3) {
                0 => body.saturating_sub(1 + below(rng, 8)),
                1 => body + 1 + below(rng, 8),
                _ => below(rng, 64),
            };
            let fill = rng.next_u64() as u8;
            buf.resize(HEADER_LEN + n, fill);
            fix_len(buf);
        }
        9 => {
            // Another type byte: mostly a known one, so another type's parser
            // reads this body.
            if buf.len() > 5 {
                buf[5] = if rng.below(4) == 0 {
                    rng.next_u64() as u8
                } else {
                    *pick(rng, types)
                };
            }
        }
        10 => {
            if buf.len() > 4 {
                buf[4] = if rng.below(2) == 0 {
                    FRAME_VERSION.wrapping_add(1 + rng.below(3) as u8)
                } else {
                    rng.next_u64() as u8
                };
            }
        }
        11 => {
            // An 8-byte field to an extreme number.
            if body >= 8 {
                let at = HEADER_LEN + below(rng, body - 7);
                let v = *pick(rng, &INTERESTING_U64);
                buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
            }
        }
        12 => {
            // An enum or flags byte to another small value. Bytes holding 1 to
            // 8 in the fixed fields probably are such bytes: pick one of those.
            let head = &buf[HEADER_LEN.min(buf.len())..buf.len().min(HEADER_LEN + 64)];
            let small: Vec<usize> = (0..head.len())
                .filter(|&i| (1..=8).contains(&head[i]))
                .collect();
            if !small.is_empty() {
                let at = HEADER_LEN + *pick(rng, &small);
                buf[at] = rng.below(17) as u8;
            }
        }
        13 => {
            // Arithmetic: a byte up or down by a little (counts, enums, lengths).
            let at = position(rng, buf);
            let delta = 1 + rng.below(8) as u8;
            buf[at] = if rng.below(2) == 0 {
                buf[at].wrapping_add(delta)
            } else {
                buf[at].wrapping_sub(delta)
            };
        }
        14 => {
            // Insert or delete one body byte: shifts every later field.
            if body > 0 && rng.below(2) == 0 {
                buf.remove(HEADER_LEN + below(rng, body));
            } else if buf.len() >= HEADER_LEN {
                let at = HEADER_LEN + below(rng, body + 1);
                buf.insert(at, rng.next_u64() as u8);
            }
            fix_len(buf);
        }
        _ => {
            // Broken UTF-8, mostly near the end where the text fields are.
            if buf.len() >= HEADER_LEN {
                let at = if rng.below(2) == 0 {
                    buf.len()
                } else {
                    HEADER_LEN + below(rng, body + 1)
                };
                let bad = *pick(rng, &BAD_UTF8);
                buf.splice(at..at, bad.iter().copied());
                fix_len(buf);
            }
        }
    }
}

/// One fuzz input: a corpus frame (or a prefix of one), mutated 0 to 4 times.
fn generate(rng: &mut Rng, corpus: &[Vec<u8>], types: &[u8]) -> Vec<u8> {
    let mut buf = pick(rng, corpus).clone();
    let rounds = match rng.below(16) {
        0 => 0,
        1 => {
            buf.truncate(below(rng, buf.len()));
            0
        }
        2..=9 => 1,
        10..=13 => 2,
        _ => 3 + rng.below(2),
    };
    for _ in 0..rounds {
        mutate_once(rng, &mut buf, corpus, types);
    }
    buf
}

// ---------------------------------------------------------------------------
// Budget and seed

fn hex(b: &[u8]) -> String {
    const SHOWN: usize = 256;
    let mut s: String = b.iter().take(SHOWN).map(|x| format!("{x:02x}")).collect();
    if b.len() > SHOWN {
        s += &format!("... ({} bytes)", b.len());
    }
    s
}

#[test]
fn fuzz_frame_decoder() {
    let budget = crate::fuzzing::Budget::from_env(200_000, Duration::from_secs(10));
    let corpus = corpus();
    let types = type_table(&corpus);
    let known = known_type_bytes();
    for ty in &known {
        assert!(
            types.contains_key(ty),
            "the decoder knows frame type {ty}, but the fuzz corpus has no frame of it: \
             add its variant to MAKERS"
        );
    }
    let type_bytes: Vec<u8> = types.keys().copied().collect();
    assert_eq!(type_bytes, known, "corpus types vs the decoder's");
    let bytes: Vec<Vec<u8>> = corpus.iter().map(|(_, b)| b.clone()).collect();
    let valid: HashSet<Vec<u8>> = bytes.iter().cloned().collect();

    let mut stats = Stats::default();
    let replay = "cargo test -p twinfs-replicator-proto fuzz";
    let run = budget.run("frames", replay, |case| {
        let mut rng = Rng::new(case.next_u64());
        let input = generate(&mut rng, &bytes, &type_bytes);
        check(&input, &types, &valid, &mut rng, &mut stats)
            .map_err(|why| format!("{why}\ninput: {}", hex(&input)))
    });
    eprintln!("fuzz frames: outcomes {:?}", stats.outcomes);
    // The generator must reach every path, not just the first header check.
    if run >= 20_000 {
        for k in [
            "ok",
            "incomplete",
            "bad-magic",
            "version",
            "unknown-type",
            "oversized",
            "truncated",
            "trailing",
            "utf8",
            "invalid-value",
        ] {
            assert!(
                stats.get(k) * 500 >= run,
                "fewer than 1 in 500 cases end as {k}: {:?}",
                stats.outcomes
            );
        }
    }
}

/// The corpus itself: every frame round-trips, and each of its strict
/// prefixes (one byte at a time, as a slow peer delivers it) is incomplete.
#[test]
fn fuzz_corpus_round_trips_and_prefixes_are_incomplete() {
    for (f, bytes) in corpus() {
        assert_eq!(Frame::decode(&bytes), Ok(Some((f.clone(), bytes.len()))));
        for n in 0..bytes.len() {
            assert_eq!(Frame::decode(&bytes[..n]), Ok(None), "{f:?} cut at {n}");
        }
    }
}

/// Frames at the size limit: a Hello whose name, a Goodbye whose reason and a
/// Mutation whose payload fill the body to exactly `MAX_BODY_LEN` decode; one
/// more byte is refused from the header alone.
#[test]
fn fuzz_largest_frames_decode_and_one_byte_more_is_refused() {
    let empty = knobs().swap_remove(0);
    let fixed = |make: fn(&Knobs) -> Frame| encoded(&make(&empty)).len() - HEADER_LEN;
    let maker = |name: &str| {
        *MAKERS
            .iter()
            .find(|make| make(&empty).name() == name)
            .unwrap_or_else(|| panic!("no {name} maker"))
    };
    let (hello, mutation, goodbye) = (maker("hello"), maker("mutation"), maker("goodbye"));
    let huge = |n: usize| Knobs {
        text: "n".repeat(n),
        bytes: vec![0xa5; n],
        ..knobs().swap_remove(1)
    };
    assert_eq!(fixed(mutation), MAX_BODY_LEN - MAX_PAYLOAD_LEN);
    for make in [hello, mutation, goodbye] {
        let f = make(&huge(MAX_BODY_LEN - fixed(make)));
        let mut buf = encoded(&f);
        assert_eq!(buf.len(), HEADER_LEN + MAX_BODY_LEN, "{}", f.name());
        assert_eq!(Frame::decode(&buf), Ok(Some((f.clone(), buf.len()))));
        for cut in [HEADER_LEN, buf.len() / 2, buf.len() - 1] {
            assert_eq!(Frame::decode(&buf[..cut]), Ok(None), "{} cut", f.name());
        }
        // One more byte, announced: refused before it arrives.
        buf.push(b'n');
        buf[6..HEADER_LEN].copy_from_slice(&(MAX_BODY_LEN as u32 + 1).to_be_bytes());
        let oversized = Err(FrameError::Oversized {
            len: MAX_BODY_LEN as u64 + 1,
            max: MAX_BODY_LEN as u64,
        });
        assert_eq!(Frame::decode(&buf[..HEADER_LEN]), oversized);
        assert_eq!(Frame::decode(&buf), oversized);
    }
}
