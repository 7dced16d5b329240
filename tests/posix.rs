//! Focused POSIX tests on a real twinfs mount. Each test mounts a fresh store
//! and checks one family of system calls against what ext4 does.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::util::{self, cpath, cvt, errno, pattern, renameat2, Mounted};

const GIB: u64 = 1 << 30;

fn p(m: &Mounted, rel: &str) -> PathBuf {
    m.mnt.join(rel)
}

fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn open_raw(path: &Path, flags: i32, mode: u32) -> Result<i32, i32> {
    let c = cpath(path);
    // SAFETY: valid C string; plain open(2).
    cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) }).map(|fd| fd as i32)
}

fn close_raw(fd: i32) {
    // SAFETY: closing an fd this test opened.
    unsafe { libc::close(fd) };
}

fn io_errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e.raw_os_error().expect("os error"),
    }
}

#[test]
fn posix_open_flags() {
    if !util::require_fuse("posix_open_flags") {
        return;
    }
    let m = Mounted::start();
    let f = p(&m, "f");
    write_file(&f, b"hello world");
    assert_eq!(read_file(&f), b"hello world");

    // O_TRUNC empties the file.
    let fd = open_raw(&f, libc::O_WRONLY | libc::O_TRUNC, 0).expect("open O_TRUNC");
    close_raw(fd);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 0);
    assert_eq!(read_file(&f), b"");

    // O_APPEND appends, whatever the file position.
    write_file(&f, b"abc");
    {
        let mut a = OpenOptions::new().append(true).open(&f).unwrap();
        a.write_all(b"def").unwrap();
        a.write_all(b"gh").unwrap();
    }
    assert_eq!(read_file(&f), b"abcdefgh");
    {
        // Another writer extends the file; an O_APPEND write still lands at the end.
        let mut a = OpenOptions::new().append(true).open(&f).unwrap();
        let b = OpenOptions::new().write(true).open(&f).unwrap();
        b.write_at(b"XYZ", 8).unwrap();
        a.write_all(b"!").unwrap();
    }
    assert_eq!(read_file(&f), b"abcdefghXYZ!");

    // O_CREAT|O_EXCL: EEXIST on an existing file, on a directory and on a
    // dangling symlink; creates otherwise.
    assert_eq!(
        open_raw(&f, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644),
        Err(libc::EEXIST)
    );
    std::fs::create_dir(p(&m, "d")).unwrap();
    assert_eq!(
        open_raw(
            &p(&m, "d"),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0o644
        ),
        Err(libc::EEXIST)
    );
    std::os::unix::fs::symlink("nowhere", p(&m, "dangling")).unwrap();
    assert_eq!(
        open_raw(
            &p(&m, "dangling"),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0o644
        ),
        Err(libc::EEXIST)
    );
    let fd = open_raw(
        &p(&m, "new"),
        libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
        0o640,
    )
    .expect("create new");
    close_raw(fd);
    let md = std::fs::metadata(p(&m, "new")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), 0);
    assert_eq!(md.mode() & 0o777, 0o640 & !current_umask());

    // Opening without O_CREAT: ENOENT; a directory for writing: EISDIR;
    // a path through a file: ENOTDIR.
    assert_eq!(
        open_raw(&p(&m, "missing"), libc::O_RDONLY, 0),
        Err(libc::ENOENT)
    );
    assert_eq!(open_raw(&p(&m, "d"), libc::O_WRONLY, 0), Err(libc::EISDIR));
    assert_eq!(
        open_raw(&p(&m, "f/x"), libc::O_RDONLY, 0),
        Err(libc::ENOTDIR)
    );
    // O_CREAT through a dangling symlink creates its target.
    let fd = open_raw(&p(&m, "dangling"), libc::O_CREAT | libc::O_WRONLY, 0o600)
        .expect("create via symlink");
    close_raw(fd);
    assert!(std::fs::symlink_metadata(p(&m, "nowhere"))
        .unwrap()
        .is_file());

    // O_TRUNC on a freshly written, still cached file drops the old content.
    write_file(&f, &pattern(1, 300_000));
    let fd = open_raw(&f, libc::O_RDWR | libc::O_TRUNC, 0).expect("open O_TRUNC");
    close_raw(fd);
    write_file(&p(&m, "g"), b"x");
    assert_eq!(read_file(&f), b"");
    m.stop();
}

fn current_umask() -> u32 {
    // Read the umask without changing it: /proc/self/status has "Umask:".
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .expect("Umask line");
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[test]
fn posix_pread_pwrite_offsets() {
    if !util::require_fuse("posix_pread_pwrite_offsets") {
        return;
    }
    let m = Mounted::start();
    let path = p(&m, "rw");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut model: Vec<u8> = Vec::new();
    // Offsets around the 16 KiB store block, 64 KiB and the 1 MiB max_write.
    let writes: &[(u64, usize)] = &[
        (0, 10),
        (4095, 2),
        (65_530, 12),
        (65_536 * 3 - 7, 65_536 + 14),
        (1_048_576 + 13, 3_000),
        (100, 200_000),
        (2_000_000, 1_500_000),
        (7, 1),
        (65_536 * 2, 65_536),
        (16_380, 10),
        (16_384 * 5 - 3, 16_384 + 6),
    ];
    for (i, &(off, len)) in writes.iter().enumerate() {
        let data = pattern(i as u64 + 10, len);
        f.write_all_at(&data, off).unwrap();
        let end = off as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
    }
    assert_eq!(f.metadata().unwrap().len(), model.len() as u64);
    // Random-ish reads, through the same and a new descriptor.
    let g = File::open(&path).unwrap();
    let reads: &[(u64, usize)] = &[
        (0, 1),
        (0, 100_000),
        (65_535, 2),
        (65_536 * 3 - 8, 65_536 + 20),
        (1_048_570, 20),
        (3_400_000, 200_000), // runs past EOF: short read
        (model.len() as u64, 10),
        (model.len() as u64 + 1000, 10),
    ];
    for &(off, len) in reads {
        for file in [&f, &g] {
            let mut buf = vec![0xAAu8; len];
            let mut got = 0;
            while got < len {
                let n = file.read_at(&mut buf[got..], off + got as u64).unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            let start = (off as usize).min(model.len());
            let end = (off as usize + len).min(model.len());
            assert_eq!(got, end - start, "read length at {off}+{len}");
            assert!(
                buf[..got] == model[start..end],
                "read content at {off}+{len}"
            );
        }
    }
    drop((f, g));
    assert!(
        read_file(&path) == model,
        "whole-file read differs from the model"
    );
    m.stop();
}

#[test]
fn posix_sparse_holes_read_zero() {
    if !util::require_fuse("posix_sparse_holes_read_zero") {
        return;
    }
    let m = Mounted::start();
    let path = p(&m, "sparse");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"middle", 3 * 65_536 + 100).unwrap();
    f.write_all_at(b"tail", 10 << 20).unwrap();
    // Extending with ftruncate also creates a hole.
    f.set_len((10 << 20) + 4 + 70_000).unwrap();
    let size = (10u64 << 20) + 4 + 70_000;
    assert_eq!(f.metadata().unwrap().len(), size);
    drop(f);
    let data = read_file(&path);
    assert_eq!(data.len() as u64, size);
    let mut expect = vec![0u8; size as usize];
    expect[0..4].copy_from_slice(b"head");
    expect[3 * 65_536 + 100..3 * 65_536 + 106].copy_from_slice(b"middle");
    expect[10 << 20..(10 << 20) + 4].copy_from_slice(b"tail");
    let first_diff = data.iter().zip(&expect).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "sparse file content differs at this offset"
    );
    // A file that is only a hole.
    let h = p(&m, "hole");
    File::create(&h).unwrap().set_len(1 << 20).unwrap();
    let d = read_file(&h);
    assert_eq!(d.len(), 1 << 20);
    assert!(d.iter().all(|&b| b == 0), "pure hole must read as zeros");
    m.stop();
}

#[test]
fn posix_offsets_beyond_4gib() {
    if !util::require_fuse("posix_offsets_beyond_4gib") {
        return;
    }
    let m = Mounted::start();
    let path = p(&m, "big");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all_at(b"start", 0).unwrap();
    // Straddles the 32-bit boundary.
    f.write_all_at(b"ABCDEFGH", 4 * GIB - 4).unwrap();
    f.write_all_at(b"five-gib", 5 * GIB).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 5 * GIB + 8);
    drop(f);
    let g = File::open(&path).unwrap();
    assert_eq!(g.metadata().unwrap().len(), 5 * GIB + 8);
    let mut buf = [0u8; 8];
    g.read_exact_at(&mut buf, 4 * GIB - 4).unwrap();
    assert_eq!(&buf, b"ABCDEFGH");
    g.read_exact_at(&mut buf, 5 * GIB).unwrap();
    assert_eq!(&buf, b"five-gib");
    let mut hole = vec![0xFFu8; 1 << 20];
    for off in [
        4 * GIB + 4,
        4 * GIB + (1 << 20),
        5 * GIB - (1 << 20),
        2 * GIB,
        65_536,
    ] {
        g.read_exact_at(&mut hole, off).unwrap();
        assert!(
            hole.iter().all(|&b| b == 0),
            "hole at {off} must read zeros"
        );
    }
    // 4 GiB aliasing: the data at 5 GiB must not show up at 1 GiB.
    g.read_exact_at(&mut buf, GIB).unwrap();
    assert_eq!(buf, [0u8; 8]);
    let mut tail = [0u8; 16];
    let n = g.read_at(&mut tail, 5 * GIB + 4).unwrap();
    assert_eq!(&tail[..n], b"-gib");
    drop(g);
    // Truncate down across the boundary.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4 * GIB)
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * GIB);
    let g = File::open(&path).unwrap();
    g.read_exact_at(&mut buf[..4], 4 * GIB - 4).unwrap();
    assert_eq!(&buf[..4], b"ABCD");
    drop(g);
    m.stop();
}

#[test]
fn posix_truncate_up_and_down() {
    if !util::require_fuse("posix_truncate_up_and_down") {
        return;
    }
    let m = Mounted::start();
    let path = p(&m, "t");
    let data = pattern(3, 200_000);
    write_file(&path, &data);
    // Down, to the middle of a block.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(70_000)
        .unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 70_000);
    assert!(read_file(&path) == data[..70_000]);
    // Up again: the cut-off bytes must not come back.
    let c = cpath(&path);
    // SAFETY: valid C string.
    assert_eq!(cvt(unsafe { libc::truncate(c.as_ptr(), 300_000) }), Ok(0));
    let got = read_file(&path);
    assert_eq!(got.len(), 300_000);
    assert!(got[..70_000] == data[..70_000]);
    assert!(
        got[70_000..].iter().all(|&b| b == 0),
        "bytes past the old size must be zero"
    );
    // Down to zero and up.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(read_file(&path), b"");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(65_537)
        .unwrap();
    let got = read_file(&path);
    assert_eq!(got.len(), 65_537);
    assert!(got.iter().all(|&b| b == 0));
    // Truncate while open for writing, then write past the new end.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&pattern(4, 100_000), 0).unwrap();
    f.set_len(10).unwrap();
    f.write_all_at(b"Z", 20).unwrap();
    drop(f);
    let got = read_file(&path);
    assert_eq!(got.len(), 21);
    assert!(got[..10] == pattern(4, 10)[..]);
    assert_eq!(&got[10..20], &[0u8; 10]);
    assert_eq!(got[20], b'Z');
    // Errors: truncate of a directory and of a missing file.
    let d = cpath(&m.mnt);
    // SAFETY: valid C string.
    assert_eq!(
        cvt(unsafe { libc::truncate(d.as_ptr(), 0) }),
        Err(libc::EISDIR)
    );
    let missing = cpath(&p(&m, "missing"));
    // SAFETY: valid C string.
    assert_eq!(
        cvt(unsafe { libc::truncate(missing.as_ptr(), 0) }),
        Err(libc::ENOENT)
    );
    m.stop();
}

#[test]
fn posix_mkdir_rmdir() {
    if !util::require_fuse("posix_mkdir_rmdir") {
        return;
    }
    let m = Mounted::start();
    let d = p(&m, "d");
    std::fs::create_dir(&d).unwrap();
    assert!(std::fs::metadata(&d).unwrap().is_dir());
    assert_eq!(io_errno(std::fs::create_dir(&d)), libc::EEXIST);
    std::fs::create_dir_all(p(&m, "d/e/f")).unwrap();
    write_file(&p(&m, "d/file"), b"x");
    assert_eq!(io_errno(std::fs::remove_dir(&d)), libc::ENOTEMPTY);
    assert_eq!(io_errno(std::fs::remove_dir(p(&m, "d/e"))), libc::ENOTEMPTY);
    assert_eq!(
        io_errno(std::fs::remove_dir(p(&m, "d/file"))),
        libc::ENOTDIR
    );
    assert_eq!(io_errno(std::fs::remove_file(p(&m, "d/e"))), libc::EISDIR);
    assert_eq!(
        io_errno(std::fs::create_dir(p(&m, "missing/x"))),
        libc::ENOENT
    );
    assert_eq!(
        io_errno(std::fs::create_dir(p(&m, "d/file/x"))),
        libc::ENOTDIR
    );
    assert_eq!(
        io_errno(std::fs::remove_dir(p(&m, "nothere"))),
        libc::ENOENT
    );
    std::fs::remove_dir(p(&m, "d/e/f")).unwrap();
    std::fs::remove_dir(p(&m, "d/e")).unwrap();
    std::fs::remove_file(p(&m, "d/file")).unwrap();
    std::fs::remove_dir(&d).unwrap();
    assert_eq!(io_errno(std::fs::metadata(&d)), libc::ENOENT);
    // A removed name can be reused, as a directory or a file.
    std::fs::create_dir(&d).unwrap();
    std::fs::remove_dir(&d).unwrap();
    write_file(&d, b"now a file");
    assert_eq!(read_file(&d), b"now a file");
    // Directory link counts follow the ext4 convention (2 + subdirectories),
    // which `find` and other tools rely on.
    std::fs::create_dir(p(&m, "n")).unwrap();
    assert_eq!(std::fs::metadata(p(&m, "n")).unwrap().nlink(), 2);
    std::fs::create_dir(p(&m, "n/a")).unwrap();
    std::fs::create_dir(p(&m, "n/b")).unwrap();
    write_file(&p(&m, "n/c"), b"");
    assert_eq!(std::fs::metadata(p(&m, "n")).unwrap().nlink(), 4);
    std::fs::remove_dir(p(&m, "n/a")).unwrap();
    assert_eq!(std::fs::metadata(p(&m, "n")).unwrap().nlink(), 3);
    // The listing shows exactly what exists.
    let mut names: Vec<String> = std::fs::read_dir(p(&m, "n"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "c"]);
    m.stop();
}

/// All names of a directory through libc readdir, with a hook that runs after
/// `pause_after` entries (to mutate the directory mid-stream).
fn readdir_names(dir: &Path, pause_after: usize, mut hook: impl FnMut()) -> Vec<String> {
    let c = cpath(dir);
    // SAFETY: valid C string; the stream is closed below.
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!d.is_null(), "opendir {}: errno {}", dir.display(), errno());
    let mut names = Vec::new();
    let mut hooked = false;
    for _ in 0..10_000_000 {
        if !hooked && names.len() == pause_after {
            hook();
            hooked = true;
        }
        // SAFETY: errno is thread-local; reset to tell EOF from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `d` is an open stream.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            assert_eq!(errno(), 0, "readdir {}", dir.display());
            break;
        }
        // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    // SAFETY: closing the stream opened above.
    unsafe { libc::closedir(d) };
    names
}

#[test]
fn posix_readdir_stable_across_mutations() {
    if !util::require_fuse("posix_readdir_stable_across_mutations") {
        return;
    }
    let m = Mounted::start();
    let dir = p(&m, "dir");
    std::fs::create_dir(&dir).unwrap();
    let n = 600;
    for i in 0..n {
        File::create(dir.join(format!("keep-{i:04}"))).unwrap();
        File::create(dir.join(format!("del-{i:04}"))).unwrap();
    }
    // Several pause points: early, inside the first kernel buffer, later.
    for (round, pause) in [3usize, 150, 700].into_iter().enumerate() {
        let names = readdir_names(&dir, pause, || {
            for i in 0..n {
                if i % 3 == round % 3 {
                    let _ = std::fs::remove_file(dir.join(format!("del-{i:04}")));
                }
                File::create(dir.join(format!("new{round}-{i:04}"))).unwrap();
            }
        });
        let mut seen = HashSet::new();
        for name in &names {
            assert!(
                seen.insert(name.clone()),
                "round {round}: {name} returned twice"
            );
        }
        for i in 0..n {
            let k = format!("keep-{i:04}");
            assert!(
                seen.contains(&k),
                "round {round}: {k} existed throughout but was not returned"
            );
        }
        // Nothing that never existed.
        for name in &names {
            assert!(
                name.starts_with("keep-") || name.starts_with("del-") || name.starts_with("new"),
                "round {round}: unexpected entry {name}"
            );
        }
    }
    // A fresh listing is exact.
    let mut now = readdir_names(&dir, usize::MAX, || {});
    now.sort();
    let mut expect: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    expect.sort();
    assert_eq!(now, expect);
    assert_eq!(now.iter().filter(|n| n.starts_with("del-")).count(), 0);
    assert_eq!(now.iter().filter(|n| n.starts_with("new")).count(), 3 * n);
    m.stop();
}

#[test]
fn posix_directory_with_100k_entries() {
    if !util::require_fuse("posix_directory_with_100k_entries") {
        return;
    }
    const N: usize = 100_000;
    // Far above what a healthy implementation needs; catches quadratic behaviour.
    const BUDGET: Duration = Duration::from_secs(300);
    let m = Mounted::start();
    let dir = p(&m, "big");
    std::fs::create_dir(&dir).unwrap();
    let t0 = Instant::now();
    for i in 0..N {
        let c = CString::new(format!("{}/entry-{i:06}", dir.display())).unwrap();
        // SAFETY: valid C string; plain creat + close.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            )
        };
        assert!(fd >= 0, "create entry {i}: errno {}", errno());
        // SAFETY: fd was just opened.
        unsafe { libc::close(fd) };
        if i % 10_000 == 0 {
            assert!(
                t0.elapsed() < BUDGET,
                "creating {N} entries is too slow: {i} after {:?}",
                t0.elapsed()
            );
        }
    }
    let created = t0.elapsed();
    let t1 = Instant::now();
    let names = readdir_names(&dir, usize::MAX, || {});
    assert_eq!(names.len(), N, "listing count");
    let uniq: HashSet<&String> = names.iter().collect();
    assert_eq!(uniq.len(), N, "listing has duplicates");
    let listed = t1.elapsed();
    for i in [0, 1, 4_999, 50_000, 77_777, N - 1] {
        let md = std::fs::metadata(dir.join(format!("entry-{i:06}"))).unwrap();
        assert!(md.is_file());
        assert_eq!(md.len(), 0);
    }
    assert_eq!(
        io_errno(std::fs::metadata(dir.join("entry-100000"))),
        libc::ENOENT
    );
    assert_eq!(io_errno(std::fs::remove_dir(&dir)), libc::ENOTEMPTY);
    let t2 = Instant::now();
    for i in 0..N {
        std::fs::remove_file(dir.join(format!("entry-{i:06}"))).unwrap();
        if i % 10_000 == 0 {
            assert!(t0.elapsed() < BUDGET, "removing {N} entries is too slow");
        }
    }
    let removed = t2.elapsed();
    assert_eq!(readdir_names(&dir, usize::MAX, || {}).len(), 0);
    std::fs::remove_dir(&dir).unwrap();
    eprintln!("100k entries: create {created:?}, list {listed:?}, remove {removed:?}");
    assert!(
        t0.elapsed() < BUDGET,
        "100k-entry directory took {:?}",
        t0.elapsed()
    );
    m.stop();
}

#[test]
fn posix_rename() {
    if !util::require_fuse("posix_rename") {
        return;
    }
    let m = Mounted::start();
    // Over an existing file: the target's content is replaced, the source is gone.
    write_file(&p(&m, "a"), b"AAA");
    write_file(&p(&m, "b"), b"BBBBBB");
    let ino_a = std::fs::metadata(p(&m, "a")).unwrap().ino();
    std::fs::rename(p(&m, "a"), p(&m, "b")).unwrap();
    assert_eq!(io_errno(std::fs::metadata(p(&m, "a"))), libc::ENOENT);
    assert_eq!(read_file(&p(&m, "b")), b"AAA");
    assert_eq!(std::fs::metadata(p(&m, "b")).unwrap().ino(), ino_a);
    // A file replaced while another name still links it keeps its content there.
    write_file(&p(&m, "c"), b"CCC");
    std::fs::hard_link(p(&m, "c"), p(&m, "c2")).unwrap();
    std::fs::rename(p(&m, "b"), p(&m, "c")).unwrap();
    assert_eq!(read_file(&p(&m, "c")), b"AAA");
    assert_eq!(read_file(&p(&m, "c2")), b"CCC");
    assert_eq!(std::fs::metadata(p(&m, "c2")).unwrap().nlink(), 1);

    // Directory over an empty directory; over a non-empty one: ENOTEMPTY.
    std::fs::create_dir(p(&m, "d1")).unwrap();
    write_file(&p(&m, "d1/inner"), b"in d1");
    std::fs::create_dir(p(&m, "d2")).unwrap();
    std::fs::rename(p(&m, "d1"), p(&m, "d2")).unwrap();
    assert_eq!(read_file(&p(&m, "d2/inner")), b"in d1");
    assert_eq!(io_errno(std::fs::metadata(p(&m, "d1"))), libc::ENOENT);
    std::fs::create_dir(p(&m, "d3")).unwrap();
    assert_eq!(
        io_errno(std::fs::rename(p(&m, "d3"), p(&m, "d2"))),
        libc::ENOTEMPTY
    );
    // Type mismatches.
    assert_eq!(
        io_errno(std::fs::rename(p(&m, "c"), p(&m, "d3"))),
        libc::EISDIR
    );
    assert_eq!(
        io_errno(std::fs::rename(p(&m, "d3"), p(&m, "c"))),
        libc::ENOTDIR
    );
    // Into its own subdirectory: EINVAL.
    std::fs::create_dir(p(&m, "d2/sub")).unwrap();
    assert_eq!(
        io_errno(std::fs::rename(p(&m, "d2"), p(&m, "d2/sub/x"))),
        libc::EINVAL
    );
    // Missing source.
    assert_eq!(
        io_errno(std::fs::rename(p(&m, "nope"), p(&m, "x"))),
        libc::ENOENT
    );

    // Across directories, with the moved directory's ".." following.
    std::fs::create_dir(p(&m, "src")).unwrap();
    std::fs::create_dir(p(&m, "dst")).unwrap();
    write_file(&p(&m, "src/f"), b"moved");
    std::fs::create_dir(p(&m, "src/sd")).unwrap();
    std::fs::rename(p(&m, "src/f"), p(&m, "dst/g")).unwrap();
    std::fs::rename(p(&m, "src/sd"), p(&m, "dst/sd")).unwrap();
    assert_eq!(read_file(&p(&m, "dst/g")), b"moved");
    assert_eq!(read_file(&p(&m, "dst/sd/../g")), b"moved");
    assert_eq!(std::fs::read_dir(p(&m, "src")).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(p(&m, "src")).unwrap().nlink(), 2);
    assert_eq!(std::fs::metadata(p(&m, "dst")).unwrap().nlink(), 3);
    std::fs::remove_dir(p(&m, "src")).unwrap();
    // Rename to itself is a no-op.
    std::fs::rename(p(&m, "dst/g"), p(&m, "dst/g")).unwrap();
    assert_eq!(read_file(&p(&m, "dst/g")), b"moved");

    // RENAME_NOREPLACE.
    write_file(&p(&m, "x"), b"X");
    write_file(&p(&m, "y"), b"Y");
    assert_eq!(
        renameat2(&p(&m, "x"), &p(&m, "y"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    assert_eq!(read_file(&p(&m, "x")), b"X");
    assert_eq!(read_file(&p(&m, "y")), b"Y");
    assert_eq!(
        renameat2(&p(&m, "x"), &p(&m, "z"), libc::RENAME_NOREPLACE),
        Ok(())
    );
    assert_eq!(read_file(&p(&m, "z")), b"X");
    assert_eq!(io_errno(std::fs::metadata(p(&m, "x"))), libc::ENOENT);

    // RENAME_EXCHANGE: a file with a file, and a file with a directory across dirs.
    assert_eq!(
        renameat2(&p(&m, "y"), &p(&m, "z"), libc::RENAME_EXCHANGE),
        Ok(())
    );
    assert_eq!(read_file(&p(&m, "y")), b"X");
    assert_eq!(read_file(&p(&m, "z")), b"Y");
    assert_eq!(
        renameat2(&p(&m, "y"), &p(&m, "dst/sd"), libc::RENAME_EXCHANGE),
        Ok(())
    );
    assert!(std::fs::metadata(p(&m, "y")).unwrap().is_dir());
    assert_eq!(read_file(&p(&m, "dst/sd")), b"X");
    assert_eq!(read_file(&p(&m, "y/../z")), b"Y");
    assert_eq!(
        renameat2(&p(&m, "y"), &p(&m, "missing"), libc::RENAME_EXCHANGE),
        Err(libc::ENOENT)
    );
    assert_eq!(
        renameat2(
            &p(&m, "y"),
            &p(&m, "z"),
            libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE
        ),
        Err(libc::EINVAL)
    );
    // Final listing of the root.
    let mut names: Vec<String> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["c", "c2", "d2", "d3", "dst", "y", "z"]);
    m.stop();
}

#[test]
fn posix_hard_links() {
    if !util::require_fuse("posix_hard_links") {
        return;
    }
    let m = Mounted::start();
    write_file(&p(&m, "f"), b"one");
    std::fs::create_dir(p(&m, "d")).unwrap();
    std::fs::hard_link(p(&m, "f"), p(&m, "d/g")).unwrap();
    std::fs::hard_link(p(&m, "f"), p(&m, "h")).unwrap();
    let (mf, mg) = (
        std::fs::metadata(p(&m, "f")).unwrap(),
        std::fs::metadata(p(&m, "d/g")).unwrap(),
    );
    assert_eq!(mf.nlink(), 3);
    assert_eq!(mg.nlink(), 3);
    assert_eq!(mf.ino(), mg.ino());
    // A write through one name is visible through the others.
    std::fs::OpenOptions::new()
        .write(true)
        .open(p(&m, "d/g"))
        .unwrap()
        .write_all_at(b"ONE!", 0)
        .unwrap();
    assert_eq!(read_file(&p(&m, "f")), b"ONE!");
    assert_eq!(read_file(&p(&m, "h")), b"ONE!");
    // chmod through one name shows through the others.
    std::fs::set_permissions(p(&m, "h"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(p(&m, "f")).unwrap().mode() & 0o777, 0o600);
    std::fs::remove_file(p(&m, "f")).unwrap();
    assert_eq!(std::fs::metadata(p(&m, "d/g")).unwrap().nlink(), 2);
    std::fs::remove_file(p(&m, "h")).unwrap();
    assert_eq!(std::fs::metadata(p(&m, "d/g")).unwrap().nlink(), 1);
    assert_eq!(read_file(&p(&m, "d/g")), b"ONE!");
    // Errors: existing target, directory source, missing source.
    write_file(&p(&m, "other"), b"");
    assert_eq!(
        io_errno(std::fs::hard_link(p(&m, "d/g"), p(&m, "other"))),
        libc::EEXIST
    );
    assert_eq!(
        io_errno(std::fs::hard_link(p(&m, "d"), p(&m, "dlink"))),
        libc::EPERM
    );
    assert_eq!(
        io_errno(std::fs::hard_link(p(&m, "nope"), p(&m, "x"))),
        libc::ENOENT
    );
    // An unlinked-but-open file stays readable; the last link going away frees it.
    let f = File::open(p(&m, "d/g")).unwrap();
    std::fs::remove_file(p(&m, "d/g")).unwrap();
    let mut buf = Vec::new();
    (&f).read_to_end(&mut buf).unwrap();
    assert_eq!(buf, b"ONE!");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    assert_eq!(std::fs::read_dir(p(&m, "d")).unwrap().count(), 0);
    m.stop();
}

#[test]
fn posix_symlinks() {
    if !util::require_fuse("posix_symlinks") {
        return;
    }
    let m = Mounted::start();
    std::fs::create_dir(p(&m, "d")).unwrap();
    write_file(&p(&m, "d/target"), b"through the link");
    std::os::unix::fs::symlink("d/target", p(&m, "rel")).unwrap();
    std::os::unix::fs::symlink("target", p(&m, "d/sibling")).unwrap();
    std::os::unix::fs::symlink("d", p(&m, "dirlink")).unwrap();
    assert_eq!(
        std::fs::read_link(p(&m, "rel")).unwrap(),
        Path::new("d/target")
    );
    let lmd = std::fs::symlink_metadata(p(&m, "rel")).unwrap();
    assert!(lmd.file_type().is_symlink());
    assert_eq!(lmd.len(), "d/target".len() as u64);
    assert_eq!(read_file(&p(&m, "rel")), b"through the link");
    assert_eq!(read_file(&p(&m, "d/sibling")), b"through the link");
    assert_eq!(read_file(&p(&m, "dirlink/target")), b"through the link");
    assert!(std::fs::metadata(p(&m, "dirlink")).unwrap().is_dir());
    // Dangling and long targets; a symlink over an existing name.
    std::os::unix::fs::symlink("does/not/exist", p(&m, "dangling")).unwrap();
    assert_eq!(io_errno(std::fs::metadata(p(&m, "dangling"))), libc::ENOENT);
    assert_eq!(
        std::fs::read_link(p(&m, "dangling")).unwrap(),
        Path::new("does/not/exist")
    );
    let long: String = (0..4000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    std::os::unix::fs::symlink(&long, p(&m, "long")).unwrap();
    assert_eq!(std::fs::read_link(p(&m, "long")).unwrap(), Path::new(&long));
    let abs = "/etc/hostname";
    std::os::unix::fs::symlink(abs, p(&m, "abs")).unwrap();
    assert_eq!(std::fs::read_link(p(&m, "abs")).unwrap(), Path::new(abs));
    assert_eq!(
        io_errno(std::os::unix::fs::symlink("x", p(&m, "rel"))),
        libc::EEXIST
    );
    // readlink on a non-symlink: EINVAL.
    assert_eq!(
        io_errno(std::fs::read_link(p(&m, "d/target"))),
        libc::EINVAL
    );
    // A symlink loop: ELOOP.
    std::os::unix::fs::symlink("loop2", p(&m, "loop1")).unwrap();
    std::os::unix::fs::symlink("loop1", p(&m, "loop2")).unwrap();
    assert_eq!(io_errno(std::fs::metadata(p(&m, "loop1"))), libc::ELOOP);
    // Unlinking a symlink leaves its target.
    std::fs::remove_file(p(&m, "rel")).unwrap();
    assert_eq!(read_file(&p(&m, "d/target")), b"through the link");
    m.stop();
}

fn chmod(path: &Path, mode: u32) -> Result<(), i32> {
    let c = cpath(path);
    // SAFETY: valid C string.
    cvt(unsafe { libc::chmod(c.as_ptr(), mode) }).map(|_| ())
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), i32> {
    let c = cpath(path);
    // SAFETY: valid C string.
    cvt(unsafe { libc::chown(c.as_ptr(), uid, gid) }).map(|_| ())
}

fn utimens(path: &Path, times: Option<[(i64, i64); 2]>) -> Result<(), i32> {
    let c = cpath(path);
    let ts = times.map(|t| {
        [
            libc::timespec {
                tv_sec: t[0].0,
                tv_nsec: t[0].1,
            },
            libc::timespec {
                tv_sec: t[1].0,
                tv_nsec: t[1].1,
            },
        ]
    });
    let ptr = ts.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    // SAFETY: valid C string; `ptr` is null or points at two timespecs.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ptr, 0) }).map(|_| ())
}

#[test]
#[allow(clippy::vec_init_then_push)] // one permission check per push reads best
fn posix_chmod_chown_utimens_and_permissions() {
    if !util::require_fuse("posix_chmod_chown_utimens_and_permissions") {
        return;
    }
    let m = Mounted::start();
    // The test switches to non-root users: let them into the mount root.
    chmod(&m.mnt, 0o755).unwrap();
    let f = p(&m, "f");
    write_file(&f, b"secret");
    chmod(&f, 0o640).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    chmod(&f, 0o600).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o600);
    assert!(
        std::fs::metadata(&f).unwrap().is_file(),
        "chmod must keep the file type"
    );
    chown(&f, 1001, 1002).unwrap();
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1001, 1002));
    chown(&f, u32::MAX, 0).unwrap(); // -1 keeps the uid
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1001, 0));
    chown(&f, 0, 0).unwrap();
    utimens(
        &f,
        Some([(1_000_000_000, 123_456_789), (1_200_000_000, 987_654_321)]),
    )
    .unwrap();
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_200_000_000, 987_654_321));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    utimens(&f, None).unwrap();
    assert!(
        std::fs::metadata(&f).unwrap().mtime() >= before - 1,
        "utimensat(NULL) sets now"
    );

    // A directory only root may write into, and one that user 1001 owns.
    std::fs::create_dir(p(&m, "rootdir")).unwrap();
    chmod(&p(&m, "rootdir"), 0o755).unwrap();
    std::fs::create_dir(p(&m, "userdir")).unwrap();
    chown(&p(&m, "userdir"), 1001, 1001).unwrap();
    write_file(&p(&m, "public"), b"everyone reads");
    chmod(&p(&m, "public"), 0o644).unwrap();

    let mnt = m.mnt.clone();
    let res = util::as_user(1001, 1001, move || {
        let f = mnt.join("f");
        let mut r = Vec::new();
        // Mode 0600 root:root: no read, no write.
        r.push((
            "open f O_RDONLY",
            open_raw(&f, libc::O_RDONLY, 0).map(close_raw),
            Err(libc::EACCES),
        ));
        r.push((
            "open f O_WRONLY",
            open_raw(&f, libc::O_WRONLY, 0).map(close_raw),
            Err(libc::EACCES),
        ));
        // Not the owner: chmod/chown/explicit times are EPERM; "now" needs write access.
        r.push(("chmod f", chmod(&f, 0o777), Err(libc::EPERM)));
        r.push(("chown f", chown(&f, 1001, 1001), Err(libc::EPERM)));
        r.push((
            "utimens f explicit",
            utimens(&f, Some([(1, 0), (2, 0)])),
            Err(libc::EPERM),
        ));
        r.push(("utimens f now", utimens(&f, None), Err(libc::EACCES)));
        // Read-only access to a 0644 file.
        let public = mnt.join("public");
        r.push((
            "open public O_RDONLY",
            open_raw(&public, libc::O_RDONLY, 0).map(close_raw),
            Ok(()),
        ));
        r.push((
            "open public O_RDWR",
            open_raw(&public, libc::O_RDWR, 0).map(close_raw),
            Err(libc::EACCES),
        ));
        // No entries in a root-owned 0755 directory.
        let created = open_raw(
            &mnt.join("rootdir/x"),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        )
        .map(close_raw);
        r.push(("create in rootdir", created, Err(libc::EACCES)));
        let mkdir =
            cvt(unsafe { libc::mkdir(cpath(&mnt.join("rootdir/y")).as_ptr(), 0o755) }).map(|_| ());
        r.push(("mkdir in rootdir", mkdir, Err(libc::EACCES)));
        let unlink =
            std::fs::remove_file(mnt.join("public")).map_err(|e| e.raw_os_error().unwrap());
        r.push(("unlink public in root dir", unlink, Err(libc::EACCES)));
        // In its own directory the user creates files it owns, and can chmod them.
        let mine = mnt.join("userdir/mine");
        let created = open_raw(&mine, libc::O_CREAT | libc::O_WRONLY, 0o640).map(close_raw);
        r.push(("create in userdir", created, Ok(())));
        r.push(("chmod own file", chmod(&mine, 0o604), Ok(())));
        r.push((
            "utimens own file explicit",
            utimens(&mine, Some([(5, 0), (6, 0)])),
            Ok(()),
        ));
        // Giving the file away is root's privilege.
        r.push((
            "chown own file to 1002",
            chown(&mine, 1002, u32::MAX),
            Err(libc::EPERM),
        ));
        // Changing the group to one the user is not in: EPERM.
        r.push((
            "chgrp own file to 1002",
            chown(&mine, u32::MAX, 1002),
            Err(libc::EPERM),
        ));
        let md =
            std::fs::metadata(&mine).map(|md| (md.uid(), md.gid(), md.mode() & 0o7777, md.mtime()));
        (r, md.map_err(|e| e.raw_os_error().unwrap()))
    });
    let (checks, mine_md) = res;
    let mut failures = Vec::new();
    for (what, got, want) in checks {
        if got != want {
            failures.push(format!("as uid 1001: {what}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "permission checks failed:\n{}",
        failures.join("\n")
    );
    assert_eq!(mine_md, Ok((1001, 1001, 0o604, 6)));
    // Root still can do everything with f.
    assert_eq!(read_file(&f), b"secret");
    m.stop();
}

#[test]
fn posix_statfs() {
    if !util::require_fuse("posix_statfs") {
        return;
    }
    let m = Mounted::start();
    let c = cpath(&m.mnt);
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    assert_eq!(cvt(unsafe { libc::statvfs(c.as_ptr(), &mut s) }), Ok(0));
    assert!(s.f_bsize > 0, "f_bsize {}", s.f_bsize);
    assert!(s.f_frsize > 0, "f_frsize {}", s.f_frsize);
    assert!(s.f_blocks > 0, "f_blocks {}", s.f_blocks);
    assert!(s.f_bfree > 0, "f_bfree {}", s.f_bfree);
    assert!(s.f_bavail > 0, "f_bavail {}", s.f_bavail);
    assert!(s.f_bfree <= s.f_blocks);
    assert!(s.f_namemax >= 255, "f_namemax {}", s.f_namemax);
    // Through a file inside the mount as well.
    write_file(&p(&m, "f"), b"x");
    let f = File::open(p(&m, "f")).unwrap();
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut s2: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: open fd and out-pointer.
    assert_eq!(
        cvt(unsafe { libc::fstatvfs(f.as_raw_fd(), &mut s2) }),
        Ok(0)
    );
    assert!(s2.f_blocks > 0);
    drop(f);
    m.stop();
}

#[test]
fn posix_fsync_fdatasync() {
    if !util::require_fuse("posix_fsync_fdatasync") {
        return;
    }
    let m = Mounted::start();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p(&m, "f"))
        .unwrap();
    f.write_all(&pattern(9, 150_000)).unwrap();
    f.sync_all().unwrap();
    f.write_all_at(b"more", 200_000).unwrap();
    f.sync_data().unwrap();
    // SAFETY: fsync/fdatasync on an open fd.
    assert_eq!(cvt(unsafe { libc::fsync(f.as_raw_fd()) }), Ok(0));
    // SAFETY: as above.
    assert_eq!(cvt(unsafe { libc::fdatasync(f.as_raw_fd()) }), Ok(0));
    drop(f);
    // fsync of a directory (after creating entries in it).
    std::fs::create_dir(p(&m, "d")).unwrap();
    write_file(&p(&m, "d/x"), b"x");
    let d = File::open(p(&m, "d")).unwrap();
    d.sync_all().unwrap();
    // A read-only descriptor may be fsynced too.
    let r = File::open(p(&m, "f")).unwrap();
    r.sync_all().unwrap();
    let data = read_file(&p(&m, "f"));
    assert_eq!(data.len(), 200_004);
    assert!(data[..150_000] == pattern(9, 150_000)[..]);
    assert_eq!(&data[200_000..], b"more");
    drop((d, r));
    m.stop();
}

fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let (c, n) = (cpath(path), CString::new(name).unwrap());
    // SAFETY: valid C strings and a value buffer of the given length.
    cvt(unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(|_| ())
}

/// getxattr with a buffer of `size` bytes (0: size query); returns the
/// length and the bytes read.
fn getxattr(path: &Path, name: &str, size: usize) -> Result<(usize, Vec<u8>), i32> {
    let (c, n) = (cpath(path), CString::new(name).unwrap());
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: valid C strings; `ptr` is null (size 0) or `buf`.
    let r = cvt(unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), ptr, size) })?;
    buf.truncate(if size == 0 { 0 } else { r as usize });
    Ok((r as usize, buf))
}

fn listxattr(path: &Path) -> Result<Vec<String>, i32> {
    let c = cpath(path);
    // SAFETY: size query.
    let size = cvt(unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) })? as usize;
    let mut buf = vec![0u8; size + 1024];
    // SAFETY: buffer of the given length.
    let n =
        cvt(unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })? as usize;
    assert_eq!(n, size, "listxattr size query and real call disagree");
    let mut names: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn removexattr(path: &Path, name: &str) -> Result<(), i32> {
    let (c, n) = (cpath(path), CString::new(name).unwrap());
    // SAFETY: valid C strings.
    cvt(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) }).map(|_| ())
}

#[test]
fn posix_xattrs() {
    if !util::require_fuse("posix_xattrs") {
        return;
    }
    let m = Mounted::start();
    let f = p(&m, "f");
    write_file(&f, b"content");
    assert_eq!(listxattr(&f), Ok(vec![]));
    assert_eq!(getxattr(&f, "user.a", 100), Err(libc::ENODATA));
    setxattr(&f, "user.a", b"alpha", 0).unwrap();
    setxattr(&f, "user.b", b"", 0).unwrap();
    let big = pattern(5, 4000);
    setxattr(&f, "user.big", &big, 0).unwrap();
    assert_eq!(getxattr(&f, "user.a", 0), Ok((5, vec![])), "size query");
    assert_eq!(getxattr(&f, "user.a", 100), Ok((5, b"alpha".to_vec())));
    assert_eq!(getxattr(&f, "user.b", 100), Ok((0, vec![])));
    assert_eq!(getxattr(&f, "user.big", 0).map(|r| r.0), Ok(4000));
    assert_eq!(getxattr(&f, "user.big", 5000), Ok((4000, big.clone())));
    assert_eq!(
        getxattr(&f, "user.a", 2),
        Err(libc::ERANGE),
        "buffer too small"
    );
    assert_eq!(
        listxattr(&f),
        Ok(vec!["user.a".into(), "user.b".into(), "user.big".into()])
    );
    // XATTR_CREATE on an existing name, XATTR_REPLACE on a missing one.
    assert_eq!(
        setxattr(&f, "user.a", b"x", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(
        setxattr(&f, "user.zz", b"x", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    assert_eq!(getxattr(&f, "user.zz", 10), Err(libc::ENODATA));
    setxattr(&f, "user.a", b"ALPHA-2", libc::XATTR_REPLACE).unwrap();
    assert_eq!(getxattr(&f, "user.a", 100), Ok((7, b"ALPHA-2".to_vec())));
    setxattr(&f, "user.c", b"gamma", libc::XATTR_CREATE).unwrap();
    removexattr(&f, "user.b").unwrap();
    assert_eq!(removexattr(&f, "user.b"), Err(libc::ENODATA));
    assert_eq!(getxattr(&f, "user.b", 10), Err(libc::ENODATA));
    assert_eq!(
        listxattr(&f),
        Ok(vec!["user.a".into(), "user.big".into(), "user.c".into()])
    );
    // On a directory, and kept per inode (a hard link shares them).
    std::fs::create_dir(p(&m, "d")).unwrap();
    setxattr(&p(&m, "d"), "user.dir", b"on a dir", 0).unwrap();
    assert_eq!(
        getxattr(&p(&m, "d"), "user.dir", 100),
        Ok((8, b"on a dir".to_vec()))
    );
    std::fs::hard_link(&f, p(&m, "link")).unwrap();
    assert_eq!(
        getxattr(&p(&m, "link"), "user.c", 100),
        Ok((5, b"gamma".to_vec()))
    );
    // Missing files: ENOENT.
    assert_eq!(
        setxattr(&p(&m, "missing"), "user.a", b"x", 0),
        Err(libc::ENOENT)
    );
    // Removing the file removes its xattrs: a new file of that name has none.
    std::fs::remove_file(&f).unwrap();
    std::fs::remove_file(p(&m, "link")).unwrap();
    write_file(&f, b"new");
    assert_eq!(listxattr(&f), Ok(vec![]));
    m.stop();
}

#[test]
fn posix_mmap_read_and_write() {
    if !util::require_fuse("posix_mmap_read_and_write") {
        return;
    }
    let m = Mounted::start();
    let path = p(&m, "mapped");
    let data = pattern(11, 3 * 65_536 + 1234);
    write_file(&path, &data);
    {
        let f = File::open(&path).unwrap();
        let len = data.len();
        // SAFETY: read-only shared mapping of an open file, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap: errno {}", errno());
        // SAFETY: the mapping is `len` bytes long and readable.
        let mapped = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
        assert!(mapped == &data[..], "mmap content differs from the file");
        // SAFETY: unmapping the mapping created above.
        unsafe { libc::munmap(addr, len) };
    }
    // A shared writable mapping, msync'ed, is what read() returns afterwards.
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let len = 2 * 65_536;
        // SAFETY: shared read-write mapping of an open file, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap rw: errno {}", errno());
        // SAFETY: the mapping is `len` bytes long and writable.
        let mapped = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
        mapped[100..108].copy_from_slice(b"MMAPPED!");
        mapped[65_540..65_544].copy_from_slice(b"2nd!");
        // SAFETY: msync/munmap of the mapping above.
        unsafe {
            assert_eq!(
                libc::msync(addr, len, libc::MS_SYNC),
                0,
                "msync: errno {}",
                errno()
            );
            libc::munmap(addr, len);
        }
    }
    let mut expect = data.clone();
    expect[100..108].copy_from_slice(b"MMAPPED!");
    expect[65_540..65_544].copy_from_slice(b"2nd!");
    assert!(read_file(&path) == expect, "read after mmap write differs");
    // And it survives a remount (it reached the store, not only the page cache).
    let (data_dir, mnt) = (m.data.clone(), m.mnt.clone());
    m.stop();
    let m = Mounted::start_at(&data_dir, &mnt, &[]);
    assert!(
        read_file(&p(&m, "mapped")) == expect,
        "mmap write lost across remount"
    );
    m.stop();
}

#[test]
fn posix_remount_preserves_tree() {
    if !util::require_fuse("posix_remount_preserves_tree") {
        return;
    }
    let m = Mounted::start();
    let r = |s: &str| p(&m, s);
    std::fs::create_dir_all(r("a/b/c")).unwrap();
    std::fs::create_dir(r("empty")).unwrap();
    write_file(&r("a/small"), b"small file");
    write_file(&r("a/b/block"), &pattern(21, 65_536));
    write_file(&r("a/b/c/multi"), &pattern(22, 5 * 65_536 + 17));
    write_file(&r("zero"), b"");
    {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(r("sparse"))
            .unwrap();
        f.write_all_at(b"far", 30 << 20).unwrap();
    }
    std::fs::hard_link(r("a/small"), r("a/b/small-link")).unwrap();
    std::os::unix::fs::symlink("a/b/c/multi", r("sym")).unwrap();
    std::os::unix::fs::symlink("dangling/target", r("a/dang")).unwrap();
    chmod(&r("a/small"), 0o600).unwrap();
    chmod(&r("a/b"), 0o711).unwrap();
    chown(&r("a/b/block"), 1001, 1002).unwrap();
    setxattr(&r("a/b/c/multi"), "user.k", b"v", 0).unwrap();
    setxattr(&r("empty"), "user.dir", b"dv", 0).unwrap();
    utimens(&r("zero"), Some([(111, 0), (222, 333)])).unwrap();
    // Renames and removals before the remount, so that the store has history.
    write_file(&r("gone"), b"to be removed");
    std::fs::remove_file(r("gone")).unwrap();
    write_file(&r("old-name"), b"renamed");
    std::fs::rename(r("old-name"), r("a/new-name")).unwrap();

    let before = util::tree_manifest(&m.mnt);
    assert!(before.len() >= 13, "manifest too small: {before:?}");
    let (data_dir, mnt) = (m.data.clone(), m.mnt.clone());
    m.stop();
    let m = Mounted::start_at(&data_dir, &mnt, &[]);
    let after = util::tree_manifest(&m.mnt);
    let diff = util::manifest_diff("before", &before, "after remount", &after);
    assert!(
        diff.is_empty(),
        "tree changed across remount:\n{}",
        diff.join("\n")
    );
    // And the store is still writable after the remount.
    write_file(&p(&m, "after"), b"written after remount");
    assert_eq!(read_file(&p(&m, "after")), b"written after remount");
    let (data_dir, mnt) = (m.data.clone(), m.mnt.clone());
    m.stop();
    // A third mount sees both.
    let m = Mounted::start_at(&data_dir, &mnt, &[]);
    let third = util::tree_manifest(&m.mnt);
    assert_eq!(third.len(), before.len() + 1);
    assert_eq!(read_file(&p(&m, "after")), b"written after remount");
    m.stop();
}

#[test]
fn posix_concurrent_writers() {
    if !util::require_fuse("posix_concurrent_writers") {
        return;
    }
    // Several threads at once (the daemon runs several FUSE threads): each
    // writes its own file and its own stripe of a shared file.
    const THREADS: usize = 8;
    const STRIPE: usize = 3 * 65_536 + 100; // not block aligned: stripes share blocks
    let m = Mounted::start();
    let shared = p(&m, "shared");
    File::create(&shared).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let own = p(&m, &format!("own-{t}"));
            let shared = shared.clone();
            std::thread::spawn(move || {
                let data = pattern(100 + t as u64, 2 << 20);
                let mut f = File::create(&own).unwrap();
                for chunk in data.chunks(100_000) {
                    f.write_all(chunk).unwrap();
                }
                f.sync_all().unwrap();
                let s = OpenOptions::new().write(true).open(&shared).unwrap();
                let stripe = pattern(200 + t as u64, STRIPE);
                for (i, chunk) in stripe.chunks(10_000).enumerate() {
                    s.write_all_at(chunk, (t * STRIPE + i * 10_000) as u64)
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for t in 0..THREADS {
        let got = read_file(&p(&m, &format!("own-{t}")));
        assert!(
            got == pattern(100 + t as u64, 2 << 20),
            "own-{t} content differs"
        );
    }
    let got = read_file(&shared);
    assert_eq!(got.len(), THREADS * STRIPE);
    for t in 0..THREADS {
        assert!(
            got[t * STRIPE..(t + 1) * STRIPE] == pattern(200 + t as u64, STRIPE)[..],
            "stripe {t} of the shared file differs"
        );
    }
    // And the same after a remount (nothing stayed only in a cache).
    let (data_dir, mnt) = (m.data.clone(), m.mnt.clone());
    m.stop();
    let m = Mounted::start_at(&data_dir, &mnt, &[]);
    let again = read_file(&p(&m, "shared"));
    assert!(again == got, "shared file differs after remount");
    m.stop();
}

#[test]
fn posix_open_files_survive_unlink_and_rename_over() {
    if !util::require_fuse("posix_open_files_survive_unlink_and_rename_over") {
        return;
    }
    let m = Mounted::start();
    write_file(&p(&m, "victim"), b"old content");
    write_file(&p(&m, "replacement"), b"new content");
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p(&m, "victim"))
        .unwrap();
    // Replace the name while the file is open: the descriptor keeps the old inode.
    std::fs::rename(p(&m, "replacement"), p(&m, "victim")).unwrap();
    assert_eq!(read_file(&p(&m, "victim")), b"new content");
    let mut buf = vec![0u8; 64];
    let n = held.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"old content");
    // It can still be written and grown, and that does not touch the new file.
    held.write_all_at(b"-and-more", 11).unwrap();
    held.sync_all().unwrap();
    assert_eq!(held.metadata().unwrap().len(), 20);
    assert_eq!(held.metadata().unwrap().nlink(), 0);
    let n = held.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"old content-and-more");
    assert_eq!(read_file(&p(&m, "victim")), b"new content");
    drop(held);
    // A big unlinked file that is still open stays readable until closed;
    // then it is gone from the tree (also after a remount, below).
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p(&m, "big"))
        .unwrap();
    f.write_all_at(&pattern(7, 8 << 20), 0).unwrap();
    f.sync_all().unwrap();
    std::fs::remove_file(p(&m, "big")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 8 << 20);
    let mut head = [0u8; 16];
    f.read_exact_at(&mut head, (4 << 20) - 8).unwrap();
    assert!(head[..] == pattern(7, 8 << 20)[(4 << 20) - 8..(4 << 20) + 8]);
    drop(f);
    let names: Vec<String> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["victim"]);
    // After a remount nothing of the orphans is visible.
    let (data_dir, mnt) = (m.data.clone(), m.mnt.clone());
    m.stop();
    let m = Mounted::start_at(&data_dir, &mnt, &[]);
    let tree = util::tree_manifest(&m.mnt);
    assert_eq!(tree.keys().collect::<Vec<_>>(), ["victim"]);
    assert_eq!(read_file(&p(&m, "victim")), b"new content");
    m.stop();
}

#[test]
fn posix_names_types_and_dots() {
    if !util::require_fuse("posix_names_types_and_dots") {
        return;
    }
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let m = Mounted::start();
    // Unusual but legal names, including bytes that are not UTF-8.
    let names: Vec<&[u8]> = vec![
        b"with space",
        b"new\nline",
        "\u{00e9}t\u{00e9} \u{1f600}".as_bytes(),
        b"\xff\xfe-not-utf8",
        b"-leading-dash",
        b".hidden",
        b"...",
    ];
    for (i, n) in names.iter().enumerate() {
        write_file(&m.mnt.join(OsStr::from_bytes(n)), format!("{i}").as_bytes());
    }
    let max = "n".repeat(255);
    write_file(&p(&m, &max), b"max");
    assert_eq!(read_file(&p(&m, &max)), b"max");
    // One byte longer than NAME_MAX: ENAMETOOLONG, as on ext4.
    let too_long = "n".repeat(256);
    assert_eq!(io_errno(File::create(p(&m, &too_long))), libc::ENAMETOOLONG);
    assert_eq!(
        io_errno(std::fs::create_dir(p(&m, &too_long))),
        libc::ENAMETOOLONG
    );
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            read_file(&m.mnt.join(OsStr::from_bytes(n))),
            format!("{i}").as_bytes()
        );
    }
    std::fs::create_dir(p(&m, "dir")).unwrap();
    std::os::unix::fs::symlink("dir", p(&m, "link")).unwrap();
    // readdir: exact byte names, d_type, "." and "..".
    let c = cpath(&m.mnt);
    // SAFETY: valid C string; the stream is closed below.
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!d.is_null());
    let mut seen: Vec<(Vec<u8>, u8)> = Vec::new();
    for _ in 0..1000 {
        // SAFETY: `d` is an open stream.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            break;
        }
        // SAFETY: valid entry with a NUL-terminated name.
        let (name, ty) = unsafe {
            (
                CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes().to_vec(),
                (*ent).d_type,
            )
        };
        seen.push((name, ty));
    }
    // SAFETY: closing the stream opened above.
    unsafe { libc::closedir(d) };
    let find = |n: &[u8]| seen.iter().find(|(name, _)| name == n).map(|e| e.1);
    assert_eq!(
        find(b"."),
        Some(libc::DT_DIR),
        "'.' missing or not a directory: {seen:?}"
    );
    assert_eq!(
        find(b".."),
        Some(libc::DT_DIR),
        "'..' missing or not a directory"
    );
    assert_eq!(find(b"dir"), Some(libc::DT_DIR));
    assert_eq!(find(b"link"), Some(libc::DT_LNK));
    assert_eq!(find(max.as_bytes()), Some(libc::DT_REG));
    for n in &names {
        assert_eq!(
            find(n),
            Some(libc::DT_REG),
            "{:?}",
            String::from_utf8_lossy(n)
        );
    }
    assert_eq!(seen.len(), 2 + names.len() + 3);
    // ".." of a subdirectory is the parent; "." is itself.
    let root_ino = std::fs::metadata(&m.mnt).unwrap().ino();
    assert_eq!(std::fs::metadata(p(&m, "dir/..")).unwrap().ino(), root_ino);
    assert_eq!(
        std::fs::metadata(p(&m, "dir/.")).unwrap().ino(),
        std::fs::metadata(p(&m, "dir")).unwrap().ino()
    );
    // Writes move mtime forward (explicitly set into the past first).
    utimens(&p(&m, "dir"), Some([(1_000, 0), (1_000, 0)])).unwrap();
    let f = p(&m, "with space");
    utimens(&f, Some([(1_000, 0), (1_000, 0)])).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .write_all_at(b"x", 0)
        .unwrap();
    assert!(
        std::fs::metadata(&f).unwrap().mtime() > 1_000,
        "write must update mtime"
    );
    write_file(&p(&m, "dir/new"), b"");
    assert!(
        std::fs::metadata(p(&m, "dir")).unwrap().mtime() > 1_000,
        "creating an entry must update the directory's mtime"
    );
    m.stop();
}

/// Issue 13: the mount is `nosuid,nodev` by default (a setuid binary or a
/// device node written to the web root, or replicated from the peer, is no way
/// to root on this node), while the mode bits themselves are kept.
#[test]
fn posix_mount_is_nosuid_nodev_by_default() {
    if !util::require_fuse("posix_mount_is_nosuid_nodev_by_default") {
        return;
    }
    let m = Mounted::start();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = m.mnt.canonicalize().unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} not in /proc/self/mountinfo", mnt.display()));
    let opts: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    assert!(opts.contains(&"nosuid"), "mount options {opts:?}");
    assert!(opts.contains(&"nodev"), "mount options {opts:?}");
    let f = m.mnt.join("setuid");
    write_file(&f, b"#!/bin/sh\n");
    chmod(&f, 0o4755).unwrap();
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
        0o4755
    );
}

/// What writes, truncates and chowns take away: the kernel leaves it to the
/// filesystem (FUSE_HANDLE_KILLPRIV_V2, which saves a GETXATTR round trip per
/// write), so each case runs on the mount and on a native directory of the
/// same machine, and the resulting modes and capabilities must agree.
#[test]
fn posix_write_truncate_chown_drop_setuid_and_capabilities() {
    if !util::require_fuse("posix_write_truncate_chown_drop_setuid_and_capabilities") {
        return;
    }
    let m = Mounted::start();
    chmod(&m.mnt, 0o755).unwrap();
    let native = util::tempdir("killpriv-native");
    // A file capability (VFS_CAP_REVISION_2, effective, CAP_NET_BIND_SERVICE).
    let mut caps = Vec::new();
    for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        caps.extend_from_slice(&w.to_le_bytes());
    }
    let run = |dir: &Path| -> Vec<(&'static str, u32, bool)> {
        let make = |name: &str, mode: u32, owner: u32| {
            let f = dir.join(name);
            write_file(&f, &[7u8; 8192]);
            chown(&f, owner, owner).unwrap();
            chmod(&f, mode).unwrap();
            f
        };
        let user_write = make("user_write", 0o6775, 1001);
        let sgid_no_x = make("sgid_no_x", 0o2764, 1001);
        let root_write = make("root_write", 0o6775, 1001);
        let user_trunc = make("user_trunc", 0o4755, 1001);
        let root_chown = make("root_chown", 0o6755, 1001);
        let cap_write = make("cap_write", 0o755, 0);
        setxattr(&cap_write, "security.capability", &caps, 0).unwrap();
        let cap_kept = make("cap_kept", 0o755, 0);
        setxattr(&cap_kept, "security.capability", &caps, 0).unwrap();

        let files = [user_write.clone(), sgid_no_x.clone(), user_trunc.clone()];
        util::as_user(1001, 1001, move || {
            for f in &files[..2] {
                let file = OpenOptions::new().write(true).open(f).unwrap();
                file.write_at(b"user data", 100).unwrap();
            }
            let file = OpenOptions::new().write(true).open(&files[2]).unwrap();
            file.set_len(10).unwrap();
        });
        OpenOptions::new()
            .write(true)
            .open(&root_write)
            .unwrap()
            .write_at(b"root data", 100)
            .unwrap();
        chown(&root_chown, 1002, 1002).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&cap_write)
            .unwrap()
            .write_at(b"x", 0)
            .unwrap();
        let names = [
            "user_write",
            "sgid_no_x",
            "root_write",
            "user_trunc",
            "root_chown",
            "cap_write",
            "cap_kept",
        ];
        names
            .iter()
            .map(|n| {
                let f = dir.join(n);
                let mode = std::fs::metadata(&f).unwrap().mode() & 0o7777;
                let has_caps = getxattr(&f, "security.capability", 0).is_ok();
                (*n, mode, has_caps)
            })
            .collect()
    };
    let on_mount = run(&m.mnt);
    let on_native = run(native.path());
    assert_eq!(on_mount, on_native, "mount vs native filesystem");
    // And what that is, so that a kernel change shows up here too.
    let expect = [
        ("user_write", 0o0775, false),
        ("sgid_no_x", 0o2764, false),
        ("root_write", 0o6775, false),
        ("user_trunc", 0o0755, false),
        ("root_chown", 0o0755, false),
        ("cap_write", 0o0755, false),
        ("cap_kept", 0o0755, true),
    ];
    assert_eq!(on_mount, expect);
    m.stop();
}
