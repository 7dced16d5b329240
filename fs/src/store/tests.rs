//! Contract tests for [`Store`] implementations.

use super::*;
use crate::mutation::Op;
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
    {
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
    }
    let seg = dir.path().join("log").join(disk::segment_name(1));
    let good_len = std::fs::metadata(&seg).unwrap().len();
    {
        use std::io::Write;
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
