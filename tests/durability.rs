//! Durability and integrity, end to end.
//!
//! - An application's fsync/fdatasync makes the daemon call fsync or fdatasync
//!   on the store's log (seen with strace). sled's own flush is only
//!   sync_file_range, which does not flush the disk's write cache, so it must
//!   not be all we rely on.
//! - A flipped byte in the log is detected: the read fails with EIO (never
//!   wrong data), the daemon says which file and where, and `twinfs verify`
//!   names exactly the damaged file.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::util::{self, pattern};

const STRACE_ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
const STRACE_STOP_TIMEOUT: Duration = Duration::from_secs(15);
const BLOCK: usize = 64 * 1024;

/// A seed no earlier run used, so the pattern occurs nowhere else on disk.
fn unique_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 40)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn require_strace(test: &str) -> bool {
    if Path::new("/usr/bin/strace").exists() {
        return true;
    }
    let reason = "/usr/bin/strace is missing (Debian package strace)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: cannot run: {reason}");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

// ---------------------------------------------------------------------------
// strace

/// strace attached to a pid; detached (SIGTERM, then SIGKILL) on drop.
struct Strace {
    child: Option<Child>,
    out: PathBuf,
}

impl Strace {
    fn attach(pid: u32, out: &Path) -> Strace {
        let child = Command::new("strace")
            .args([
                "-f",
                "-ttt",
                "-y",
                "-qq",
                "-e",
                "trace=fsync,fdatasync,sync_file_range",
                "-o",
            ])
            .arg(out)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn strace");
        let s = Strace {
            child: Some(child),
            out: out.to_path_buf(),
        };
        // Attached once every thread of the daemon has strace as its tracer.
        let tracer = s.child.as_ref().map(Child::id).unwrap_or(0);
        assert!(
            util::poll_until(STRACE_ATTACH_TIMEOUT, || all_threads_traced_by(pid, tracer)
                .then_some(()))
            .is_some(),
            "strace did not attach to every thread of pid {pid} within {STRACE_ATTACH_TIMEOUT:?}"
        );
        s
    }

    /// Detaches and returns the trace.
    fn finish(mut self) -> String {
        self.stop();
        std::fs::read_to_string(&self.out).expect("read strace output")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // strace detaches on SIGTERM.
            util::stop_child(&mut child, STRACE_STOP_TIMEOUT);
        }
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        self.stop();
    }
}

fn all_threads_traced_by(pid: u32, tracer: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let traced = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .map(|v| v.trim() == tracer.to_string())
            .unwrap_or(false);
        if !traced {
            return false;
        }
        n += 1;
    }
    n > 0
}

/// One syscall line of `strace -f -ttt -y`: `PID TS name(fd<path>, ...) = ret`.
#[derive(Debug)]
struct Call {
    ts: f64,
    name: String,
    path: String,
    /// The result; `None` for an `<unfinished ...>` call that never resumed.
    ret: Option<String>,
    line: String,
}

fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::new();
    // pid -> index in `calls` of its `<unfinished ...>` call.
    let mut pending: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in text.lines() {
        // strace pads the pid column with spaces.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        if rest.starts_with("<...") {
            // `<... fdatasync resumed>) = 0`: the result of the pending call.
            if let (Some(i), Some((_, r))) = (pending.remove(pid), rest.rsplit_once(" = ")) {
                calls[i].ret = Some(r.trim().to_string());
            }
            continue;
        }
        let Some(open) = rest.find('(') else { continue };
        let name = rest[..open].to_string();
        let args = &rest[open + 1..];
        let path = match (args.find('<'), args.find('>')) {
            (Some(a), Some(b)) if a < b => args[a + 1..b].to_string(),
            _ => String::new(),
        };
        let ret = rest.rsplit_once(" = ").map(|(_, r)| r.trim().to_string());
        let ret = if rest.contains("<unfinished") {
            pending.insert(pid.to_string(), calls.len());
            None
        } else {
            ret
        };
        calls.push(Call {
            ts,
            name,
            path,
            ret,
            line: line.to_string(),
        });
    }
    calls
}

/// The daemon's fsync/fdatasync calls on its log that started within [t0, t1].
fn log_syncs_between<'a>(calls: &'a [Call], log_dir: &Path, t0: f64, t1: f64) -> Vec<&'a Call> {
    let log_prefix = format!("{}/", log_dir.display());
    calls
        .iter()
        .filter(|c| c.name == "fsync" || c.name == "fdatasync")
        .filter(|c| c.path.starts_with(&log_prefix))
        .filter(|c| c.ts >= t0 - 0.001 && c.ts <= t1 + 0.001)
        .collect()
}

#[test]
fn durability_fsync_reaches_log_with_fsync_or_fdatasync() {
    let name = "durability_fsync_reaches_log_with_fsync_or_fdatasync";
    if !util::require_fuse(name) || !require_strace(name) {
        return;
    }
    // A long checkpoint interval: the background checkpoint must not make the log
    // clean just before the application's fsync (then no fdatasync would be due).
    let root = util::tempdir("twinfs-strace-mnt-");
    let (data, mnt, cfg) = (
        root.path().join("data"),
        root.path().join("mnt"),
        root.path().join("twinfs.toml"),
    );
    util::private_dir(&data);
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    std::fs::write(&cfg, "[fs]\ncheckpoint_interval = \"10min\"\n").expect("write config");
    let m = util::Mounted::start_at(
        &data,
        &mnt,
        &["--config", cfg.to_str().expect("utf-8 path")],
    );
    let traces = util::tempdir("twinfs-strace-");
    let trace_path = traces.path().join("trace.txt");
    let strace = Strace::attach(m.pid(), &trace_path);

    // fsync after a 1 MiB write, then fdatasync after an overwrite in a second file.
    let mut f = File::create(m.mnt.join("synced.bin")).expect("create synced.bin");
    f.write_all(&pattern(1, 1 << 20)).expect("write");
    let a0 = now_secs();
    f.sync_all().expect("fsync");
    let a1 = now_secs();
    drop(f);

    let mut g = File::create(m.mnt.join("datasynced.bin")).expect("create datasynced.bin");
    g.write_all(&pattern(2, 200_000)).expect("write");
    let b0 = now_secs();
    g.sync_data().expect("fdatasync");
    let b1 = now_secs();
    drop(g);

    let trace = strace.finish();
    let calls = parse_trace(&trace);
    let log_dir = m.data.join("log");
    let sfr = calls.iter().filter(|c| c.name == "sync_file_range").count();
    for (what, t0, t1) in [("fsync", a0, a1), ("fdatasync", b0, b1)] {
        let syncs = log_syncs_between(&calls, &log_dir, t0, t1);
        assert!(
            !syncs.is_empty(),
            "the application's {what} (between {t0:.6} and {t1:.6}) returned without the daemon \
             calling fsync/fdatasync on a file under {} ({sfr} sync_file_range calls in the whole \
             trace do not count: they do not flush the disk cache). Trace:\n{trace}",
            log_dir.display()
        );
        eprintln!(
            "{what}: daemon syncs: {:?}",
            syncs.iter().map(|c| (&c.line, &c.ret)).collect::<Vec<_>>()
        );
        for c in &syncs {
            if let Some(ret) = &c.ret {
                assert_eq!(ret, "0", "{what}: the daemon's sync failed: {}", c.line);
            }
        }
        assert!(
            syncs.iter().any(|c| c.ret.as_deref() == Some("0")),
            "{what}: no daemon fsync/fdatasync on the log completed with 0 before the \
             application's {what} returned: {syncs:#?}"
        );
    }
    let stderr = m.stop();
    assert!(!stderr.contains("panicked"), "daemon stderr:\n{stderr}");
}

// ---------------------------------------------------------------------------
// Corruption

/// Every offset of `needle` in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut found = Vec::new();
    if needle.len() < 16 || hay.len() < needle.len() {
        return found;
    }
    let head = &needle[..16];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + 16] == head && &hay[i..i + needle.len()] == needle {
            found.push(i);
            i += needle.len();
        } else {
            i += 1;
        }
    }
    found
}

/// (segment path, offset) of every copy of `needle` in `data/log/*.log`.
fn find_in_log(data: &Path, needle: &[u8]) -> Vec<(PathBuf, usize)> {
    let mut hits = Vec::new();
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data.join("log"))
        .expect("read DATA/log")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    for seg in segs {
        let mut bytes = Vec::new();
        File::open(&seg)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .expect("read segment");
        for off in find_all(&bytes, needle) {
            hits.push((seg.clone(), off));
        }
    }
    hits
}

fn flip_byte(path: &Path, off: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off as u64).expect("read byte");
    b[0] ^= 0xFF;
    f.write_all_at(&b, off as u64).expect("write byte");
    f.sync_all().expect("fsync segment");
}

/// Decimal or 0x-hex numbers in `s`.
fn numbers_in(s: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for tok in s.split(|c: char| !c.is_ascii_alphanumeric()) {
        if let Some(h) = tok.strip_prefix("0x") {
            if let Ok(v) = u64::from_str_radix(h, 16) {
                out.push(v);
            }
        } else if let Ok(v) = tok.parse::<u64>() {
            out.push(v);
        }
    }
    out
}

#[test]
fn durability_flipped_byte_gives_eio_and_verify_names_the_file() {
    let name = "durability_flipped_byte_gives_eio_and_verify_names_the_file";
    if !util::require_fuse(name) {
        return;
    }
    let m = util::Mounted::start();
    let (data, mnt) = (m.data.clone(), m.mnt.clone());
    std::fs::create_dir(mnt.join("site")).expect("mkdir site");
    let victim_rel = "site/victim.bin";
    let sibling_rel = "site/sibling.bin";
    let victim = pattern(unique_seed(), BLOCK);
    let sibling = pattern(unique_seed() ^ 0x5151, 3 * BLOCK);
    for (rel, bytes) in [(victim_rel, &victim), (sibling_rel, &sibling)] {
        let mut f = File::create(mnt.join(rel)).expect("create");
        f.write_all(bytes).expect("write");
        f.sync_all().expect("fsync");
    }
    let victim_ino = std::fs::metadata(mnt.join(victim_rel))
        .expect("stat victim")
        .ino();
    m.stop();

    // The untouched store verifies clean.
    let data_s = data.to_str().expect("utf-8 path");
    let out = util::run_twinfs(&["verify", "--data-dir", data_s]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.lines().any(|l| l.trim_start().starts_with("clean")),
        "verify before the damage: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // Damage the victim's block where it lies verbatim in the log.
    let hits = find_in_log(&data, &victim);
    assert!(
        !hits.is_empty(),
        "the victim's 64 KiB pattern is not stored verbatim in {}/log/*.log (contract: file data \
         bytes live in the segments uncompressed)",
        data.display()
    );
    for (seg, off) in &hits {
        flip_byte(seg, off + BLOCK / 2);
    }
    let (seg, seg_off) = hits.last().cloned().expect("one hit");
    let seg_name = seg
        .file_name()
        .expect("segment name")
        .to_string_lossy()
        .into_owned();

    // Remount: the damaged file fails with EIO, the sibling reads back exactly.
    let m = util::Mounted::start_at(&data, &mnt, &[]);
    match std::fs::read(m.mnt.join(victim_rel)) {
        Ok(got) => {
            panic!(
            "reading the damaged file succeeded ({} bytes, {}): wrong data must never be returned",
            got.len(),
            if got == victim { "the original bytes" } else { "wrong bytes" }
        )
        }
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "reading the damaged file: {e}"
        ),
    }
    let got = std::fs::read(m.mnt.join(sibling_rel)).expect("read the undamaged sibling");
    assert!(got == sibling, "the undamaged sibling changed");

    // The daemon names the file (or inode) and the segment and offset.
    let stderr = m.stderr_so_far();
    let near = |v: u64| v + 4096 >= seg_off as u64 && v <= (seg_off + BLOCK) as u64;
    let named = stderr.lines().any(|l| {
        (l.contains("victim.bin") || numbers_in(l).contains(&victim_ino))
            && l.contains(&seg_name)
            && numbers_in(l).into_iter().any(near)
    });
    eprintln!("daemon stderr:\n{stderr}");
    assert!(
        named,
        "the daemon's stderr has no line naming the damaged file (victim.bin or ino {victim_ino}), \
         {seg_name} and an offset near {seg_off}:\n{stderr}"
    );
    m.stop();

    // verify: non-zero, and exactly the damaged file is named.
    let out = util::run_twinfs(&["verify", "--data-dir", data_s]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("verify:\n{text}");
    assert!(
        !out.status.success(),
        "verify of a damaged store exited 0:\n{text}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify of a damaged store: exit code (contract: 1):\n{text}"
    );
    let damaged: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("damaged:"))
        .collect();
    assert!(
        !damaged.is_empty()
            && damaged
                .iter()
                .all(|l| l.contains(&format!("/{victim_rel}"))),
        "verify must print `damaged: /{victim_rel} (...)` lines and no others:\n{text}"
    );
    assert!(
        damaged.iter().any(|l| l.contains(&seg_name)),
        "verify's damaged line should say where ({seg_name}):\n{text}"
    );
    assert!(
        !text.contains("sibling.bin"),
        "verify named the undamaged sibling:\n{text}"
    );
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("clean")),
        "verify said clean:\n{text}"
    );
}
