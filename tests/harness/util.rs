//! The lab fixture shared by every end-to-end test: the `twinfs` binary, the
//! FUSE gate, and `Mounted`, one `twinfs mount` daemon on a fresh (or given)
//! store that is torn down on drop, also while a test panics.
//!
//! Rules this file keeps: it only ever signals processes it started, by pid;
//! every wait is bounded in time; tempdirs live on a real disk filesystem
//! (`/var/tmp` when it exists, else `std::env::temp_dir()`).
//!
//! Lifetimes of the store directory. `Mounted::start()` owns a tempdir holding
//! `data/` and `mnt/`. `stop(self)` and `drop` do NOT throw the store away while
//! a test may still want it: `stop` parks the tempdir in a process-wide list so
//! that `Mounted::start_at(&data, &mnt, &[])` (remount) or `run_twinfs(&["verify",
//! "--data-dir", ...])` still find it; `start_at` on a parked tempdir adopts it
//! again, and whatever is still parked is removed when the test binary exits.

#![allow(dead_code)] // not every test module uses every helper

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::distributions::{Distribution, WeightedIndex};
use rand::{Rng as _, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How long `Mounted::start*` waits for the mount to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `Mounted::stop` waits for the daemon to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `run_twinfs` lets a one-shot command run.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an unmount helper (`fusermount3`, `umount`) may take.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the mount may linger after the daemon exited 0.
const UNMOUNTED_TIMEOUT: Duration = Duration::from_secs(3);

/// Creates the directory `path` (and its parents) with mode 0700, as a data
/// dir must be: `twinfs` refuses one that other users can read (issue 13).
pub(crate) fn private_dir(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("chmod 700 {}: {e}", path.display()));
}

/// Path of the `twinfs` binary built by cargo for this test run.
pub(crate) fn twinfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_twinfs"))
}

/// Whether end-to-end FUSE tests can run here: we are root and `/dev/fuse` opens.
///
/// When they cannot: under `CI=true` this panics (a skipped end-to-end test in CI
/// is a failure, style P13); elsewhere it prints why and returns `false`.
pub(crate) fn require_fuse(test: &str) -> bool {
    let reason = fuse_unavailable_reason();
    match reason {
        None => true,
        Some(reason) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: end-to-end test cannot run: {reason}");
            }
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

fn fuse_unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("needs root (euid is {euid})"));
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("/dev/fuse is not usable: {e}"));
    }
    if !Path::new("/proc/self/mountinfo").exists() {
        return Some("/proc/self/mountinfo is missing".to_string());
    }
    None
}

/// Tracing for the test process itself. The daemons log to their own stderr,
/// which `Mounted` captures; the tests have nothing to set up.
pub(crate) fn init_tracing() {}

/// Where tempdirs go: a real disk filesystem.
fn tmp_base() -> PathBuf {
    let var_tmp = Path::new("/var/tmp");
    if var_tmp.is_dir() {
        var_tmp.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A fresh tempdir on a real disk filesystem, removed on drop.
pub(crate) fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(tmp_base())
        .expect("create tempdir")
}

// ---------------------------------------------------------------------------
// Parked tempdirs (see the module comment).

static PARKED: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

extern "C" fn remove_parked_at_exit() {
    let parked = match PARKED.lock() {
        Ok(mut p) => std::mem::take(&mut *p),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for dir in parked {
        if any_mount_under(dir.path()) {
            // Never walk into a live mount: leave it on disk.
            let _ = dir.keep();
        } else {
            drop(dir);
        }
    }
}

fn park(dir: tempfile::TempDir) {
    ATEXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe {
            libc::atexit(remove_parked_at_exit);
        }
    });
    lock_parked().push(dir);
}

fn unpark(root: &Path) -> Option<tempfile::TempDir> {
    let mut parked = lock_parked();
    let i = parked.iter().position(|d| d.path() == root)?;
    Some(parked.swap_remove(i))
}

fn lock_parked() -> std::sync::MutexGuard<'static, Vec<tempfile::TempDir>> {
    PARKED.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------
// /proc/self/mountinfo

/// One line of /proc/self/mountinfo: mount point and filesystem type.
struct MountEntry {
    mount_point: PathBuf,
    fstype: String,
}

/// Undo the octal escapes (`\040` for space etc.) the kernel uses in mountinfo.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(oct[0] - b'0') * 64
                    + u32::from(oct[1] - b'0') * 8
                    + u32::from(oct[2] - b'0');
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

fn mount_entries() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut entries = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let Some(fstype) = right.next() else {
            continue;
        };
        // Mounted as root, fuser uses plain type "fuse" with source "twinfs";
        // report it the way a subtype-aware mount would ("fuse.twinfs").
        let fstype = match (fstype, right.next()) {
            ("fuse", Some(source)) => format!("fuse.{source}"),
            (t, _) => t.to_string(),
        };
        entries.push(MountEntry {
            mount_point: unescape_mountinfo(mp),
            fstype,
        });
    }
    entries
}

/// Filesystem type mounted at exactly `mnt` (the topmost one), if any.
pub(crate) fn mounted_fstype(mnt: &Path) -> Option<String> {
    mount_entries()
        .into_iter()
        .rev()
        .find(|e| e.mount_point == mnt)
        .map(|e| e.fstype)
}

fn any_mount_under(dir: &Path) -> bool {
    mount_entries()
        .iter()
        .any(|e| e.mount_point.starts_with(dir))
}

/// Lazily unmount `mnt`: `fusermount3 -u -z`, falling back to `umount -l`.
/// Never panics; returns whether one of them reported success.
pub(crate) fn lazy_unmount(mnt: &Path) -> bool {
    let tries: [(&str, &[&str]); 2] = [("fusermount3", &["-u", "-z"]), ("umount", &["-l"])];
    for (prog, args) in tries {
        let mut cmd = Command::new(prog);
        cmd.args(args).arg(mnt);
        if let Ok(out) = run_bounded(cmd, UNMOUNT_TIMEOUT) {
            if out.status.success() {
                return true;
            }
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Processes

// poll_until, wait_bounded, kill_child and stop_child live with the lab
// (src/lab/net.rs), which the `twinfs lab` command needs too.
pub(crate) use super::lab::{kill_child, poll_until, stop_child, wait_bounded};

/// A child spawned by `spawn_captured`, with threads draining its stdout and
/// stderr (so that a chatty child never blocks on a full pipe).
pub(crate) struct Captured {
    pub(crate) child: Child,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

/// Spawn `cmd` with stdin from /dev/null and stdout/stderr captured.
pub(crate) fn spawn_captured(cmd: &mut Command) -> std::io::Result<Captured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    Ok(Captured {
        child,
        stdout,
        stderr,
    })
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        v
    })
}

impl Captured {
    /// The output of the child, which has exited with `status` (the pipes end
    /// when it and anything it left running have closed them).
    pub(crate) fn output(self, status: ExitStatus) -> Output {
        Output {
            status,
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}

/// Run `cmd` with stdout/stderr captured, killing it (by pid) after `timeout`.
pub(crate) fn run_bounded(mut cmd: Command, timeout: Duration) -> std::io::Result<Output> {
    let mut cap = spawn_captured(&mut cmd)?;
    match wait_bounded(&mut cap.child, timeout) {
        Some(status) => Ok(cap.output(status)),
        None => {
            kill_child(&mut cap.child);
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {timeout:?}; killed"),
            ))
        }
    }
}

/// Run `twinfs ARGS...` to completion (at most 120 s, then it is killed and
/// this panics) and return its output.
pub(crate) fn run_twinfs(args: &[&str]) -> Output {
    let mut cmd = Command::new(twinfs_bin());
    cmd.args(args);
    match run_bounded(cmd, RUN_TIMEOUT) {
        Ok(out) => out,
        Err(e) => panic!("twinfs {args:?}: {e}"),
    }
}

// ---------------------------------------------------------------------------
// Mounted

static DAEMON_SEQ: AtomicUsize = AtomicUsize::new(0);

/// One running `twinfs mount` daemon.
pub(crate) struct Mounted {
    /// The mount point (canonical path).
    pub(crate) mnt: PathBuf,
    /// The store directory (`--data-dir`).
    pub(crate) data: PathBuf,
    child: Option<Child>,
    pid: u32,
    /// Still needs an unmount if the child is gone (stop failed half-way).
    needs_unmount: bool,
    stderr_path: PathBuf,
    /// Holds the daemon's stdout/stderr files.
    _logs: tempfile::TempDir,
    /// The tempdir holding `data/` and `mnt/` when `start()` made it.
    root: Option<tempfile::TempDir>,
}

impl Mounted {
    /// A fresh store in a new tempdir (`<tmp>/data`, `<tmp>/mnt`), mounted.
    pub(crate) fn start() -> Mounted {
        let root = tempdir("twinfs-test-");
        // Tests switch to non-root fsuids: let them reach the mount point.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod tempdir");
        let data = root.path().join("data");
        let mnt = root.path().join("mnt");
        private_dir(&data);
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        Self::spawn(&data, &mnt, &[], Some(root))
    }

    /// Mount the existing store `data` (must exist) on `mnt` (created if
    /// missing), with extra arguments placed after `mount`.
    pub(crate) fn start_at(data: &Path, mnt: &Path, extra_args: &[&str]) -> Mounted {
        assert!(
            data.is_dir(),
            "start_at: data dir {} does not exist",
            data.display()
        );
        if !mnt.exists() {
            std::fs::create_dir_all(mnt).expect("mkdir mnt");
        }
        // Remounting a store made by `start()`: take the tempdir back.
        let root = match (data.parent(), mnt.parent()) {
            (Some(a), Some(b)) if a == b => unpark(a),
            _ => None,
        };
        Self::spawn(data, mnt, extra_args, root)
    }

    fn spawn(
        data: &Path,
        mnt: &Path,
        extra_args: &[&str],
        root: Option<tempfile::TempDir>,
    ) -> Mounted {
        let data = data.canonicalize().expect("canonicalize data dir");
        let mnt = mnt.canonicalize().expect("canonicalize mount point");
        let logs = tempdir("twinfs-logs-");
        let n = DAEMON_SEQ.fetch_add(1, Ordering::Relaxed);
        let stderr_path = logs.path().join(format!("daemon-{n}.stderr"));
        let stdout_path = logs.path().join(format!("daemon-{n}.stdout"));
        let stderr_file = File::create(&stderr_path).expect("create stderr file");
        let stdout_file = File::create(&stdout_path).expect("create stdout file");

        let mut cmd = Command::new(twinfs_bin());
        cmd.arg("mount")
            .args(extra_args)
            .arg("--data-dir")
            .arg(&data)
            .arg(&mnt);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(stdout_file))
            .stderr(Stdio::from(stderr_file));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pid = child.id();
        let mut m = Mounted {
            mnt,
            data,
            child: Some(child),
            pid,
            needs_unmount: true,
            stderr_path,
            _logs: logs,
            root,
        };
        m.wait_mounted(&cmd);
        m
    }

    fn wait_mounted(&mut self, cmd: &Command) {
        let (mnt, child) = (&self.mnt, &mut self.child);
        let child = child.as_mut().expect("child present while starting");
        let outcome = poll_until(MOUNT_TIMEOUT, || {
            if mounted_fstype(mnt).as_deref() == Some("fuse.twinfs") {
                return Some(None);
            }
            child.try_wait().ok().flatten().map(Some)
        });
        match outcome {
            Some(None) => return,
            Some(Some(status)) => {
                self.child = None;
                self.needs_unmount = false;
                panic!(
                    "{cmd:?} exited with {status} before mounting; stderr:\n{}",
                    self.stderr_so_far()
                );
            }
            None => {}
        }
        // Drop kills the daemon and unmounts.
        panic!(
            "{cmd:?} did not mount {} as fuse.twinfs within {MOUNT_TIMEOUT:?}; stderr:\n{}",
            self.mnt.display(),
            self.stderr_so_far()
        );
    }

    /// Pid of the daemon.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Whatever the daemon wrote to stderr so far.
    pub(crate) fn stderr_so_far(&self) -> String {
        std::fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Clean shutdown: SIGTERM, wait (at most 30 s), assert exit status 0 and
    /// that the mount is gone. Returns the daemon's stderr. The store stays on
    /// disk (see the module comment), so `start_at(&data, &mnt, ..)` remounts it.
    pub(crate) fn stop(mut self) -> String {
        let mut child = self.child.take().expect("daemon already stopped");
        let status = match stop_child(&mut child, STOP_TIMEOUT) {
            Some(s) => s,
            None => {
                panic!(
                    "twinfs (pid {}) did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.pid,
                    self.stderr_so_far()
                );
            }
        };
        let stderr = self.stderr_so_far();
        assert!(
            status.success(),
            "twinfs (pid {}) exited with {status} after SIGTERM; stderr:\n{stderr}",
            self.pid
        );
        // The daemon unmounts before it exits; give the kernel a moment.
        let unmounted = poll_until(UNMOUNTED_TIMEOUT, || {
            mounted_fstype(&self.mnt).is_none().then_some(())
        });
        assert!(
            unmounted.is_some(),
            "twinfs exited 0 after SIGTERM but {} is still mounted; stderr:\n{stderr}",
            self.mnt.display()
        );
        self.needs_unmount = false;
        if let Some(root) = self.root.take() {
            park(root);
        }
        stderr
    }

    /// Crash: SIGKILL the daemon, reap it, lazily unmount the dead mount.
    /// The store stays as the crash left it, for `start_at`.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        if self.needs_unmount {
            lazy_unmount(&self.mnt);
            self.needs_unmount = false;
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // SIGKILL cannot be ignored; the bound only guards against a
            // process stuck in the kernel.
            let _ = wait_bounded(&mut child, STOP_TIMEOUT);
            self.needs_unmount = true;
        }
        if self.needs_unmount && mounted_fstype(&self.mnt).is_some_and(|t| t.starts_with("fuse")) {
            lazy_unmount(&self.mnt);
        }
        self.needs_unmount = false;
        if let Some(root) = self.root.take() {
            if any_mount_under(root.path()) {
                // Someone (a remount via start_at) still uses this store:
                // never delete through a live mount.
                park(root);
            } else {
                drop(root);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Per-thread credentials

/// Switch the calling thread's filesystem uid/gid and clear its supplementary
/// groups (raw syscalls: per thread, unlike libc's setuid/setgroups which
/// change every thread of the process). Returns whether both took effect.
///
/// Linux drops the filesystem capabilities (CAP_DAC_OVERRIDE, CAP_FOWNER,
/// CAP_CHOWN, ...) while fsuid != 0 and gives them back when it returns to 0,
/// so the kernel's permission checks apply exactly as for that user.
pub(crate) fn set_thread_fsids(uid: u32, gid: u32) -> bool {
    // SAFETY: raw credential syscalls that take integers / a null list.
    unsafe {
        libc::syscall(
            libc::SYS_setgroups,
            0 as libc::c_long,
            std::ptr::null::<libc::gid_t>(),
        );
        libc::syscall(libc::SYS_setfsgid, gid as libc::c_long);
        libc::syscall(libc::SYS_setfsuid, uid as libc::c_long);
        // setfs*id return the previous value; calling again with -1 (invalid)
        // returns the current one without changing it.
        let cur_gid = libc::syscall(libc::SYS_setfsgid, -1i32 as libc::c_long) as u32;
        let cur_uid = libc::syscall(libc::SYS_setfsuid, -1i32 as libc::c_long) as u32;
        cur_uid == uid && cur_gid == gid
    }
}

/// Run `f` on a new thread whose filesystem ids are `uid`/`gid` (no
/// supplementary groups), and return its result (panics propagate).
pub(crate) fn as_user<R: Send + 'static>(
    uid: u32,
    gid: u32,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let h = std::thread::spawn(move || {
        assert!(
            set_thread_fsids(uid, gid),
            "setfsuid/setfsgid({uid}, {gid}) failed"
        );
        f()
    });
    match h.join() {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// The errno of the last failed libc call on this thread.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A path as a NUL-terminated C string.
pub(crate) fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// `Ok(value)` for a non-negative libc return value, else `Err(errno)`.
pub(crate) fn cvt<T: TryInto<i64>>(r: T) -> Result<i64, i32> {
    let r: i64 = r.try_into().unwrap_or(-1);
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

// ---------------------------------------------------------------------------
// Tree manifests

/// What a test compares about one entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EntryInfo {
    /// 'f' file, 'd' directory, 'l' symlink, '?' other.
    pub(crate) kind: char,
    /// Permission bits (07777).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) nlink: u64,
    pub(crate) mtime: (i64, i64),
    /// Symlink target.
    pub(crate) target: Option<Vec<u8>>,
    /// Content hash of a regular file (see `hash_file`).
    pub(crate) hash: Option<u64>,
    /// `user.*` extended attributes, sorted by name.
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Manifest of everything under `root` (not `root` itself), keyed by the path
/// relative to `root`. Reads as the calling thread's credentials.
pub(crate) fn tree_manifest(root: &Path) -> BTreeMap<String, EntryInfo> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for ent in rd {
            let ent = ent.unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
            let path = ent.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let info = entry_info(&path);
            if info.kind == 'd' {
                stack.push(path);
            }
            out.insert(rel, info);
        }
    }
    out
}

/// `EntryInfo` of one path (lstat: symlinks are not followed).
pub(crate) fn entry_info(path: &Path) -> EntryInfo {
    use std::os::unix::fs::MetadataExt;
    let md =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_file() {
        'f'
    } else if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else {
        '?'
    };
    let target = (kind == 'l').then(|| {
        std::fs::read_link(path)
            .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
            .into_os_string()
            .into_vec()
    });
    let hash = (kind == 'f').then(|| hash_file(path, md.len()));
    let xattrs = if kind == 'l' {
        Vec::new()
    } else {
        user_xattrs(path)
    };
    EntryInfo {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: md.len(),
        nlink: md.nlink(),
        mtime: (md.mtime(), md.mtime_nsec()),
        target,
        hash,
        xattrs,
    }
}

/// Files up to this size are hashed in full.
const FULL_HASH_LIMIT: u64 = 64 << 20;

/// Hash of a file's content. Files up to 64 MiB are hashed in full; larger
/// (sparse, multi-GiB) files are sampled: the first and last MiB and 64
/// chunks of 64 KiB spread evenly, so that a test does not read GiBs of holes.
pub(crate) fn hash_file(path: &Path, size: u64) -> u64 {
    use std::hash::Hasher;
    use std::os::unix::fs::FileExt;
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    if size <= FULL_HASH_LIMIT {
        ranges.push((0, size));
    } else {
        ranges.push((0, 1 << 20));
        for i in 0..64u64 {
            ranges.push((size / 64 * i, 64 << 10));
        }
        ranges.push((size - (1 << 20), 1 << 20));
    }
    let mut buf = vec![0u8; 1 << 20];
    for (start, len) in ranges {
        let end = (start + len).min(size);
        let mut off = start;
        while off < end {
            let want = ((end - off) as usize).min(buf.len());
            let n = f
                .read_at(&mut buf[..want], off)
                .unwrap_or_else(|e| panic!("read {} at {off}: {e}", path.display()));
            if n == 0 {
                break;
            }
            h.write_u64(off);
            h.write(&buf[..n]);
            off += n as u64;
        }
        h.write_u64(off);
    }
    h.finish()
}

/// `user.*` xattrs of `path` (following symlinks), sorted.
pub(crate) fn user_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = cpath(path);
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: buffer pointer/length describe `names`.
    let n = unsafe { libc::listxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = errno();
        if e == libc::ENOTSUP {
            return Vec::new();
        }
        panic!("listxattr {}: errno {e}", path.display());
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !name.starts_with(b"user.") {
            continue;
        }
        let cname = std::ffi::CString::new(name).expect("xattr name");
        let mut val = vec![0u8; 64 << 10];
        // SAFETY: buffer pointer/length describe `val`.
        let m = unsafe {
            libc::getxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        assert!(
            m >= 0,
            "getxattr {} {:?}: errno {}",
            path.display(),
            cname,
            errno()
        );
        val.truncate(m as usize);
        out.push((name.to_vec(), val));
    }
    out.sort();
    out
}

/// Differences between two manifests, one line each (empty when equal).
pub(crate) fn manifest_diff(
    a_name: &str,
    a: &BTreeMap<String, EntryInfo>,
    b_name: &str,
    b: &BTreeMap<String, EntryInfo>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => out.push(format!("{k}: only in {a_name}: {va:?}")),
            Some(vb) if va != vb => {
                out.push(format!("{k}:\n  {a_name}: {va:?}\n  {b_name}: {vb:?}"))
            }
            Some(_) => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            out.push(format!("{k}: only in {b_name}: {vb:?}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Seeded randomness

/// The tests' seeded PRNG: ChaCha8 from `rand_chacha`, whose output for a
/// given seed is fixed across versions, so a printed seed replays the same
/// sequence. (Before this replaced the tests' hand-written SplitMix64, the same
/// seed numbers drove a different sequence: seeds recorded back then replay a
/// different run now.)
pub(crate) struct TestRng(ChaCha8Rng);

impl TestRng {
    pub(crate) fn new(seed: u64) -> TestRng {
        TestRng(ChaCha8Rng::seed_from_u64(seed))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.gen_range(0..n)
        }
    }

    /// True with probability `per_mille`/1000.
    pub(crate) fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// One element of the non-empty `xs`.
    pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        assert!(!xs.is_empty(), "pick from an empty slice");
        &xs[self.below(xs.len() as u64) as usize]
    }

    /// An index into `weights`, chosen with probability proportional to its weight.
    pub(crate) fn weighted(&mut self, weights: &[u64]) -> usize {
        WeightedIndex::new(weights)
            .expect("weights: non-empty, not all zero")
            .sample(&mut self.0)
    }

    /// `len` random bytes.
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.0.fill_bytes(&mut v);
        v
    }
}

/// Deterministic test bytes: the first `len` bytes of `TestRng::new(seed)`
/// (so `pattern(seed, n)` is a prefix of `pattern(seed, m)` for `n <= m`),
/// different for every `seed`.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    TestRng::new(seed).bytes(len)
}

/// Raw renameat2(2) (std has no flags): `Err(errno)` on failure.
pub(crate) fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: valid C strings; raw renameat2(2).
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    cvt(r).map(|_| ())
}
