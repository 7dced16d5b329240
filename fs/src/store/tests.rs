//! Contract tests for [`Store`] implementations.

use super::*;
use crate::mutation::{Op, StoreKey};
use crate::types::{FileKind, Timestamp};

fn inode() -> Inode {
    Inode::new(FileKind::File, 0o644, 0, 0, Timestamp::default())
}

fn m(seq: u64, ops: Vec<Op>) -> Mutation {
    Mutation { seq: Seq(seq), ops }
}

/// The behaviour every store must have.
fn suite(s: &dyn Store) {
    let f = Ino(2);
    s.apply(&m(
        1,
        vec![
            Op::PutInode(f, inode()),
            Op::PutBlock {
                ino: f,
                idx: 0,
                data: b"abc".to_vec(),
            },
        ],
    ))
    .unwrap();
    assert_eq!(s.last_applied(), Seq(1));
    assert_eq!(s.block(f, 0).unwrap().unwrap(), b"abc");
    assert_eq!(s.block(f, 1).unwrap(), None);
    // Out of order: refused, nothing applied.
    let err = s.apply(&m(3, vec![Op::DelInode(f)])).unwrap_err();
    assert!(
        matches!(err, StoreError::OutOfOrder { last: 1, got: 3 }),
        "{err}"
    );
    assert!(s.inode(f).unwrap().is_some());
    // A range delete in the same batch removes blocks the batch itself wrote.
    s.apply(&m(
        2,
        vec![
            Op::PutBlock {
                ino: f,
                idx: 5,
                data: vec![1; 10],
            },
            Op::PutBlock {
                ino: f,
                idx: 9,
                data: vec![2; 10],
            },
            Op::TruncBlocks { ino: f, from: 6 },
            Op::PutXattr {
                ino: f,
                name: b"user.x".to_vec(),
                value: b"v".to_vec(),
            },
        ],
    ))
    .unwrap();
    assert!(s.block(f, 5).unwrap().is_some());
    assert!(s.block(f, 9).unwrap().is_none());
    assert_eq!(s.xattr_names(f).unwrap(), vec![b"user.x".to_vec()]);
    // Deleting an inode takes its blocks and xattrs with it.
    s.apply(&m(3, vec![Op::DelInode(f)])).unwrap();
    assert!(s.inode(f).unwrap().is_none());
    assert!(s.block(f, 0).unwrap().is_none());
    assert!(s.xattr_names(f).unwrap().is_empty());
    // Directory entries list in cookie order, resumable after any cookie.
    let d = Ino(3);
    let ops = (0..5u64)
        .map(|c| Op::PutDirent {
            parent: d,
            name: format!("n{c}").into_bytes(),
            entry: DirEntry {
                ino: Ino(10 + c),
                kind: FileKind::File,
                cookie: 3 + c,
            },
        })
        .collect();
    s.apply(&m(4, ops)).unwrap();
    let all = s.read_dir(d, 0, 100).unwrap();
    assert_eq!(all.len(), 5);
    let after = s.read_dir(d, 5, 100).unwrap();
    assert_eq!(
        after.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        vec![b"n3".to_vec(), b"n4".to_vec()]
    );
    s.apply(&m(
        5,
        vec![Op::DelDirent {
            parent: d,
            name: b"n3".to_vec(),
            cookie: 6,
        }],
    ))
    .unwrap();
    assert_eq!(s.read_dir(d, 5, 100).unwrap().len(), 1);
    assert!(s.dirent(d, b"n3").unwrap().is_none());
    s.sync().unwrap();
}

#[test]
fn disk_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite(&DiskStore::open(dir.path()).unwrap());
}

#[test]
fn disk_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskStore::open(dir.path()).unwrap();
        s.apply(&m(
            1,
            vec![Op::PutBlock {
                ino: Ino(7),
                idx: 3,
                data: vec![9; 1000],
            }],
        ))
        .unwrap();
    }
    let s = DiskStore::open(dir.path()).unwrap();
    assert_eq!(s.last_applied(), Seq(1));
    assert_eq!(s.block(Ino(7), 3).unwrap().unwrap(), vec![9; 1000]);
}

/// Every file and directory under `dir` (not `dir` itself), with its mode.
fn modes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, bool, u32)> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), m.is_dir(), m.permissions().mode() & 0o7777));
        if m.is_dir() {
            out.extend(modes(&p));
        }
    }
    out
}

/// Issue 13: the store holds every file's data, so its files are 0600 and its
/// directories 0700 whatever the umask (sled's index included).
#[test]
fn store_files_are_private_to_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskStore::open(dir.path()).unwrap();
        s.apply(&m(
            1,
            vec![Op::PutBlock {
                ino: Ino(7),
                idx: 0,
                data: vec![1; 5000],
            }],
        ))
        .unwrap();
        s.sync().unwrap();
    }
    let s = DiskStore::open(dir.path()).unwrap();
    let all = modes(dir.path());
    let names: Vec<String> = all
        .iter()
        .map(|(p, _, _)| p.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    for must in ["LOCK", "store.toml", "log", "meta"] {
        assert!(names.iter().any(|n| n == must), "{must} not in {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("log/seg-")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("meta/")), "{names:?}");
    for (p, is_dir, mode) in &all {
        if *is_dir {
            assert_eq!(
                *mode,
                disk::DIR_MODE,
                "{} is a directory of mode {mode:o}",
                p.display()
            );
        } else {
            assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", p.display());
        }
    }
    for name in ["LOCK", "store.toml"] {
        let (_, _, mode) = all.iter().find(|(p, _, _)| p.ends_with(name)).unwrap();
        assert_eq!(*mode, disk::FILE_MODE, "{name} is mode {mode:o}");
    }
    drop(s);
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn log_records_missing_from_the_index_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    {
        let s = DiskStore::open(dir.path()).unwrap();
        s.apply(&m(
            1,
            vec![Op::PutBlock {
                ino: Ino(7),
                idx: 0,
                data: b"one".to_vec(),
            }],
        ))
        .unwrap();
    }
    // The index as it was after seq 1: what a crash before the next checkpoint leaves.
    copy_tree(&dir.path().join("meta"), saved.path());
    {
        let s = DiskStore::open(dir.path()).unwrap();
        s.apply(&m(
            2,
            vec![Op::PutBlock {
                ino: Ino(7),
                idx: 1,
                data: b"two".to_vec(),
            }],
        ))
        .unwrap();
        s.apply(&m(
            3,
            vec![
                Op::TruncBlocks {
                    ino: Ino(7),
                    from: 0,
                },
                Op::PutBlock {
                    ino: Ino(8),
                    idx: 0,
                    data: b"3".to_vec(),
                },
            ],
        ))
        .unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("meta")).unwrap();
    copy_tree(saved.path(), &dir.path().join("meta"));
    let s = DiskStore::open(dir.path()).unwrap();
    assert_eq!(s.last_applied(), Seq(3));
    assert!(s.block(Ino(7), 0).unwrap().is_none());
    assert_eq!(s.block(Ino(8), 0).unwrap().unwrap(), b"3");
}

#[test]
fn torn_tail_is_cut_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    // The end of the records, not the file length: the final sync pre-writes zeros.
    let good_len = {
        let s = DiskStore::open(dir.path()).unwrap();
        s.apply(&m(
            1,
            vec![Op::PutBlock {
                ino: Ino(7),
                idx: 0,
                data: b"ok".to_vec(),
            }],
        ))
        .unwrap();
        s.records_end().1
    };
    let seg = dir.path().join("log").join(disk::segment_name(1));
    {
        use std::io::Write;
        // Appended after the zeros: what follows them is not padding but a torn record.
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"TWLR\x01\x00garbage that is not a whole record")
            .unwrap();
    }
    let s = DiskStore::open(dir.path()).unwrap();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    s.apply(&m(
        2,
        vec![Op::PutBlock {
            ino: Ino(7),
            idx: 1,
            data: b"next".to_vec(),
        }],
    ))
    .unwrap();
    drop(s);
    let s = DiskStore::open(dir.path()).unwrap();
    assert_eq!(s.block(Ino(7), 1).unwrap().unwrap(), b"next");
}

#[test]
fn flipped_byte_is_reported_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskStore::open(dir.path()).unwrap();
        s.apply(&m(
            1,
            vec![Op::PutBlock {
                ino: Ino(7),
                idx: 0,
                data: vec![0x5a; 4096],
            }],
        ))
        .unwrap();
    }
    let seg = dir.path().join("log").join(disk::segment_name(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    let pos = bytes.iter().rposition(|&b| b == 0x5a).unwrap();
    bytes[pos] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let s = DiskStore::open(dir.path()).unwrap();
    match s.block(Ino(7), 0) {
        Err(StoreError::Corrupt {
            ino, idx, offset, ..
        }) => {
            assert_eq!((ino, idx), (Ino(7), 0));
            assert!(offset <= pos as u64 && pos as u64 <= offset + 4096);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn refuses_foreign_and_future_dirs_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("store.toml"), "format = 99\n").unwrap();
    let err = DiskStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("format 99"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing was created"
    );
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("index.html"), "hi").unwrap();
    assert!(DiskStore::open(other.path()).is_err());
    assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 1);
}

#[test]
fn second_open_is_refused_while_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _s = DiskStore::open(dir.path()).unwrap();
    assert!(matches!(
        DiskStore::open(dir.path()),
        Err(StoreError::Locked { .. })
    ));
}

#[test]
fn cleaner_reclaims_overwritten_space_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_max: 64 * 1024,
    };
    let f = Ino(2);
    {
        let s = DiskStore::open_with(dir.path(), opts).unwrap();
        // Block 0 is overwritten 40 times; block 1 is written once and must survive the moves.
        s.apply(&m(
            1,
            vec![Op::PutBlock {
                ino: f,
                idx: 1,
                data: vec![0xb1; 20_000],
            }],
        ))
        .unwrap();
        for i in 0..40u64 {
            s.apply(&m(
                2 + i,
                vec![Op::PutBlock {
                    ino: f,
                    idx: 0,
                    data: vec![i as u8; 20_000],
                }],
            ))
            .unwrap();
        }
        let before = s.log_usage().unwrap();
        assert!(before.segments > 5, "{before:?}");
        let stats = s.clean(u64::MAX).unwrap();
        assert!(stats.segments_removed > 0, "{stats:?}");
        let after = s.log_usage().unwrap();
        assert!(
            after.total_bytes < before.total_bytes / 2,
            "{before:?} -> {after:?}"
        );
        assert_eq!(after.live_bytes, 40_000);
        assert_eq!(s.block(f, 0).unwrap().unwrap(), vec![39u8; 20_000]);
        assert_eq!(s.block(f, 1).unwrap().unwrap(), vec![0xb1; 20_000]);
        // Writing after a clean continues the sequence.
        s.apply(&m(
            42,
            vec![Op::PutBlock {
                ino: f,
                idx: 2,
                data: b"after".to_vec(),
            }],
        ))
        .unwrap();
    }
    let s = DiskStore::open_with(dir.path(), opts).unwrap();
    assert_eq!(s.last_applied(), Seq(42));
    assert_eq!(s.block(f, 1).unwrap().unwrap(), vec![0xb1; 20_000]);
    assert_eq!(s.block(f, 2).unwrap().unwrap(), b"after");
    assert_eq!(s.log_usage().unwrap().live_bytes, 40_005);
}

#[test]
fn writes_after_a_clean_replay_after_a_crash() {
    // Clean, then lose the index's memory of everything after the clean's checkpoint:
    // later writes replay on top of the relocated blocks.
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_max: 64 * 1024,
    };
    let f = Ino(2);
    {
        let s = DiskStore::open_with(dir.path(), opts).unwrap();
        for i in 0..20u64 {
            s.apply(&m(
                1 + i,
                vec![Op::PutBlock {
                    ino: f,
                    idx: i % 2,
                    data: vec![i as u8; 20_000],
                }],
            ))
            .unwrap();
        }
        s.clean(u64::MAX).unwrap();
        copy_tree(&dir.path().join("meta"), saved.path());
        s.apply(&m(
            21,
            vec![Op::PutBlock {
                ino: f,
                idx: 0,
                data: b"late".to_vec(),
            }],
        ))
        .unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("meta")).unwrap();
    copy_tree(saved.path(), &dir.path().join("meta"));
    let s = DiskStore::open_with(dir.path(), opts).unwrap();
    assert_eq!(s.last_applied(), Seq(21));
    assert_eq!(s.block(f, 0).unwrap().unwrap(), b"late");
    assert_eq!(s.block(f, 1).unwrap().unwrap(), vec![19u8; 20_000]);
}

#[test]
fn a_crash_at_either_step_of_cleaning_loses_nothing() {
    // Crash images are copies of the data dir taken while the store is open: after the
    // relocation (before its checkpoint) and after the old segments are gone.
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_max: 64 * 1024,
    };
    let f = Ino(2);
    let s = DiskStore::open_with(dir.path(), opts).unwrap();
    for i in 0..60u64 {
        let data = vec![i as u8; 20_000];
        s.apply(&m(
            1 + i,
            vec![Op::PutBlock {
                ino: f,
                idx: i % 4,
                data,
            }],
        ))
        .unwrap();
    }
    let image = || {
        let d = tempfile::tempdir().unwrap();
        copy_tree(dir.path(), d.path());
        d
    };
    let (stats, victims) = s.relocate(u64::MAX).unwrap();
    assert!(!victims.is_empty(), "the test needs something to clean");
    let after_relocate = image();
    let stats = s.drop_segments(stats, victims).unwrap();
    assert!(stats.segments_removed > 0);
    let after_delete = image();
    drop(s);
    // The two crash images, then the store itself after its clean shutdown.
    for path in [after_relocate.path(), after_delete.path(), dir.path()] {
        let s = DiskStore::open_with(path, opts).unwrap();
        assert_eq!(s.last_applied(), Seq(60));
        for k in 0..4u64 {
            // The last write to block k was i = 56 + k.
            assert_eq!(
                s.block(f, k).unwrap().unwrap(),
                vec![(56 + k) as u8; 20_000],
                "block {k} of {path:?}"
            );
        }
        assert!(crate::verify::verify(&s).unwrap().damaged.is_empty());
    }
}

/// Everything a store holds, for comparing two stores.
/// Two empty stores, with their directories (kept alive by the caller).
fn two_stores() -> (tempfile::TempDir, tempfile::TempDir, DiskStore, DiskStore) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = DiskStore::open(da.path()).unwrap();
    let b = DiskStore::open(db.path()).unwrap();
    (da, db, a, b)
}

/// The ops that create the root directory and set the next inode number.
fn root_ops(next_ino: u64) -> Vec<Op> {
    let mut root = inode();
    root.kind = FileKind::Dir;
    vec![Op::PutInode(Ino(1), root), Op::NextIno(next_ino)]
}

fn dump(s: &DiskStore) -> Vec<String> {
    let mut out = Vec::new();
    for ino in 1..64u64 {
        let ino = Ino(ino);
        if let Some(i) = s.inode(ino).unwrap() {
            out.push(format!("inode {ino:?} {i:?}"));
        }
        for idx in 0..16 {
            if let Some(b) = s.block(ino, idx).unwrap() {
                out.push(format!("block {ino:?}/{idx} {}", blake3::hash(&b)));
            }
        }
        for n in s.xattr_names(ino).unwrap() {
            out.push(format!(
                "xattr {ino:?} {n:?} {:?}",
                s.xattr(ino, &n).unwrap()
            ));
        }
        let names: Vec<_> = s
            .read_dir(ino, 0, 1000)
            .unwrap()
            .into_iter()
            .map(|(n, e)| format!("{n:?}->{:?}", e.ino))
            .collect();
        if !names.is_empty() {
            out.push(format!("dir {ino:?} {names:?}"));
        }
    }
    out.push(format!("orphans {:?}", s.orphans().unwrap()));
    out.push(format!("next_ino {}", s.next_ino().unwrap()));
    out
}

fn file_ops(ino: u64, fill: u8, blocks: u64) -> Vec<Op> {
    let mut ops = vec![Op::PutInode(Ino(ino), inode())];
    for idx in 0..blocks {
        ops.push(Op::PutBlock {
            ino: Ino(ino),
            idx,
            data: vec![fill; 100 + idx as usize],
        });
    }
    ops.push(Op::PutDirent {
        parent: Ino(1),
        name: format!("f{ino}").into_bytes(),
        entry: DirEntry {
            ino: Ino(ino),
            kind: FileKind::File,
            cookie: 3 + ino,
        },
    });
    ops
}

/// Ships `source`'s values of the keys both changed after `floor` into `target`.
fn resync(source: &DiskStore, target: &DiskStore, floor: Seq, full: bool) -> usize {
    let mut keys = source
        .changed_keys_since(floor)
        .unwrap()
        .unwrap_or_default();
    let full = match target.changed_keys_since(floor).unwrap() {
        Some(t) if !full => {
            keys.extend(t);
            false
        }
        _ => true,
    };
    let mut chunks = 0;
    source
        .resync_ops(&keys, full, 300, |ops| {
            chunks += 1;
            target.apply_local(ops)
        })
        .unwrap();
    target.jump_to(source.last_applied()).unwrap();
    chunks
}

#[test]
fn resync_of_diverged_stores_makes_them_equal_and_survives_a_crash() {
    let (_da, db, a, b) = two_stores();
    let common = [
        root_ops(10),
        file_ops(2, 1, 3),
        file_ops(3, 2, 2),
        vec![Op::PutXattr {
            ino: Ino(3),
            name: b"user.k".to_vec(),
            value: b"v".to_vec(),
        }],
    ];
    for (i, ops) in common.iter().enumerate() {
        a.apply(&m(i as u64 + 1, ops.clone())).unwrap();
        b.apply(&m(i as u64 + 1, ops.clone())).unwrap();
    }
    let floor = a.last_applied();
    assert_eq!(a.changed_keys_since(floor).unwrap(), Some(KeySet::new()));
    // A: rewrites a block, truncates a file, deletes another, creates one.
    a.apply(&m(
        5,
        vec![Op::PutBlock {
            ino: Ino(2),
            idx: 1,
            data: b"new".to_vec(),
        }],
    ))
    .unwrap();
    a.apply(&m(
        6,
        vec![Op::TruncBlocks {
            ino: Ino(2),
            from: 2,
        }],
    ))
    .unwrap();
    a.apply(&m(
        7,
        vec![
            Op::DelDirent {
                parent: Ino(1),
                name: b"f3".to_vec(),
                cookie: 6,
            },
            Op::DelInode(Ino(3)),
        ],
    ))
    .unwrap();
    a.apply(&m(8, file_ops(4, 4, 4))).unwrap();
    a.apply(&m(9, vec![Op::NextIno(11)])).unwrap();
    // B wrote on its own meanwhile (split brain): a file A never had, a changed xattr.
    b.apply(&m(5, file_ops(5, 5, 2))).unwrap();
    b.apply(&m(
        6,
        vec![
            Op::PutXattr {
                ino: Ino(3),
                name: b"user.k".to_vec(),
                value: b"b's".to_vec(),
            },
            Op::PutBlock {
                ino: Ino(2),
                idx: 7,
                data: b"b only".to_vec(),
            },
            // A name whose readdir cookie A gave to another name (f4's).
            Op::PutDirent {
                parent: Ino(1),
                name: b"g".to_vec(),
                entry: DirEntry {
                    ino: Ino(5),
                    kind: FileKind::File,
                    cookie: 7,
                },
            },
        ],
    ))
    .unwrap();
    // Many ops per chunk or few: the outcome must not depend on it.
    let keys = a.changed_keys_since(floor).unwrap().unwrap();
    assert!(keys.contains(&StoreKey::Block(Ino(2), 1)));
    assert!(keys.contains(&StoreKey::Trunc(Ino(2), 2)));
    assert!(
        !keys.contains(&StoreKey::Block(Ino(2), 0)),
        "unchanged blocks do not travel"
    );
    assert_ne!(dump(&a), dump(&b));
    assert!(resync(&a, &b, floor, false) > 1, "chunked");
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(b.last_applied(), a.last_applied());
    // What a resync taught B survives a crash (no checkpoint): the log replays it.
    b.sync().unwrap();
    drop(b);
    let b = DiskStore::open(db.path()).unwrap();
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(b.last_applied(), Seq(9));
    // Past a jump the log cannot tell what changed: a full resync is needed.
    assert_eq!(b.changed_keys_since(floor).unwrap(), None);
    // And mutations continue from the jumped-to seq.
    b.apply(&m(10, vec![Op::NextIno(12)])).unwrap();
}

#[test]
fn full_resync_wipes_the_target_first() {
    let (_da, _db, a, b) = two_stores();
    a.apply(&m(1, file_ops(2, 1, 3))).unwrap();
    a.apply(&m(2, file_ops(3, 3, 1))).unwrap();
    // B holds unrelated data of another history.
    b.apply(&m(1, file_ops(7, 7, 2))).unwrap();
    resync(&a, &b, Seq(0), true);
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn the_cleaner_keeps_records_above_the_retain_floor() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskStore::open_with(
        dir.path(),
        StoreOptions {
            segment_max: 64 << 10,
        },
    )
    .unwrap();
    let f = Ino(2);
    s.apply(&m(1, vec![Op::PutInode(f, inode())])).unwrap();
    s.set_retain_floor(Seq(1));
    // Overwrite the same block many times: old segments are all dead weight.
    for seq in 2..40 {
        s.apply(&m(
            seq,
            vec![Op::PutBlock {
                ino: f,
                idx: 0,
                data: vec![seq as u8; 8000],
            }],
        ))
        .unwrap();
    }
    s.clean(u64::MAX).unwrap();
    assert!(
        s.changed_keys_since(Seq(1)).unwrap().is_some(),
        "records above the floor were cleaned away"
    );
    s.set_retain_floor(Seq(u64::MAX));
    let stats = s.clean(u64::MAX).unwrap();
    assert!(stats.segments_removed > 0, "{stats:?}");
    assert_eq!(s.changed_keys_since(Seq(1)).unwrap(), None);
    assert_eq!(s.block(f, 0).unwrap().unwrap(), vec![39u8; 8000]);
}

#[test]
fn a_record_applied_on_one_store_applies_as_it_is_on_another() {
    let (_da, db, a, b) = two_stores();
    let muts = [
        m(1, root_ops(3)),
        m(2, file_ops(2, 9, 3)),
        m(
            3,
            vec![Op::TruncBlocks {
                ino: Ino(2),
                from: 1,
            }],
        ),
    ];
    let mut wires = Vec::new();
    for mu in &muts {
        let wire = a.apply_returning_record(mu).unwrap();
        assert_eq!(wire, mu.to_wire(), "the log record is the wire form");
        wires.push(wire);
    }
    // Out of order, damaged, truncated: refused, nothing applied.
    assert!(matches!(
        b.apply_wire(&wires[1]),
        Err(StoreError::OutOfOrder { last: 0, got: 2 })
    ));
    let mut flipped = wires[1].clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(matches!(
        b.apply_wire(&flipped),
        Err(StoreError::BadRecord { .. })
    ));
    assert!(b.apply_wire(&wires[0][..30]).is_err());
    assert_eq!(b.last_applied(), Seq(0));
    for w in &wires {
        b.apply_wire(w).unwrap();
    }
    assert_eq!(dump(&a), dump(&b));
    // And it replays after a crash like any record.
    b.sync().unwrap();
    drop(b);
    let b = DiskStore::open(db.path()).unwrap();
    assert_eq!(dump(&a), dump(&b));
}

#[test]
fn a_prepared_record_is_the_wire_form_and_applies_in_two_steps() {
    let (_da, _db, a, b) = two_stores();
    let muts = [m(1, root_ops(3)), m(2, file_ops(2, 7, 3))];
    for mu in &muts {
        let (record, prepared) = a.prepare(mu).unwrap();
        assert_eq!(record, mu.to_wire(), "the prepared record is the wire form");
        assert_eq!(prepared.seq(), mu.seq);
        // Nothing is visible before the append.
        assert_eq!(a.last_applied(), Seq(mu.seq.0 - 1));
        a.append_prepared(prepared, &record).unwrap();
        b.apply(mu).unwrap();
    }
    assert_eq!(dump(&a), dump(&b));
    // Out of order is refused before anything is encoded.
    assert!(matches!(
        a.prepare(&m(5, vec![Op::NextIno(9)])),
        Err(StoreError::OutOfOrder { last: 2, got: 5 })
    ));
    // A poisoned store refuses changes and keeps serving reads.
    a.poison();
    assert!(matches!(
        a.prepare(&m(3, vec![Op::NextIno(9)])),
        Err(StoreError::Poisoned)
    ));
    assert_eq!(a.block(Ino(2), 0).unwrap(), b.block(Ino(2), 0).unwrap());
}

#[test]
fn apply_wire_then_reports_once_the_record_is_logged_and_before_it_is_indexed() {
    let (_da, db, a, b) = two_stores();
    let muts = [m(1, root_ops(3)), m(2, file_ops(2, 9, 3))];
    let wires: Vec<Vec<u8>> = muts
        .iter()
        .map(|mu| a.apply_returning_record(mu).unwrap())
        .collect();
    for (mu, w) in muts.iter().zip(&wires) {
        let mut seen = Vec::new();
        let s = b
            .apply_wire_then(w, |s| {
                // Logged, not yet indexed: the position has not moved yet.
                seen.push((s, b.last_applied()));
            })
            .unwrap();
        assert_eq!(s, mu.seq);
        assert_eq!(
            seen,
            vec![(mu.seq, Seq(mu.seq.0 - 1))],
            "called once, before the index"
        );
        assert_eq!(b.last_applied(), mu.seq);
    }
    assert_eq!(dump(&a), dump(&b));
    // A refused record is never reported.
    let mut called = false;
    let r = b.apply_wire_then(&wires[1], |_| called = true);
    assert!(matches!(r, Err(StoreError::OutOfOrder { last: 2, got: 2 })));
    assert!(!called);
    // What was reported is in the log: a crash right after the report (here,
    // a reopen after a sync) replays it.
    b.sync().unwrap();
    drop(b);
    let b = DiskStore::open(db.path()).unwrap();
    assert_eq!(dump(&a), dump(&b));
}

/// Counts the warnings and errors logged while it is the default subscriber.
struct WarnCounter(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl tracing::Subscriber for WarnCounter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        if *e.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Runs `f` and returns its result with the number of warnings and errors it logged.
fn warnings_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = tracing::subscriber::with_default(WarnCounter(n.clone()), f);
    (r, n.load(std::sync::atomic::Ordering::SeqCst))
}

fn block_op(ino: u64, idx: u64, fill: u8, len: usize) -> Vec<Op> {
    vec![Op::PutBlock {
        ino: Ino(ino),
        idx,
        data: vec![fill; len],
    }]
}

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn zeros_from(p: &std::path::Path, from: u64) -> bool {
    std::fs::read(p).unwrap()[from as usize..]
        .iter()
        .all(|&b| b == 0)
}

#[test]
fn a_sync_pre_writes_zeros_and_a_clean_reopen_cuts_them_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("log").join(disk::segment_name(1));
    let end = {
        let s = DiskStore::open(dir.path()).unwrap();
        s.apply(&m(1, block_op(7, 0, 1, 4096))).unwrap();
        s.sync().unwrap();
        let (id, end) = s.records_end();
        assert_eq!(id, 1);
        // The zeros past the records are written, and usage counts only the records.
        assert!(
            file_len(&seg) >= end + (256 << 10),
            "{} {end}",
            file_len(&seg)
        );
        assert!(zeros_from(&seg, end));
        assert_eq!(s.log_usage().unwrap().total_bytes, end);
        // Small appends land inside what is written: the file does not grow.
        let padded = file_len(&seg);
        for i in 2..=10u64 {
            s.apply(&m(i, block_op(7, i, i as u8, 4096))).unwrap();
            s.sync().unwrap();
        }
        assert_eq!(file_len(&seg), padded);
        assert_eq!(
            s.changed_keys_since(Seq(1)).unwrap().map(|k| k.len()),
            Some(9)
        );
        // A bulk append (more than 256 KiB since the last sync) runs past the zeros
        // and its sync writes none: bulk writes do not pay twice.
        let bulk = |seq: u64| {
            let ops = (0..10)
                .map(|i| Op::PutBlock {
                    ino: Ino(8),
                    idx: seq * 10 + i,
                    data: vec![seq as u8; 65536],
                })
                .collect();
            m(seq, ops)
        };
        for seq in 11..=15 {
            s.apply(&bulk(seq)).unwrap();
        }
        s.sync().unwrap();
        assert_eq!(file_len(&seg), s.records_end().1);
        // The next small sync pre-writes again.
        s.apply(&m(16, block_op(7, 13, 13, 4096))).unwrap();
        s.sync().unwrap();
        assert!(file_len(&seg) > s.records_end().1);
        s.records_end().1
    };
    // A clean stop leaves the padding; the next open cuts it without a warning.
    assert!(file_len(&seg) > end);
    let (s, warnings) = warnings_of(|| DiskStore::open(dir.path()).unwrap());
    assert_eq!(warnings, 0);
    assert_eq!(file_len(&seg), end);
    assert_eq!(s.records_end(), (1, end));
    assert_eq!(s.last_applied(), Seq(16));
    assert_eq!(s.block(Ino(7), 10).unwrap().unwrap(), vec![10u8; 4096]);
    assert_eq!(s.block(Ino(8), 129).unwrap().unwrap(), vec![12u8; 65536]);
    s.apply(&m(17, block_op(7, 11, 11, 4096))).unwrap();
    drop(s);
    let s = DiskStore::open(dir.path()).unwrap();
    assert_eq!(s.block(Ino(7), 11).unwrap().unwrap(), vec![11u8; 4096]);
}

#[test]
fn records_written_into_the_padding_are_replayed_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let s = DiskStore::open(dir.path()).unwrap();
    s.apply(&m(1, block_op(7, 0, 1, 4096))).unwrap();
    s.checkpoint().unwrap();
    // The index as of seq 1; the log then gets records 2..=20 inside its padding.
    copy_tree(&dir.path().join("meta"), saved.path());
    for i in 2..=20u64 {
        s.apply(&m(i, block_op(7, i, i as u8, 4096))).unwrap();
        s.sync().unwrap();
    }
    let end = s.records_end().1;
    // The crash image: the log as synced (padding and all), the index of seq 1.
    let crash = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), crash.path());
    drop(s);
    assert!(file_len(&crash.path().join("log").join(disk::segment_name(1))) > end);
    let meta = crash.path().join("meta");
    std::fs::remove_dir_all(&meta).unwrap();
    copy_tree(saved.path(), &meta);
    let (s, warnings) = warnings_of(|| DiskStore::open(crash.path()).unwrap());
    assert_eq!(warnings, 0, "zero padding is not a torn tail");
    assert_eq!(s.last_applied(), Seq(20));
    for i in 2..=20u64 {
        assert_eq!(s.block(Ino(7), i).unwrap().unwrap(), vec![i as u8; 4096]);
    }
    assert_eq!(s.records_end(), (1, end));
    assert_eq!(
        file_len(&crash.path().join("log").join(disk::segment_name(1))),
        end
    );
}

#[test]
fn a_torn_record_inside_the_padding_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("log").join(disk::segment_name(1));
    let end = {
        let s = DiskStore::open(dir.path()).unwrap();
        s.apply(&m(1, block_op(7, 0, 1, 4096))).unwrap();
        s.apply(&m(2, block_op(7, 1, 2, 4096))).unwrap();
        s.sync().unwrap();
        s.records_end().1
    };
    let padded = file_len(&seg);
    assert!(padded > end + 16384);
    // Half of record 3 reached the disk inside the zeros: a crash mid-append.
    let (rec, _, _) = crate::mutation::encode_record(&m(3, block_op(7, 2, 3, 8192)), 0);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&rec[..rec.len() / 2], end).unwrap();
    }
    let (s, warnings) = warnings_of(|| DiskStore::open(dir.path()).unwrap());
    assert!(warnings >= 1, "a torn record is reported");
    assert_eq!(s.last_applied(), Seq(2));
    assert_eq!(file_len(&seg), end);
    assert!(s.block(Ino(7), 2).unwrap().is_none());
    // The log goes on from there, and the new record 3 survives a reopen.
    s.apply(&m(3, block_op(7, 2, 33, 100))).unwrap();
    s.sync().unwrap();
    drop(s);
    let s = DiskStore::open(dir.path()).unwrap();
    assert_eq!(s.last_applied(), Seq(3));
    assert_eq!(s.block(Ino(7), 2).unwrap().unwrap(), vec![33u8; 100]);
    assert_eq!(s.block(Ino(7), 1).unwrap().unwrap(), vec![2u8; 4096]);
}

#[test]
fn a_segment_sealed_while_padded_ends_at_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_max: 64 * 1024,
    };
    let seg = |id| dir.path().join("log").join(disk::segment_name(id));
    let s = DiskStore::open_with(dir.path(), opts).unwrap();
    s.apply(&m(1, block_op(2, 0, 1, 20_000))).unwrap();
    s.sync().unwrap();
    // Padded up to the segment's maximum, never beyond.
    assert_eq!(file_len(&seg(1)), 64 * 1024);
    s.checkpoint().unwrap();
    copy_tree(&dir.path().join("meta"), saved.path());
    for i in 2..=8u64 {
        s.apply(&m(i, block_op(2, i, i as u8, 20_000))).unwrap();
        s.sync().unwrap();
    }
    assert!(s.records_end().0 > 1, "the test needs a sealed segment");
    // Sealed segments end with the last byte of their last record's data.
    for id in 1..s.records_end().0 {
        let bytes = std::fs::read(seg(id)).unwrap();
        assert_ne!(bytes.last(), Some(&0), "segment {id} still has padding");
    }
    // A crash just after a seal, before the cut reached the disk: the sealed
    // segment still has zeros at its end, the index is that of seq 1.
    let crash = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), crash.path());
    drop(s);
    let cseg = |id| crash.path().join("log").join(disk::segment_name(id));
    let sealed_len = file_len(&cseg(1));
    std::fs::OpenOptions::new()
        .write(true)
        .open(cseg(1))
        .unwrap()
        .set_len(64 * 1024)
        .unwrap();
    let meta = crash.path().join("meta");
    std::fs::remove_dir_all(&meta).unwrap();
    copy_tree(saved.path(), &meta);
    let (s, warnings) = warnings_of(|| DiskStore::open_with(crash.path(), opts).unwrap());
    assert_eq!(warnings, 0);
    assert_eq!(s.last_applied(), Seq(8));
    for i in 2..=8u64 {
        assert_eq!(s.block(Ino(2), i).unwrap().unwrap(), vec![i as u8; 20_000]);
    }
    assert_eq!(file_len(&cseg(1)), sealed_len);
    assert!(crate::verify::verify(&s).unwrap().damaged.is_empty());
}

#[test]
fn a_full_disk_while_pre_writing_zeros_does_not_fail_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("log").join(disk::segment_name(1));
    let s = DiskStore::open(dir.path()).unwrap();
    s.fail_zeroing(true);
    for i in 1..=5u64 {
        s.apply(&m(i, block_op(7, i, i as u8, 4096))).unwrap();
        s.sync().unwrap();
    }
    let end = s.records_end().1;
    // Part of the zeros went in before "ENOSPC": only padding, never counted as records.
    assert!(file_len(&seg) > end);
    assert_eq!(s.log_usage().unwrap().total_bytes, end);
    s.fail_zeroing(false);
    s.apply(&m(6, block_op(7, 6, 6, 4096))).unwrap();
    s.sync().unwrap();
    drop(s);
    let (s, warnings) = warnings_of(|| DiskStore::open(dir.path()).unwrap());
    assert_eq!(warnings, 0);
    assert_eq!(s.last_applied(), Seq(6));
    for i in 1..=6u64 {
        assert_eq!(s.block(Ino(7), i).unwrap().unwrap(), vec![i as u8; 4096]);
    }
}
