//! Acceptance: a malformed or unknown-key config, a missing or unwritable data
//! dir, a mountpoint that is busy or missing, a store written by an
//! incompatible version, and a store already in use: each gets one clear error
//! line (`twinfs: error: ...` naming the precise detail), a non-zero exit, and
//! no change on disk.
//!
//! A daemon that wrongly accepts its input would mount and run in the
//! foreground; `run_mount` notices a new mount, kills it (by pid), unmounts,
//! and fails the test, so a regression costs seconds, not a hung test.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use crate::harness::util;

/// How long a `twinfs mount` that must fail may take to fail.
const FAIL_TIMEOUT: Duration = Duration::from_secs(20);

/// Exit code for usage/config errors (contract).
const EXIT_CONFIG: i32 = 2;

// ---------------------------------------------------------------------------
// Helpers

/// Number of mounts stacked exactly at `mnt` (paths here have no spaces).
fn mounts_at(mnt: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mnt.to_string_lossy();
    text.lines()
        .filter(|l| l.split(' ').nth(4) == Some(&*want))
        .count()
}

/// Runs `twinfs mount ARGS...`, which is expected to fail. If it mounts
/// anything at `mnt` or outlives `FAIL_TIMEOUT`, it is killed (by pid), the
/// mount it made is lazily unmounted, and the test fails.
fn run_mount(args: &[&str], mnt: &Path) -> Output {
    let baseline = mounts_at(mnt);
    let mut cmd = Command::new(util::twinfs_bin());
    cmd.arg("mount").args(args);
    let mut cap = util::spawn_captured(&mut cmd).unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    enum Wait {
        Exited(ExitStatus),
        Mounted,
    }
    let waited = util::poll_until(FAIL_TIMEOUT, || {
        if let Ok(Some(status)) = cap.child.try_wait() {
            Some(Wait::Exited(status))
        } else if mounts_at(mnt) > baseline {
            Some(Wait::Mounted)
        } else {
            None
        }
    });
    let problem = match waited {
        Some(Wait::Exited(status)) => return cap.output(status),
        Some(Wait::Mounted) => format!("it mounted {} instead of failing", mnt.display()),
        None => format!("it was still running after {FAIL_TIMEOUT:?}"),
    };
    let status = util::kill_child(&mut cap.child);
    if mounts_at(mnt) > baseline {
        util::lazy_unmount(mnt);
    }
    let stderr = match status {
        Some(status) => String::from_utf8_lossy(&cap.output(status).stderr).into_owned(),
        None => String::from("(could not reap the child)"),
    };
    panic!("{cmd:?} must fail, but {problem}; stderr:\n{stderr}");
}

/// Asserts the failure shape: exit code (exactly `code`, or 1 or 2 when `None`),
/// exactly one `twinfs: error:` line on stderr that contains every `needle`,
/// and no panic or multi-line error chain.
fn assert_one_error(case: &str, out: &Output, code: Option<i32>, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let ctx = format!("{case}: exit {}; stderr:\n{stderr}", out.status);
    match code {
        Some(c) => assert_eq!(out.status.code(), Some(c), "{ctx}"),
        None => assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{ctx}\n(expected exit code 1 or 2, as the contract says)"
        ),
    }
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("twinfs: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one `twinfs: error:` line expected; {ctx}"
    );
    let line = errors[0];
    eprintln!("{case}: {line}");
    for n in needles {
        assert!(line.contains(n), "the error line must contain {n:?}; {ctx}");
    }
    for bad in ["panicked", "Caused by", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{bad:?} on stderr; {ctx}");
    }
    line.to_string()
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(PathBuf),
    Other(u32),
}

/// Every path under `root` (and `root` itself) with its type, mode and contents.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut map = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut budget = 100_000usize;
    while let Some(p) = stack.pop() {
        budget = budget.checked_sub(1).expect("snapshot: too many entries");
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = md.permissions().mode();
        let node = if md.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir").flatten() {
                stack.push(e.path());
            }
            Node::Dir(mode)
        } else if md.is_file() {
            Node::File(mode, std::fs::read(&p).expect("read file"))
        } else if md.file_type().is_symlink() {
            Node::Link(std::fs::read_link(&p).expect("readlink"))
        } else {
            Node::Other(mode)
        };
        map.insert(p, node);
    }
    map
}

fn assert_unchanged(case: &str, before: &BTreeMap<PathBuf, Node>, root: &Path) {
    let after = snapshot(root);
    if &after == before {
        return;
    }
    let mut diffs = Vec::new();
    for (p, n) in before {
        match after.get(p) {
            None => diffs.push(format!("removed {}", p.display())),
            Some(m) if m != n => diffs.push(format!("changed {}", p.display())),
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        diffs.push(format!("created {}", p.display()));
    }
    panic!(
        "{case}: the failed mount changed the disk under {}: {diffs:#?}",
        root.display()
    );
}

/// A scratch area for one test: `root/` (dropped after everything in it is unmounted).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: util::tempdir("twinfs-badinput-"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A directory of mode 0700 (a data dir must be; a mount point may be).
    fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        util::private_dir(&p);
        p
    }

    /// An initialised store holding one file, made by a real mount and a clean stop.
    fn store(&self, name: &str) -> PathBuf {
        let data = self.mkdir(name);
        let mnt = self.mkdir(&format!("{name}-initmnt"));
        let m = util::Mounted::start_at(&data, &mnt, &[]);
        std::fs::write(m.mnt.join("hello.txt"), b"hello\n").expect("write hello.txt");
        m.stop();
        assert!(
            data.join("store.toml").is_file(),
            "a mounted store has store.toml (contract)"
        );
        data
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------
// Config file

/// Writes `text` as a config and checks that `mount --config` fails with one
/// error line containing every needle, exit 2, and nothing on disk changes.
fn config_case(case: &str, text: &str, line: usize, needles: &[&str]) {
    let sc = Scratch::new();
    let data = sc.store("data");
    let mnt = sc.mkdir("mnt");
    let conf = sc.path("twinfs.toml");
    std::fs::write(&conf, text).expect("write config");
    let before = snapshot(sc.dir.path());
    let out = run_mount(
        &["--config", s(&conf), "--data-dir", s(&data), s(&mnt)],
        &mnt,
    );
    // `FILE:LINE: ...` (see src/config.rs).
    let at = format!("{}:{line}:", conf.display());
    let mut all: Vec<&str> = vec![&at];
    all.extend_from_slice(needles);
    assert_one_error(case, &out, Some(EXIT_CONFIG), &all);
    assert_unchanged(case, &before, sc.dir.path());
    assert_eq!(mounts_at(&mnt), 0, "{case}: nothing may be mounted");
}

#[test]
fn badinput_config_toml_syntax_error_names_file_and_line() {
    if !util::require_fuse("badinput_config_toml_syntax_error_names_file_and_line") {
        return;
    }
    // Line 3 is broken; lines 1 and 2 are fine.
    config_case(
        "TOML syntax error",
        "# twinfs test config\n[fs]\nthreads = = 4\n[log]\nlevel = \"info\"\n",
        3,
        &["invalid TOML"],
    );
}

#[test]
fn badinput_config_unknown_key_names_the_field() {
    if !util::require_fuse("badinput_config_unknown_key_names_the_field") {
        return;
    }
    config_case(
        "unknown key",
        "[fs]\nthreads = 2\nbogus = true\n",
        3,
        &["fs.bogus"],
    );
}

#[test]
fn badinput_config_wrong_type_names_the_field() {
    if !util::require_fuse("badinput_config_wrong_type_names_the_field") {
        return;
    }
    config_case(
        "wrong type",
        "[node]\n\n[fs]\nwriteback_cache = true\nthreads = \"four\"\n",
        5,
        &["fs.threads"],
    );
}

#[test]
fn badinput_config_out_of_range_value_names_the_field() {
    if !util::require_fuse("badinput_config_out_of_range_value_names_the_field") {
        return;
    }
    config_case("out of range", "[fs]\nthreads = 0\n", 2, &["fs.threads"]);
}

#[test]
fn badinput_config_file_missing_names_the_path() {
    if !util::require_fuse("badinput_config_file_missing_names_the_path") {
        return;
    }
    let sc = Scratch::new();
    let data = sc.store("data");
    let mnt = sc.mkdir("mnt");
    let conf = sc.path("no-such-config.toml");
    let before = snapshot(sc.dir.path());
    let out = run_mount(
        &["--config", s(&conf), "--data-dir", s(&data), s(&mnt)],
        &mnt,
    );
    assert_one_error("missing config file", &out, Some(EXIT_CONFIG), &[s(&conf)]);
    assert_unchanged("missing config file", &before, sc.dir.path());
}

// ---------------------------------------------------------------------------
// Data dir

#[test]
fn badinput_missing_data_dir_names_the_path() {
    if !util::require_fuse("badinput_missing_data_dir_names_the_path") {
        return;
    }
    let sc = Scratch::new();
    let mnt = sc.mkdir("mnt");
    let data = sc.path("no-such-data");
    let before = snapshot(sc.dir.path());
    let out = run_mount(&["--data-dir", s(&data), s(&mnt)], &mnt);
    assert_one_error("missing data dir", &out, None, &[s(&data)]);
    assert_unchanged("missing data dir", &before, sc.dir.path());
    assert!(!data.exists(), "a missing data dir must not be created");
}

/// Issue 13: a data dir that other users can read or write is refused with one
/// line naming the path and the mode, exit code 2, and nothing is written.
#[test]
fn badinput_data_dir_others_can_read_is_refused_with_its_mode() {
    if !util::require_fuse("badinput_data_dir_others_can_read_is_refused_with_its_mode") {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let sc = Scratch::new();
    let mnt = sc.mkdir("mnt");
    let data = sc.mkdir("data");
    for mode in [0o755, 0o750, 0o707] {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        let case = format!("data dir of mode {mode:04o}");
        let before = snapshot(sc.dir.path());
        let out = run_mount(&["--data-dir", s(&data), s(&mnt)], &mnt);
        let want_mode = format!("is mode {mode:04o}");
        let line = assert_one_error(&case, &out, Some(2), &[s(&data), &want_mode, "chmod 700"]);
        assert!(line.contains("other users"), "{case}: {line}");
        assert_unchanged(&case, &before, sc.dir.path());
        assert_eq!(mounts_at(&mnt), 0, "{case}: nothing may be mounted");
    }
}

/// A read-only bind mount of `src` at `dst` (root ignores modes, not EROFS);
/// unmounted on drop.
struct RoBind {
    dst: PathBuf,
}

impl RoBind {
    fn new(src: &Path, dst: &Path) -> RoBind {
        let run = |args: &[&str]| {
            let out = Command::new("mount")
                .args(args)
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["--bind", s(src), s(dst)]);
        let guard = RoBind {
            dst: dst.to_path_buf(),
        };
        run(&["-o", "remount,bind,ro", s(dst)]);
        guard
    }
}

impl Drop for RoBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dst).output();
        if mounts_at(&self.dst) > 0 {
            let _ = Command::new("umount").arg("-l").arg(&self.dst).output();
        }
    }
}

#[test]
fn badinput_unwritable_data_dir_names_the_path() {
    if !util::require_fuse("badinput_unwritable_data_dir_names_the_path") {
        return;
    }
    let sc = Scratch::new();
    let mnt = sc.mkdir("mnt");
    // An empty dir (would be initialised) and an existing store, both read-only.
    let empty_src = sc.mkdir("empty-src");
    let store_src = sc.store("store-src");
    let cases = [("empty", empty_src), ("store", store_src)];
    for (what, src) in cases {
        let case = format!("read-only data dir ({what})");
        let ro = sc.mkdir(&format!("{what}-ro"));
        let bind = RoBind::new(&src, &ro);
        let before = snapshot(&src);
        let out = run_mount(&["--data-dir", s(&ro), s(&mnt)], &mnt);
        assert_one_error(&case, &out, None, &[s(&ro)]);
        drop(bind);
        assert_unchanged(&case, &before, &src);
        assert_eq!(mounts_at(&mnt), 0, "{case}: nothing may be mounted");
    }
}

#[test]
fn badinput_data_dir_in_use_is_refused() {
    if !util::require_fuse("badinput_data_dir_in_use_is_refused") {
        return;
    }
    let sc = Scratch::new();
    let data = sc.mkdir("data");
    let mnt1 = sc.mkdir("mnt1");
    let mnt2 = sc.mkdir("mnt2");
    let first = util::Mounted::start_at(&data, &mnt1, &[]);
    std::fs::write(first.mnt.join("a.txt"), b"first\n").expect("write via first mount");
    let data = first.data.clone();
    let mnt2 = mnt2.canonicalize().expect("canonicalize");

    let out = run_mount(&["--data-dir", s(&data), s(&mnt2)], &mnt2);
    let line = assert_one_error("data dir in use", &out, None, &[s(&data)]);
    let lower = line.to_lowercase();
    assert!(
        lower.contains("in use") || lower.contains("lock") || lower.contains("another"),
        "the error should say the store is in use (LOCK held): {line}"
    );
    assert_eq!(mounts_at(&mnt2), 0, "the second daemon must not mount");

    // The first daemon is unaffected.
    std::fs::write(first.mnt.join("b.txt"), b"still here\n")
        .expect("write after refused second daemon");
    assert_eq!(
        std::fs::read(first.mnt.join("a.txt")).expect("read a.txt"),
        b"first\n"
    );
    assert_eq!(
        std::fs::read(first.mnt.join("b.txt")).expect("read b.txt"),
        b"still here\n"
    );
    first.stop();
}

#[test]
fn badinput_incompatible_store_format_is_refused() {
    if !util::require_fuse("badinput_incompatible_store_format_is_refused") {
        return;
    }
    let sc = Scratch::new();
    let data = sc.store("data");
    let mnt = sc.mkdir("mnt");
    let marker = data.join("store.toml");
    let text = std::fs::read_to_string(&marker).expect("read store.toml");
    let mut replaced = false;
    let new: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("format") && l.contains('=') {
                replaced = true;
                "format = 99".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert!(
        replaced,
        "store.toml has no `format = N` line (contract):\n{text}"
    );
    std::fs::write(&marker, new).expect("write store.toml");

    let before = snapshot(sc.dir.path());
    let out = run_mount(&["--data-dir", s(&data), s(&mnt)], &mnt);
    assert_one_error("store format 99", &out, None, &["format", "99"]);
    assert_unchanged("store format 99", &before, sc.dir.path());
    assert_eq!(mounts_at(&mnt), 0, "nothing may be mounted");

    // verify refuses it the same way instead of misreading it.
    let out = util::run_twinfs(&["verify", "--data-dir", s(&data)]);
    assert!(
        !out.status.success(),
        "verify of a format-99 store must fail"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .filter(|l| l.starts_with("twinfs: error:"))
            .any(|l| l.contains("format")),
        "verify of a format-99 store: {stderr}"
    );
    assert_unchanged("verify of store format 99", &before, sc.dir.path());
}

// ---------------------------------------------------------------------------
// Mountpoint

#[test]
fn badinput_missing_mountpoint_names_the_path() {
    if !util::require_fuse("badinput_missing_mountpoint_names_the_path") {
        return;
    }
    let sc = Scratch::new();
    let store = sc.store("store");
    let empty = sc.mkdir("empty");
    let mnt = sc.path("no-such-mnt");
    // An empty data dir must not be initialised before the mountpoint is checked.
    for data in [&store, &empty] {
        let case = format!("missing mountpoint (data dir {})", data.display());
        let before = snapshot(sc.dir.path());
        let out = run_mount(&["--data-dir", s(data), s(&mnt)], &mnt);
        assert_one_error(&case, &out, None, &[s(&mnt)]);
        assert_unchanged(&case, &before, sc.dir.path());
        assert!(!mnt.exists(), "{case}: the mountpoint must not be created");
    }
}

#[test]
fn badinput_busy_mountpoint_is_refused_and_first_mount_keeps_working() {
    if !util::require_fuse("badinput_busy_mountpoint_is_refused_and_first_mount_keeps_working") {
        return;
    }
    let sc = Scratch::new();
    let data_a = sc.mkdir("data-a");
    let data_b = sc.store("data-b");
    let mnt = sc.mkdir("mnt");
    let first = util::Mounted::start_at(&data_a, &mnt, &[]);
    std::fs::write(first.mnt.join("a.txt"), b"first\n").expect("write via first mount");
    let mnt = first.mnt.clone();
    assert_eq!(mounts_at(&mnt), 1);

    let before = snapshot(&data_b);
    let out = run_mount(&["--data-dir", s(&data_b), s(&mnt)], &mnt);
    assert_one_error("busy mountpoint", &out, None, &[s(&mnt)]);
    assert_unchanged("busy mountpoint", &before, &data_b);
    assert_eq!(
        mounts_at(&mnt),
        1,
        "the second daemon must not stack a mount on the first"
    );

    // The first mount still works.
    assert_eq!(util::mounted_fstype(&mnt).as_deref(), Some("fuse.twinfs"));
    std::fs::write(mnt.join("b.txt"), b"still here\n").expect("write after refused second daemon");
    assert_eq!(
        std::fs::read(mnt.join("a.txt")).expect("read a.txt"),
        b"first\n"
    );
    assert_eq!(
        std::fs::read(mnt.join("b.txt")).expect("read b.txt"),
        b"still here\n"
    );
    first.stop();
}
