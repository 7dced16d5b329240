//! Bounded mutational fuzzing of the decoders the node runs on a peer's
//! payloads (issue 13): verify requests and answers (postcard), resync key
//! lists (postcard) and split-brain reports (JSON). Mutations, resync chunks
//! and repairs are `Mutation::from_wire`, fuzzed in `twinfs-fs`; the frames
//! around all of them are fuzzed in `twinfs-replicator-proto`.
//!
//! Each target has a corpus of valid encodings, mutated at the byte level the
//! way a hostile peer would: bit flips, boundary bytes, truncation, random
//! tails, inserted or removed bytes, huge varints (lengths and counts that
//! claim far more than the input holds), splices, and for JSON stray quotes,
//! escapes, brackets and huge numbers. The oracle: the decoder never panics,
//! is deterministic, accepts the corpus, and a decoded value holds no more
//! than the bytes that arrived (each string, key and hash came from input
//! bytes), so a peer cannot make one larger than its frame. While decoding,
//! postcard and serde_json preallocate at most serde's cautious bound (1 MiB)
//! whatever length a sequence claims, and serde_json stops nesting at 128.
//!
//! Budget: `TWINFS_FUZZ_CASES` cases per target (default 50,000) and, unless
//! it is set, at most 2 s per target (`TWINFS_FUZZ_SECS` sets it). Seed:
//! `TWINFS_FUZZ_SEED`, else the clock; a failure names the case to replay.

use super::resync::{parse_keys, postcard_vec};
use super::splitbrain::{parse_report, Report};
use std::time::Duration;
use twinfs_fs::store::RecordDigest;
use twinfs_fs::{Ino, StoreKey};
use twinfs_replicator_proto::fuzzing::{mutate, Budget};
use twinfs_replicator_proto::node::verify::{VerifyAnswer as Answer, VerifyRequest as Request};

/// Byte strings a mutation may insert: huge varints, JSON tokens.
const INSERTS: [&[u8]; 12] = [
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
    &[0x80, 0x80, 0x40],
    b"\"",
    b"\\u",
    b"\\ud800",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"1e999999999",
    b"{\"node\":",
    b",\"\"",
    &[0xc3],
];

/// One decoder under test: its corpus, and a check that decodes an input and
/// returns whether it decoded, or which promise it broke.
struct Target {
    name: &'static str,
    corpus: Vec<Vec<u8>>,
    check: fn(&[u8]) -> Result<bool, String>,
}

/// The common part of every check: deterministic, and what decoded holds at
/// most the input's bytes.
fn judge<T: PartialEq + std::fmt::Debug, E>(
    input: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, E>,
    held: impl Fn(&T) -> usize,
) -> Result<bool, String> {
    let got = decode(input).ok();
    if decode(input).ok() != got {
        return Err("not deterministic".into());
    }
    match got {
        Some(v) if held(&v) > input.len() => Err(format!(
            "{v:?} holds {} bytes from {} bytes of input",
            held(&v),
            input.len()
        )),
        Some(_) => Ok(true),
        None => Ok(false),
    }
}

fn keys_held(keys: &[StoreKey]) -> usize {
    keys.iter()
        .map(|k| {
            1 + match k {
                StoreKey::Dirent(_, name) | StoreKey::Xattr(_, name) => name.len(),
                _ => 0,
            }
        })
        .sum()
}

fn targets() -> Vec<Target> {
    let request = |boundaries: Vec<Vec<u8>>| {
        let hashes = boundaries.iter().map(|b| [b.len() as u8; 32]).collect();
        postcard::to_allocvec(&Request {
            id: 7,
            boundaries,
            hashes,
        })
        .expect("serialises")
    };
    let answer = |differing: Vec<(u32, Vec<RecordDigest>)>| {
        postcard::to_allocvec(&Answer {
            id: u64::MAX,
            records: 300,
            differing,
        })
        .expect("serialises")
    };
    let report = |node: &str, files: &[&str]| {
        serde_json::to_vec(&Report {
            node: node.into(),
            changed_files: files.iter().map(|f| f.to_string()).collect(),
        })
        .expect("serialises")
    };
    let all_keys = vec![
        StoreKey::Inode(Ino(1)),
        StoreKey::Dirent(Ino(1), b"a file".to_vec()),
        StoreKey::Trunc(Ino(2), u64::MAX),
        StoreKey::Block(Ino(2), 3),
        StoreKey::Xattr(Ino(2), b"user.k".to_vec()),
        StoreKey::Orphan(Ino(u64::MAX)),
        StoreKey::NextIno,
        StoreKey::All,
    ];
    vec![
        Target {
            name: "verify request",
            corpus: vec![
                request(vec![Vec::new()]),
                request(vec![Vec::new(), b"a".to_vec(), b"b\xff".to_vec()]),
                request((0..40u8).map(|i| vec![i; i as usize]).collect()),
            ],
            check: |input| {
                judge(input, Request::parse, |r: &Request| {
                    r.boundaries.iter().map(|b| b.len() + 1).sum::<usize>() + 32 * r.hashes.len()
                })
            },
        },
        Target {
            name: "verify answer",
            corpus: vec![
                answer(Vec::new()),
                answer(vec![(0, Vec::new())]),
                answer(vec![
                    (
                        3,
                        vec![(b"key".to_vec(), [1; 32]), (Vec::new(), [0xff; 32])],
                    ),
                    (u32::MAX, vec![(vec![9; 100], [2; 32])]),
                ]),
            ],
            check: |input| {
                judge(input, Answer::parse, |a: &Answer| {
                    a.differing
                        .iter()
                        .map(|(_, d)| 2 + d.iter().map(|(k, _)| k.len() + 33).sum::<usize>())
                        .sum()
                })
            },
        },
        Target {
            name: "resync keys",
            corpus: vec![
                postcard_vec(&[]),
                postcard_vec(&all_keys),
                postcard_vec(&all_keys[1..2]),
            ],
            check: |input| judge(input, parse_keys, |k: &Vec<StoreKey>| keys_held(k)),
        },
        Target {
            name: "split-brain report",
            corpus: vec![
                report("", &[]),
                report("alpha", &["/a", "/dir/b c"]),
                report(
                    "n\u{e9}ud \u{1f980}",
                    &["<inode 5, unlinked>", "\"quoted\"\n"],
                ),
            ],
            check: |input| {
                judge(input, parse_report, |r: &Report| {
                    r.node.len() + r.changed_files.iter().map(|f| f.len() + 1).sum::<usize>()
                })
            },
        },
    ]
}

#[test]
fn fuzz_peer_payload_decoders() {
    let budget = Budget::from_env(50_000, Duration::from_secs(2));
    for t in targets() {
        for (i, input) in t.corpus.iter().enumerate() {
            assert_eq!((t.check)(input), Ok(true), "{} corpus entry {i}", t.name);
        }
        let mut decoded = 0u64;
        let run = budget.run(t.name, "cargo test -p twinfs-replicator fuzz_peer", |rng| {
            let mut buf = t.corpus[rng.below(t.corpus.len())].clone();
            for _ in 0..1 + rng.below(3) {
                mutate(rng, &mut buf, &t.corpus, &INSERTS);
            }
            let ok = (t.check)(&buf).map_err(|why| format!("{why}\ninput: {buf:02x?}"))?;
            decoded += u64::from(ok);
            Ok(())
        });
        // The mutations must leave some inputs decodable, or only the first
        // byte's checks are exercised.
        if run >= 10_000 {
            assert!(
                decoded * 500 >= run,
                "{}: only {decoded} of {run} decoded",
                t.name
            );
        }
    }
}
