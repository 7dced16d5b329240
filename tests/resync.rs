//! Outages and resync end to end: what a primary does while its peer is away,
//! and what travels when the peer comes back.

use crate::harness::lab::{require_lab, Node};
use crate::harness::pair::{signal, Pair};
use crate::harness::util::{lazy_unmount, require_fuse, TestRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

fn require(test: &str) -> bool {
    require_fuse(test) && require_lab(test)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn connected_pair(tag: &str, extra: &str) -> Pair {
    Pair::connected(tag, extra)
}

fn wait_in_sync(pair: &Pair) {
    pair.wait_in_sync(Node::A);
}

pub(crate) fn write_file(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn overwrite(path: &Path, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// What the files under `root` hold.
pub(crate) fn contents(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    out
}

/// Kills A and promotes B, then checks that B's mount holds `want`.
fn fail_over_and_compare(pair: &mut Pair, want: &BTreeMap<String, Vec<u8>>) {
    pair.kill(Node::A);
    pair.wait_status(Node::B, "primary seen dead", LONG, |s| {
        s["connection"] != "Connected"
    });
    pair.promote(Node::B);
    let got = contents(&pair.node(Node::B).mnt());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "file names differ after the failover"
    );
    for (name, data) in want {
        assert!(got[name] == *data, "{name} differs after the failover");
    }
}

/// The outage case of the issue: the secondary is down, the primary keeps
/// serving and restarts meanwhile; when the secondary returns, only the
/// changed blocks travel (counted by the primary's status).
#[test]
fn an_outage_resyncs_only_the_changed_blocks_even_across_a_primary_restart() {
    if !require("an_outage_resyncs_only_the_changed_blocks_even_across_a_primary_restart") {
        return;
    }
    let mut pair = connected_pair("outage", "");
    let mnt = pair.node(Node::A).mnt();
    let mut rng = TestRng::new(0x07a6e);
    for i in 0..8 {
        write_file(&mnt.join(format!("base-{i}")), &rng.bytes(2 * MIB));
    }
    wait_in_sync(&pair);
    let before = pair.status(Node::A);

    // The secondary goes away (a clean stop; its data stays).
    pair.stop(Node::B).expect("beta stops");
    pair.wait_status(Node::A, "peer seen gone", LONG, |s| {
        s["connection"] != "Connected" && n(&s["counters"]["peer_losses"]) >= 1
    });
    // The primary keeps serving: 2 MiB change.
    overwrite(&mnt.join("base-3"), 512 << 10, &rng.bytes(MIB));
    write_file(&mnt.join("new-during-outage"), &rng.bytes(MIB));
    // ... and restarts; the record of what changed must survive that.
    pair.stop(Node::A).expect("alpha stops");
    pair.start(Node::A);
    pair.promote(Node::A);
    overwrite(&mnt.join("base-5"), 0, b"written after the restart");
    let changed = 2 * MIB as u64 + 25;

    pair.start(Node::B);
    wait_in_sync(&pair);
    let a = pair.status(Node::A);
    let sent = n(&a["counters"]["resync_bytes_sent"]);
    eprintln!(
        "resync: {sent} bytes sent for {changed} bytes changed ({:.3}x); store holds {} MiB",
        sent as f64 / changed as f64,
        16 + 1
    );
    assert!(
        sent >= changed,
        "the resync sent less than what changed: {a:#}"
    );
    assert!(
        sent as f64 <= 1.2 * changed as f64,
        "the resync sent {sent} bytes for {changed} bytes changed (> 1.2x):\n{a:#}\nbefore the outage: {before:#}\nlog:\n{}",
        pair.node(Node::A).log_text()
    );
    let want = contents(&mnt);
    fail_over_and_compare(&mut pair, &want);
}

/// A brand-new secondary gets everything; while it syncs it is Inconsistent
/// and refuses to be promoted. The rate limit stretches the sync so that the
/// refusal can be tried.
#[test]
fn a_new_secondary_gets_a_full_sync_and_cannot_be_promoted_meanwhile() {
    if !require("a_new_secondary_gets_a_full_sync_and_cannot_be_promoted_meanwhile") {
        return;
    }
    let mut pair = Pair::new("fullsync", "resync_rate = \"2MiB\"");
    pair.start(Node::A);
    pair.promote(Node::A);
    let mnt = pair.node(Node::A).mnt();
    let mut rng = TestRng::new(0xf011);
    for i in 0..4 {
        write_file(&mnt.join(format!("site-{i}.tar")), &rng.bytes(2 * MIB));
    }
    std::fs::create_dir(mnt.join("empty-dir")).unwrap();
    pair.start(Node::B);
    let b = pair.wait_status(Node::B, "receiving a resync", LONG, |s| {
        s["disk"] == "Inconsistent"
    });
    assert_eq!(b["connection"], "SyncTarget", "{b:#}");
    let a = pair.status(Node::A);
    assert_eq!(a["connection"], "SyncSource", "{a:#}");
    assert!(n(&a["resync"]["total_bytes"]) >= 8 * MIB as u64, "{a:#}");
    // The human status shows the progress with an ETA.
    let progress = crate::harness::util::poll_until(Duration::from_secs(20), || {
        let out = pair.twinfs(Node::A, &["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("resync (source):"))?
            .to_owned();
        let eta = line.split("eta ").nth(1)?;
        eta.starts_with(|c: char| c.is_ascii_digit())
            .then_some(line)
    });
    let progress = progress.expect("no resync progress line with an ETA in the primary's status");
    assert!(
        progress.contains("% ") && progress.contains(" of "),
        "{progress}"
    );
    let out = pair.twinfs(Node::B, &["promote"]);
    assert!(!out.status.success(), "an Inconsistent node was promoted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Inconsistent"),
        "the refusal does not say why: {err}"
    );
    wait_in_sync(&pair);
    let want = contents(&mnt);
    fail_over_and_compare(&mut pair, &want);
    assert!(pair.node(Node::B).mnt().join("empty-dir").is_dir());
}

/// After a crash of the primary, only what may have been in flight is
/// resynced, not the whole store (DRBD's activity log does this).
#[test]
fn after_a_primary_crash_only_what_was_in_flight_is_resynced() {
    if !require("after_a_primary_crash_only_what_was_in_flight_is_resynced") {
        return;
    }
    let mut pair = connected_pair("crash", "");
    let mnt = pair.node(Node::A).mnt();
    let mut rng = TestRng::new(0xc4a5);
    for i in 0..8 {
        write_file(&mnt.join(format!("base-{i}")), &rng.bytes(2 * MIB));
    }
    wait_in_sync(&pair);
    // A writer keeps going while the primary process is killed under it.
    let (done_tx, done_rx) = mpsc::channel();
    let writer_mnt = mnt.clone();
    let writer = std::thread::spawn(move || {
        let mut fsynced = Vec::new();
        for i in 0..10_000 {
            let name = format!("w-{i}");
            let data = vec![(i % 251) as u8; 20_000];
            let ok = std::fs::File::create(writer_mnt.join(&name))
                .and_then(|mut f| f.write_all(&data).and_then(|()| f.sync_all()));
            if ok.is_err() {
                break;
            }
            fsynced.push((name, data));
            if done_rx.try_recv().is_ok() {
                break;
            }
        }
        fsynced
    });
    std::thread::sleep(Duration::from_millis(300));
    eprintln!(
        "before the crash: alpha floor {} applied {}, beta floor {} applied {}",
        pair.status(Node::A)["floor_seq"],
        pair.status(Node::A)["applied_seq"],
        pair.status(Node::B)["floor_seq"],
        pair.status(Node::B)["applied_seq"]
    );
    signal(pair.node_pid(Node::A), libc::SIGKILL);
    let _ = done_tx.send(());
    lazy_unmount(&mnt);
    let fsynced = writer.join().unwrap();
    assert!(
        !fsynced.is_empty(),
        "the writer wrote nothing before the crash"
    );
    pair.forget(Node::A);

    pair.start(Node::A);
    pair.promote(Node::A);
    wait_in_sync(&pair);
    let a = pair.status(Node::A);
    let sent = n(&a["counters"]["resync_bytes_sent"]);
    eprintln!(
        "resync after the crash: {sent} bytes ({} files were fsynced before it); alpha: {}",
        fsynced.len(),
        a["recent"]
    );
    // What may have been in flight: the writes since the floor was last
    // written down (a few times a second), not the 16 MiB base.
    assert!(
        sent < 4 * MIB as u64,
        "after a crash the whole store (16+ MiB) was resynced instead of what was in flight: {sent} bytes\n{a:#}"
    );
    // Every fsynced file is there after a failover.
    pair.kill(Node::A);
    pair.wait_status(Node::B, "primary seen dead", LONG, |s| {
        s["connection"] != "Connected"
    });
    pair.promote(Node::B);
    for (name, data) in &fsynced {
        let got = std::fs::read(pair.node(Node::B).mnt().join(name))
            .unwrap_or_else(|e| panic!("{name} (fsynced) is missing: {e}"));
        assert!(got == *data, "{name} differs");
    }
}

/// `on_peer_loss = "suspend"`: with the peer gone, writes wait for it instead
/// of going on alone, and complete when it is back.
#[test]
fn suspend_mode_holds_writes_until_the_peer_returns() {
    if !require("suspend_mode_holds_writes_until_the_peer_returns") {
        return;
    }
    let mut pair = connected_pair("suspend", "on_peer_loss = \"suspend\"");
    let mnt = pair.node(Node::A).mnt();
    pair.stop(Node::B).expect("beta stops");
    pair.wait_status(Node::A, "suspended", LONG, |s| s["suspended"] == true);
    let (tx, rx) = mpsc::channel();
    let path = mnt.join("held.txt");
    let writer = std::thread::spawn(move || {
        let r = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(b"held until the peer is back")
                .and_then(|()| f.sync_all())
        });
        let _ = tx.send(r.is_ok());
    });
    // The write is held while the peer is away (the status still says suspended).
    let early = rx.recv_timeout(Duration::from_secs(3));
    let s = pair.status(Node::A);
    assert!(early.is_err(), "a write completed while suspended: {s:#}");
    assert_eq!(s["suspended"], true, "{s:#}");
    pair.start(Node::B);
    let done = rx
        .recv_timeout(LONG)
        .expect("the held write never completed");
    assert!(done, "the held write failed");
    writer.join().unwrap();
    wait_in_sync(&pair);
    let b = pair.status(Node::B);
    assert_eq!(
        b["applied_seq"],
        pair.status(Node::A)["applied_seq"],
        "{b:#}"
    );
    let out = std::fs::File::open(mnt.join("held.txt")).unwrap();
    let mut buf = [0u8; 4];
    out.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"held");
}
