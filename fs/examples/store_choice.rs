//! Where should file data live? Measures, in one run on the same disk, writing the
//! same data as 64 KiB blocks (a) into sled values, the way metadata is stored, and
//! (b) through twinfs's `DiskStore` (an append-only log indexed by sled), each
//! followed by making it durable. BENCHMARKS.md records the result.
//!
//! Run: `cargo run --release -p twinfs-fs --example store_choice [MiB] [DIR]`

use std::sync::Arc;
use std::time::Instant;
use twinfs_fs::store::DiskStore;
use twinfs_fs::{Ino, Mutation, Op, Seq, Store};

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let base = std::env::args().nth(2).unwrap_or_else(|| "/var/tmp".into());
    let block = vec![0x5au8; 64 * 1024];
    let blocks = mib * 16;

    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()
        .expect("sled");
    let t = Instant::now();
    for i in 0..blocks {
        // One batch per 1 MiB, like one FUSE write: 16 blocks.
        if i % 16 == 0 {
            let mut b = sled::Batch::default();
            for j in i..i + 16 {
                b.insert(&j.to_be_bytes(), block.as_slice());
            }
            db.apply_batch(b).expect("batch");
        }
    }
    db.flush().expect("flush");
    let sled_s = t.elapsed().as_secs_f64();
    drop(db);
    drop(dir);

    let dir = tempfile::tempdir_in(&base).expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path()).expect("store"));
    let t = Instant::now();
    let mut seq = 0;
    for i in (0..blocks).step_by(16) {
        seq += 1;
        let ops = (i..i + 16)
            .map(|j| Op::PutBlock {
                ino: Ino(2),
                idx: j,
                data: block.clone(),
            })
            .collect();
        store
            .apply(&Mutation { seq: Seq(seq), ops })
            .expect("apply");
    }
    store.sync().expect("sync");
    let log_s = t.elapsed().as_secs_f64();

    let rate = |s: f64| mib as f64 / s;
    println!("{mib} MiB in 64 KiB blocks, 1 MiB batches, durable at the end");
    println!("  sled values : {:8.1} MiB/s", rate(sled_s));
    println!("  twinfs log  : {:8.1} MiB/s", rate(log_s));
    println!("  log / sled  : {:8.2}x", sled_s / log_s);
}
