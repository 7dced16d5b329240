//! Acceptance: kill -9 the daemon in the middle of a write-heavy workload,
//! remount, and check that every file whose fsync returned before the kill is
//! intact, and that `twinfs verify` is clean. Three rounds on the same store.
//!
//! The writers create files (1 byte to 2 MiB), append to them and overwrite
//! parts of them, and fsync (or fdatasync) after each operation. A file's
//! expected content is kept as a recipe of the writes that built it, so the
//! check after the crash compares bytes, not hashes. A file is taken out of
//! the expected set *before* a writer touches it again and put back only once
//! the next fsync returns: unsynced data may legitimately be anything after a
//! crash, so a file in flux at the kill is not checked.
//!
//! twinfs's store is one ordered log, so syncing a file makes every earlier
//! mutation durable, including the creation of the file's name and of its
//! directories; the test therefore does not fsync directories.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::util::{self, pattern, TestRng};

const ROUNDS: usize = 3;
const WRITERS: usize = 3;
/// After this many bytes in a round a writer keeps going with small files only
/// (still busy, but the store does not grow without bound).
const BYTE_CAP_PER_WRITER: u64 = 96 << 20;
/// How long a round's workload runs before the kill (plus `round * ROUND_STEP`).
const RUN_BEFORE_KILL: Duration = Duration::from_millis(1000);
const ROUND_STEP: Duration = Duration::from_millis(300);
/// The most a round waits for every writer to have synced at least one file.
const FIRST_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long writers may take to notice the dead mount and stop.
const WRITER_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard bounds on a writer's loop, whatever happens.
const WRITER_MAX_OPS: usize = 200_000;
const WRITER_MAX_TIME: Duration = Duration::from_secs(90);

/// One step of a file's history.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// `pattern(seed, len)` written at `off`.
    Write { off: u64, len: usize, seed: u64 },
    /// ftruncate to this length.
    Truncate(u64),
}

/// Replays a recipe into the bytes the file must hold.
fn build(steps: &[Step]) -> Vec<u8> {
    let mut v = Vec::new();
    for s in steps {
        match *s {
            Step::Write { off, len, seed } => {
                let off = off as usize;
                if v.len() < off + len {
                    v.resize(off + len, 0);
                }
                v[off..off + len].copy_from_slice(&pattern(seed, len));
            }
            Step::Truncate(n) => v.resize(n as usize, 0),
        }
    }
    v
}

/// Files whose last fsync returned, with their recipes (relative path → steps).
type Synced = Arc<Mutex<BTreeMap<String, Vec<Step>>>>;

fn lock(s: &Synced) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Step>>> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared state of one round's writers.
struct Round {
    mnt: PathBuf,
    round: usize,
    synced: Synced,
    /// Set just before the daemon is killed: an error after this is expected.
    killing: AtomicBool,
    /// Writers that have left their loop.
    finished: AtomicUsize,
    /// Files synced per writer in this round.
    synced_count: [AtomicUsize; WRITERS],
    /// Bytes written per writer in this round.
    written: [AtomicU64; WRITERS],
    /// Errors seen while the daemon was alive (test failures).
    real_errors: Mutex<Vec<String>>,
}

/// A file size between 1 byte and 2 MiB, mostly small.
fn pick_size(rng: &mut TestRng, small_only: bool) -> usize {
    let bucket = if small_only {
        rng.below(3)
    } else {
        rng.below(10)
    };
    let n = match bucket {
        0 => 1,
        1 => 1 + rng.below(100),
        2 => 1 + rng.below(8 << 10),
        3..=5 => 1 + rng.below(256 << 10),
        6..=7 => (64 << 10) * (1 + rng.below(8)), // block multiples
        _ => 1 + rng.below(2 << 20),
    };
    n as usize
}

/// One writer: returns when the round is told to stop or on the first I/O error.
fn writer(r: Arc<Round>, t: usize) {
    let dir_rel = format!("r{}/t{t}", r.round);
    let mut rng = TestRng::new(0x5EED_0000 + (r.round as u64) * 1000 + t as u64);
    // This writer's files that may be touched again: (relative path, recipe).
    let mut mine: Vec<(String, Vec<Step>)> = Vec::new();
    let mut written: u64 = 0;
    let started = Instant::now();

    let fail = |what: String, e: std::io::Error| {
        if !r.killing.load(Ordering::SeqCst) {
            r.real_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("writer {t}: {what}: {e}"));
        }
    };

    if let Err(e) = std::fs::create_dir_all(r.mnt.join(&dir_rel)) {
        fail(format!("mkdir {dir_rel}"), e);
        r.finished.fetch_add(1, Ordering::SeqCst);
        return;
    }

    for op in 0..WRITER_MAX_OPS {
        if r.killing.load(Ordering::SeqCst) || started.elapsed() > WRITER_MAX_TIME {
            break;
        }
        let small_only = written >= BYTE_CAP_PER_WRITER;
        let kind = if mine.is_empty() { 0 } else { rng.below(4) };
        let use_fdatasync = op % 2 == 1;
        let result: Result<(String, Vec<Step>), (String, std::io::Error)> = match kind {
            // New file, written in one or two pieces.
            0 | 1 => {
                let rel = format!("{dir_rel}/f{op:06}");
                let size = pick_size(&mut rng, small_only);
                let mut steps = Vec::new();
                if size > 1 && rng.below(2) == 0 {
                    let cut = 1 + rng.below(size as u64 - 1) as usize;
                    steps.push(Step::Write {
                        off: 0,
                        len: cut,
                        seed: rng.next_u64(),
                    });
                    steps.push(Step::Write {
                        off: cut as u64,
                        len: size - cut,
                        seed: rng.next_u64(),
                    });
                } else {
                    steps.push(Step::Write {
                        off: 0,
                        len: size,
                        seed: rng.next_u64(),
                    });
                }
                written += size as u64;
                apply(&r.mnt, &rel, Mode::Create, &steps, use_fdatasync)
                    .map(|()| (rel.clone(), steps))
                    .map_err(|e| (format!("create {rel}"), e))
            }
            // Append to, or overwrite part of, an earlier file of this writer.
            _ => {
                let i = rng.below(mine.len() as u64) as usize;
                let (rel, mut steps) = mine.swap_remove(i);
                // Out of the expected set before it changes.
                lock(&r.synced).remove(&rel);
                let cur_len = build(&steps).len() as u64;
                let mut new = Vec::new();
                if kind == 2 {
                    let len = pick_size(&mut rng, true);
                    new.push(Step::Write {
                        off: cur_len,
                        len,
                        seed: rng.next_u64(),
                    });
                } else {
                    if cur_len > 1 && rng.below(3) == 0 {
                        new.push(Step::Truncate(rng.below(cur_len)));
                    }
                    let off = rng.below(cur_len + 1);
                    let len = pick_size(&mut rng, true);
                    new.push(Step::Write {
                        off,
                        len,
                        seed: rng.next_u64(),
                    });
                }
                written += new
                    .iter()
                    .map(|s| {
                        if let Step::Write { len, .. } = s {
                            *len as u64
                        } else {
                            0
                        }
                    })
                    .sum::<u64>();
                steps.extend(new.iter().cloned());
                let mode = if kind == 2 {
                    Mode::Append
                } else {
                    Mode::Overwrite
                };
                apply(&r.mnt, &rel, mode, &new, use_fdatasync)
                    .map(|()| (rel.clone(), steps))
                    .map_err(|e| (format!("modify {rel}"), e))
            }
        };
        match result {
            Ok((rel, steps)) => {
                lock(&r.synced).insert(rel.clone(), steps.clone());
                r.synced_count[t].fetch_add(1, Ordering::SeqCst);
                r.written[t].store(written, Ordering::SeqCst);
                mine.push((rel, steps));
                // Keep the set of files that may be touched again small, so most
                // synced files stay checkable.
                if mine.len() > 8 {
                    mine.remove(0);
                }
            }
            Err((what, e)) => {
                fail(what, e);
                break;
            }
        }
    }
    r.finished.fetch_add(1, Ordering::SeqCst);
}

/// Performs `new` on the file `rel` (created when `create`), then fsyncs
/// (or fdatasyncs).
#[derive(Clone, Copy)]
enum Mode {
    Create,
    Append,
    Overwrite,
}

fn apply(mnt: &Path, rel: &str, mode: Mode, new: &[Step], fdatasync: bool) -> std::io::Result<()> {
    let path = mnt.join(rel);
    let mut f: File = match mode {
        Mode::Create => OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?,
        // O_APPEND: the kernel places the write at the end of the file.
        Mode::Append => OpenOptions::new().append(true).open(&path)?,
        Mode::Overwrite => OpenOptions::new().write(true).open(&path)?,
    };
    for s in new {
        match (*s, mode) {
            (Step::Write { len, seed, .. }, Mode::Append) => f.write_all(&pattern(seed, len))?,
            (Step::Write { off, len, seed }, _) => f.write_all_at(&pattern(seed, len), off)?,
            (Step::Truncate(n), _) => f.set_len(n)?,
        }
    }
    if fdatasync {
        f.sync_data()?;
    } else {
        f.sync_all()?;
    }
    Ok(())
}

/// Checks every file in `synced` byte-exact under `mnt`; returns the failures.
fn check_all(mnt: &Path, synced: &BTreeMap<String, Vec<Step>>) -> Vec<String> {
    let mut failures = Vec::new();
    for (rel, steps) in synced {
        let want = build(steps);
        match std::fs::read(mnt.join(rel)) {
            Err(e) => failures.push(format!(
                "{rel}: cannot read: {e} (want {} bytes)",
                want.len()
            )),
            Ok(got) if got != want => {
                let at = got
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(want.len()));
                failures.push(format!(
                    "{rel}: {} bytes, want {}; first difference at byte {at}",
                    got.len(),
                    want.len()
                ));
            }
            Ok(_) => {}
        }
    }
    failures
}

#[test]
fn crash_kill9_keeps_every_fsynced_file_and_verify_is_clean() {
    if !util::require_fuse("crash_kill9_keeps_every_fsynced_file_and_verify_is_clean") {
        return;
    }
    // Declared first so that it is dropped last, after every mount is gone.
    let root = util::tempdir("twinfs-crash-");
    let data = root.path().join("data");
    let mnt = root.path().join("mnt");
    util::private_dir(&data);
    std::fs::create_dir(&mnt).expect("mkdir mnt");

    let synced: Synced = Arc::new(Mutex::new(BTreeMap::new()));
    for round in 0..ROUNDS {
        let mut m = util::Mounted::start_at(&data, &mnt, &[]);
        let r = Arc::new(Round {
            mnt: m.mnt.clone(),
            round,
            synced: Arc::clone(&synced),
            killing: AtomicBool::new(false),
            finished: AtomicUsize::new(0),
            synced_count: std::array::from_fn(|_| AtomicUsize::new(0)),
            written: std::array::from_fn(|_| AtomicU64::new(0)),
            real_errors: Mutex::new(Vec::new()),
        });
        let before = lock(&synced).len();
        let handles: Vec<_> = (0..WRITERS)
            .map(|t| {
                let r = Arc::clone(&r);
                std::thread::spawn(move || writer(r, t))
            })
            .collect();

        // Let the workload run, but never kill before every writer has synced
        // something (a slow filesystem must not make the test vacuous).
        let started = Instant::now();
        let run_for = RUN_BEFORE_KILL + ROUND_STEP * round as u32;
        let max_polls = FIRST_SYNC_TIMEOUT.as_millis() / 10 + 2;
        for _ in 0..max_polls {
            let all_synced = r.synced_count.iter().all(|c| c.load(Ordering::SeqCst) > 0);
            if (all_synced && started.elapsed() >= run_for)
                || r.finished.load(Ordering::SeqCst) > 0
                || started.elapsed() > FIRST_SYNC_TIMEOUT
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let finished_early = r.finished.load(Ordering::SeqCst);
        let counts: Vec<usize> = r
            .synced_count
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect();
        let mib: Vec<u64> = r
            .written
            .iter()
            .map(|c| c.load(Ordering::SeqCst) >> 20)
            .collect();

        // Kill while they write.
        r.killing.store(true, Ordering::SeqCst);
        m.kill9();
        let killed_at = started.elapsed();

        // Writers now fail (ENOTCONN/EIO) or see the flag; wait for them, bounded.
        let deadline = Instant::now() + WRITER_STOP_TIMEOUT;
        while r.finished.load(Ordering::SeqCst) < WRITERS && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            r.finished.load(Ordering::SeqCst),
            WRITERS,
            "round {round}: writers still blocked {WRITER_STOP_TIMEOUT:?} after kill -9 of the daemon"
        );
        for h in handles {
            h.join().expect("writer thread panicked");
        }
        let errors = r
            .real_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        assert!(
            errors.is_empty(),
            "round {round}: I/O errors before the kill: {errors:#?}\ndaemon stderr:\n{}",
            m.stderr_so_far()
        );
        assert_eq!(
            finished_early, 0,
            "round {round}: a writer stopped before the kill"
        );
        assert!(
            counts.iter().all(|&c| c > 0),
            "round {round}: not every writer synced a file within {FIRST_SYNC_TIMEOUT:?}: {counts:?}"
        );
        let expected = lock(&synced).clone();
        eprintln!(
            "crash round {round}: killed after {killed_at:?}; files synced per writer {counts:?} ({mib:?} MiB); \
             {} files expected in total ({} before this round)",
            expected.len(),
            before
        );
        drop(m);

        // Remount the crashed store and check everything ever synced.
        let m = util::Mounted::start_at(&data, &mnt, &[]);
        for l in m
            .stderr_so_far()
            .lines()
            .filter(|l| l.contains("replay") || l.contains("torn"))
        {
            eprintln!("crash round {round}: recovery: {l}");
        }
        let failures = check_all(&m.mnt, &expected);
        if !failures.is_empty() {
            let shown: Vec<_> = failures.iter().take(20).collect();
            panic!(
                "round {round}: {} of {} fsynced files are not intact after kill -9 and remount:\n{shown:#?}\ndaemon stderr:\n{}",
                failures.len(),
                expected.len(),
                m.stderr_so_far()
            );
        }
        // The tree is still a working filesystem: list and write after recovery.
        let listed = std::fs::read_dir(m.mnt.join(format!("r{round}")))
            .expect("read_dir round dir after recovery")
            .count();
        assert_eq!(
            listed, WRITERS,
            "round {round}: writer directories after recovery"
        );
        std::fs::write(m.mnt.join(format!("after-crash-{round}")), b"alive\n")
            .expect("write after recovery");
        m.stop();

        let out = util::run_twinfs(&["verify", "--data-dir", data.to_str().expect("utf-8 path")]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.lines().any(|l| l.trim_start().starts_with("clean")),
            "round {round}: twinfs verify after crash recovery: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }

    // A final clean mount still has the last round's marker file.
    let m = util::Mounted::start_at(&data, &mnt, &[]);
    let failures = check_all(&m.mnt, &lock(&synced));
    assert!(failures.is_empty(), "after the last round: {failures:#?}");
    for round in 0..ROUNDS {
        let p = m.mnt.join(format!("after-crash-{round}"));
        assert_eq!(
            std::fs::read(&p).expect("read marker"),
            b"alive\n",
            "{}",
            p.display()
        );
    }
    m.stop();
}
