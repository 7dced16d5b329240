//! Fault injection end to end (issue 13, item 6): a panic in any thread of
//! `twinfs run` ends the process, never a half-alive daemon.
//!
//! The switch is `TWINFS_FAULT=panic-in-applier:N` (replicator/src/fault.rs),
//! compiled only into debug builds, which the tests use.

use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;

use crate::harness::lab::{require_lab, Node};
use crate::harness::pair::Pair;
use crate::harness::util::{poll_until, require_fuse};
use crate::replication::{assert_files, write_fsynced_files};

const LONG: Duration = Duration::from_secs(60);
/// The secondary's applier panics at this mutation from the primary: after the
/// pair is in sync (promotion writes a few), during the first batch of files.
const PANIC_AT: u64 = 25;

/// The secondary's applier panics: its process exits non-zero with the panic
/// logged; the primary declares the peer lost and keeps serving (protocol C
/// writes go on, alone); the secondary, restarted without the fault, resyncs
/// and then holds every file, byte for byte.
#[test]
fn fault_a_panic_in_the_secondary_s_applier_ends_it_and_the_pair_recovers() {
    let test = "fault_a_panic_in_the_secondary_s_applier_ends_it_and_the_pair_recovers";
    if !(require_fuse(test) && require_lab(test)) {
        return;
    }
    no_core_dumps();
    // No [failover] table: the primary carries on alone once its peer is lost.
    let mut pair = Pair::new("fault", "protocol = \"C\"");
    pair.start(Node::A);
    let fault = format!("panic-in-applier:{PANIC_AT}");
    pair.start_with_env(Node::B, &[("TWINFS_FAULT", &fault)]);
    pair.wait_connected();
    pair.promote(Node::A);
    pair.wait_in_sync(Node::A);

    // Fsynced writes on the primary; the secondary dies among them. They must
    // all return (bounded wait: a hang is the failure this guards against).
    let mnt = pair.node(Node::A).mnt();
    let writer = {
        let mnt = mnt.clone();
        std::thread::spawn(move || write_fsynced_files(&mnt, 120, 0xfa17_0001))
    };
    let finished = poll_until(Duration::from_secs(120), || {
        writer.is_finished().then_some(())
    });
    assert!(
        finished.is_some(),
        "protocol C writes hang after the secondary's panic\nA: {:#}\nA log:\n{}",
        pair.status(Node::A),
        pair.node(Node::A).log_text()
    );
    let mut files = writer.join().expect("the writer thread");

    // The secondary's process ended, non-zero, with the panic in its log.
    let status = pair.wait_exit(Node::B, LONG).unwrap_or_else(|| {
        panic!(
            "beta still runs after its applier panicked; log:\n{}",
            pair.node(Node::B).log_text()
        )
    });
    assert!(!status.success(), "beta exit: {status:?}");
    assert!(
        status.code().is_some_and(|c| c != 0) || status.signal() == Some(libc::SIGABRT),
        "beta exit: {status:?}"
    );
    let log = pair.node(Node::B).log_text();
    assert!(
        log.contains("panic")
            && log.contains("fault injection")
            && log.contains("ending the process"),
        "beta's log lacks the panic message; log:\n{log}"
    );

    // The primary declared its peer lost, and keeps serving writes alone.
    let a = pair.wait_status(Node::A, "peer lost", LONG, |s| {
        s["role"] == "Primary" && s["connection"] != "Connected"
    });
    assert_eq!(a["role"], "Primary", "{a:#}");
    files.extend(write_fsynced_files(&mnt, 30, 0xfa17_0002));

    // Restarted without the fault, the secondary resyncs and catches up.
    pair.start(Node::B);
    pair.wait_in_sync(Node::A);
    let a = pair.status(Node::A);
    let b = pair.status(Node::B);
    assert!(
        b["applied_seq"].as_u64().unwrap_or(0) >= a["committed_seq"].as_u64().unwrap_or(u64::MAX),
        "beta is behind what alpha acknowledged:\nA: {a:#}\nB: {b:#}"
    );

    // And it holds every file: alpha goes, beta is promoted and serves them.
    pair.kill(Node::A);
    pair.wait_status(Node::B, "alpha seen dead", LONG, |s| {
        s["connection"] != "Connected"
    });
    pair.promote(Node::B);
    assert_files(&pair.node(Node::B).mnt(), &files, "beta after resync");
}

/// The daemon aborts on the injected panic: keep the kernel from writing a core
/// file (with core_pattern `core`, into the working directory, the checkout).
/// The soft limit of this test process, which its children inherit.
fn no_core_dumps() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a
    // live rlimit; lowering the soft limit needs no privilege.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_CORE, &mut lim) == 0 {
            lim.rlim_cur = 0;
            libc::setrlimit(libc::RLIMIT_CORE, &lim);
        }
    }
}
