//! Cost of the store-side work of common operations, without FUSE: what a small-file
//! create (create + 4 KiB write + a times update) and a 4 KiB overwrite cost in the
//! daemon itself. Profiling aid for BENCHMARKS.md.
//!
//! Run: `cargo run --release -p twinfs-fs --example ops_cost [DIR]`

use std::sync::Arc;
use std::time::Instant;
use twinfs_fs::ops::{Ctx, Fs, SetAttr, SetTime};
use twinfs_fs::store::DiskStore;
use twinfs_fs::Ino;

fn main() {
    let base = std::env::args().nth(1).unwrap_or_else(|| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let store = Arc::new(DiskStore::open(dir.path()).expect("store"));
    let fs = Fs::new(store, 0, 0).expect("fs");
    let ctx = Ctx { uid: 0, gid: 0 };
    let (d, _) = fs.mkdir(ctx, Ino::ROOT, b"d", 0o755).expect("mkdir");
    let data = vec![7u8; 4096];
    let n = 10_000;
    let t = Instant::now();
    for i in 0..n {
        let (f, _) = fs
            .mknod(ctx, d, format!("f{i}").as_bytes(), libc::S_IFREG | 0o644, 0)
            .expect("mknod");
        fs.write(f, 0, &data).expect("write");
        fs.setattr(
            f,
            SetAttr {
                mtime: Some(SetTime::Now),
                ..SetAttr::default()
            },
        )
        .expect("setattr");
    }
    let create = t.elapsed() / n;
    let (f, _) = fs
        .mknod(ctx, d, b"big", libc::S_IFREG | 0o644, 0)
        .expect("mknod");
    fs.write(f, 0, &vec![1u8; 64 << 20]).expect("fill");
    let t = Instant::now();
    for i in 0..n as u64 {
        fs.write(f, (i * 7919 % 16384) * 4096, &data)
            .expect("write");
    }
    let overwrite = t.elapsed() / n;
    let t = Instant::now();
    for i in 0..n {
        fs.lookup(d, format!("f{i}").as_bytes()).expect("lookup");
    }
    let lookup = t.elapsed() / n;
    println!("create+write 4 KiB+setattr: {create:?} per file");
    println!("4 KiB overwrite (block read-modify-write): {overwrite:?} per write");
    println!("lookup: {lookup:?} per name");
}
