//! Structure-aware mutational fuzzing of [`Mutation::from_wire`], which
//! decodes every mutation, resync chunk and repair a peer sends (issue 13).
//!
//! A corpus of valid records (every op kind, empty and large blocks, long
//! names) is mutated the way a broken or hostile peer would: bit flips, bytes
//! set to boundary values, truncation, random tails, splices of two records,
//! the header's lengths and flags set to extreme values, block bytes changed,
//! and, because a changed byte in the ops fails the header hash long before
//! the op decoder sees it, changes to the serialised ops followed by a
//! *re-seal* (lengths and hash recomputed), so the postcard decoder and the
//! block checks behind the hash get hostile input too: huge varint lengths,
//! unknown enum tags, random op bytes. The oracle:
//!
//! - `from_wire` never panics and is deterministic;
//! - a valid record decodes;
//! - what decodes re-encodes to bytes that decode to the same mutation, has
//!   the header's seq, and holds no more than the bytes that arrived (every
//!   name, value and block, and every op, came from input bytes): a peer
//!   cannot make the decoded value larger than its frame. While decoding,
//!   postcard's sequences preallocate at most serde's cautious bound (1 MiB)
//!   whatever length they claim, and block bytes are taken only after their
//!   length was checked against the bytes present.
//!
//! Budget: `TWINFS_FUZZ_CASES` cases (default 50,000) and, unless it is set,
//! at most 5 s (`TWINFS_FUZZ_SECS` sets the time). Seed: `TWINFS_FUZZ_SEED`
//! (decimal or `0x` hex), else the clock; a failure names the case to replay.

use super::*;
use crate::types::{FileKind, Timestamp};
use std::time::Duration;
use twinfs_replicator_proto::fuzzing::{self, Budget, Rng};

fn corpus() -> Vec<Vec<u8>> {
    let inode = Inode::new(FileKind::File, 0o644, 1, 2, Timestamp::default());
    let entry = DirEntry {
        ino: Ino(7),
        kind: FileKind::Dir,
        cookie: u64::MAX,
    };
    let every_op: Vec<Op> = vec![
        Op::PutInode(Ino(2), inode),
        Op::DelInode(Ino(3)),
        Op::PutDirent {
            parent: Ino(1),
            name: b"name".to_vec(),
            entry,
        },
        Op::DelDirent {
            parent: Ino(1),
            name: vec![0xff; 255],
            cookie: 9,
        },
        Op::PutBlock {
            ino: Ino(2),
            idx: 0,
            data: b"hello".to_vec(),
        },
        Op::PutBlock {
            ino: Ino(2),
            idx: u64::MAX,
            data: Vec::new(),
        },
        Op::TruncBlocks {
            ino: Ino(2),
            from: 1,
        },
        Op::PutXattr {
            ino: Ino(2),
            name: b"user.x".to_vec(),
            value: vec![1; 300],
        },
        Op::DelXattr {
            ino: Ino(2),
            name: b"user.y".to_vec(),
        },
        Op::NextIno(u64::MAX),
        Op::PutOrphan(Ino(4)),
        Op::DelOrphan(Ino(4)),
        Op::DelBlock {
            ino: Ino(2),
            idx: 5,
        },
        Op::Wipe,
    ];
    let mut records: Vec<Vec<u8>> = [
        Vec::new(),
        every_op.clone(),
        vec![Op::PutBlock {
            ino: Ino(9),
            idx: 3,
            data: (0..=255).cycle().take(4096).collect(),
        }],
    ]
    .into_iter()
    .enumerate()
    .map(|(i, ops)| {
        Mutation {
            seq: Seq(i as u64 * 1000 + 1),
            ops,
        }
        .to_wire()
    })
    .collect();
    // One record per op kind: short records whose every byte matters.
    records.extend(every_op.into_iter().map(|op| {
        Mutation {
            seq: Seq(u64::MAX),
            ops: vec![op],
        }
        .to_wire()
    }));
    records
}

/// Recomputes a record's lengths and hash for the bytes it has, taking
/// `meta_len` bytes after the header as the ops, so a changed op passes the
/// hash and reaches the decoder. Does nothing to a buffer without a header.
fn reseal(buf: &mut [u8], meta_len: usize) {
    if buf.len() < HEADER_LEN {
        return;
    }
    let meta_len = meta_len.min(buf.len() - HEADER_LEN);
    let payload_len = buf.len() - HEADER_LEN - meta_len;
    let seq = Seq(u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")));
    let flags = u16::from_le_bytes([buf[6], buf[7]]);
    let prefix = RecordHeader::prefix(seq, flags, meta_len as u32, payload_len as u32);
    buf[..24].copy_from_slice(&prefix);
    let mut h = blake3::Hasher::new();
    h.update(&prefix);
    h.update(&buf[HEADER_LEN..HEADER_LEN + meta_len]);
    buf[24..56].copy_from_slice(h.finalize().as_bytes());
}

fn meta_len(buf: &[u8]) -> usize {
    buf.get(16..20).map_or(0, |b| {
        u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
    })
}

/// Varints claiming huge lengths or values (postcard: 7 bits a byte).
const HUGE_VARINTS: [&[u8]; 4] = [
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[
        0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
    ],
    &[0x80, 0x80, 0x40],
];

/// Applies one mutation to `buf`.
fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = buf.len();
    let meta = meta_len(buf).min(len.saturating_sub(HEADER_LEN));
    let in_meta = |rng: &mut Rng| HEADER_LEN + rng.below(meta.max(1));
    match rng.below(12) {
        // Byte-level changes a broken peer makes anywhere.
        0..=4 => fuzzing::mutate(rng, buf, corpus, &HUGE_VARINTS),
        5 if len >= HEADER_LEN => {
            // A length field to an extreme value, sealed or not.
            let at = if rng.below(2) == 0 { 16 } else { 20 };
            let v: u32 = [
                0,
                1,
                u32::MAX,
                MAX_META_LEN,
                MAX_META_LEN + 1,
                MAX_PAYLOAD_LEN,
            ][rng.below(6)];
            buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
            if rng.below(2) == 0 {
                let mut p = [0u8; 24];
                p.copy_from_slice(&buf[..24]);
                let mut h = blake3::Hasher::new();
                h.update(&p);
                h.update(&buf[HEADER_LEN..HEADER_LEN + meta]);
                buf[24..56].copy_from_slice(h.finalize().as_bytes());
            }
        }
        6 if len >= HEADER_LEN => {
            // Flags: local, jump, unknown bits.
            let f: u16 = [RECORD_LOCAL, RECORD_JUMP, 4, 0x8000][rng.below(4)];
            buf[6..8].copy_from_slice(&f.to_le_bytes());
            reseal(buf, meta);
        }
        7 if len > HEADER_LEN + meta => {
            // Block bytes: the digest no longer matches.
            let at = HEADER_LEN + meta + rng.below(len - HEADER_LEN - meta);
            buf[at] = buf[at].wrapping_add(1);
        }
        8 if len >= HEADER_LEN => {
            // One op byte changed, then sealed: the op decoder sees it.
            let at = in_meta(rng);
            if at < len {
                buf[at] = if rng.below(2) == 0 {
                    fuzzing::INTERESTING[rng.below(fuzzing::INTERESTING.len())]
                } else {
                    rng.next_u64() as u8
                };
            }
            reseal(buf, meta);
        }
        9 if len >= HEADER_LEN => {
            // A huge varint inserted among the ops (a length, a tag, a count).
            let at = in_meta(rng).min(len);
            let v = HUGE_VARINTS[rng.below(HUGE_VARINTS.len())];
            buf.splice(at..at, v.iter().copied());
            reseal(buf, meta + v.len());
        }
        10 if len >= HEADER_LEN => {
            // An op byte removed or added: every later field shifts.
            let at = in_meta(rng).min(len);
            let meta = if rng.below(2) == 0 && at < len && meta > 0 {
                buf.remove(at);
                meta - 1
            } else {
                buf.insert(at, rng.next_u64() as u8);
                meta + 1
            };
            reseal(buf, meta);
        }
        _ if len >= HEADER_LEN => {
            // Random ops of a random length, sealed.
            let n = rng.below(64);
            let tail = buf.split_off(HEADER_LEN + meta.min(len - HEADER_LEN));
            buf.truncate(HEADER_LEN);
            buf.extend((0..n).map(|_| rng.next_u64() as u8));
            buf.extend_from_slice(&tail);
            reseal(buf, n);
        }
        _ => buf.extend_from_slice(&corpus[rng.below(corpus.len())]),
    }
}

/// Bytes a decoded mutation holds beyond its fixed parts, plus one per op.
fn held(m: &Mutation) -> usize {
    m.ops
        .iter()
        .map(|op| {
            1 + match op {
                Op::PutDirent { name, .. }
                | Op::DelDirent { name, .. }
                | Op::DelXattr { name, .. } => name.len(),
                Op::PutBlock { data, .. } => data.len(),
                Op::PutXattr { name, value, .. } => name.len() + value.len(),
                _ => 0,
            }
        })
        .sum()
}

fn check(input: &[u8]) -> Result<bool, String> {
    let got = Mutation::from_wire(input);
    if Mutation::from_wire(input) != got {
        return Err("not deterministic".into());
    }
    let Some(m) = got else {
        return Ok(false);
    };
    let again = m.to_wire();
    if Mutation::from_wire(&again).as_ref() != Some(&m) {
        return Err(format!("{m:?} does not round-trip"));
    }
    let seq = u64::from_le_bytes(input[8..16].try_into().expect("a record has a header"));
    if m.seq != Seq(seq) {
        return Err(format!(
            "seq {} decoded from a header saying {seq}",
            m.seq.0
        ));
    }
    if held(&m) > input.len() {
        return Err(format!(
            "decoded value holds {} bytes from {} bytes of input",
            held(&m),
            input.len()
        ));
    }
    Ok(true)
}

#[test]
fn fuzz_mutation_from_wire() {
    let budget = Budget::from_env(50_000, Duration::from_secs(5));
    let corpus = corpus();
    for (i, r) in corpus.iter().enumerate() {
        assert!(
            Mutation::from_wire(r).is_some(),
            "corpus record {i} refused"
        );
    }
    let mut decoded = 0u64;
    let run = budget.run("from_wire", "cargo test -p twinfs-fs fuzz", |rng| {
        let mut buf = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(3) {
            mutate(rng, &mut buf, &corpus);
        }
        decoded += u64::from(check(&buf).map_err(|why| format!("{why}\ninput: {buf:02x?}"))?);
        Ok(())
    });
    // Re-sealing must take inputs past the hash into the decoder.
    if run >= 10_000 {
        assert!(decoded * 200 >= run, "only {decoded} of {run} decoded");
    }
}
