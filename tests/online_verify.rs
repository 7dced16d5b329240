//! Online verify end to end: a block corrupted on the secondary's disk is
//! found by comparing range hashes with the primary, named by its file, and
//! repaired through the replication stream.

use crate::harness::lab::{require_lab, Node};
use crate::harness::pair::Pair;
use crate::harness::util::{require_fuse, TestRng};
use crate::resync::write_file;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

fn require(test: &str) -> bool {
    require_fuse(test) && require_lab(test)
}

/// Flips one byte of the first occurrence of `marker` in the store's log.
fn corrupt(data_dir: &Path, marker: &[u8]) -> bool {
    let mut segs: Vec<_> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    for seg in segs {
        let bytes = std::fs::read(&seg).unwrap();
        if let Some(pos) = bytes.windows(marker.len()).position(|w| w == marker) {
            let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
            f.write_all_at(&[bytes[pos + 5] ^ 0x40], (pos + 5) as u64)
                .unwrap();
            f.sync_all().unwrap();
            return true;
        }
    }
    false
}

#[test]
fn online_verify_finds_and_repairs_a_block_corrupted_on_the_secondary() {
    if !require("online_verify_finds_and_repairs_a_block_corrupted_on_the_secondary") {
        return;
    }
    let mut pair = Pair::connected("verify", "");
    let mnt = pair.node(Node::A).mnt();
    let mut rng = TestRng::new(0x7e41f);
    for i in 0..30 {
        write_file(
            &mnt.join(format!("page-{i}.html")),
            &rng.bytes(1000 + i * 3000),
        );
    }
    let marker = b"twinfs-online-verify-marker-0123456789";
    let mut victim = rng.bytes(100_000);
    victim[40_000..40_000 + marker.len()].copy_from_slice(marker);
    write_file(&mnt.join("victim.bin"), &victim);
    pair.wait_in_sync(Node::A);

    let out = pair.twinfs(Node::A, &["verify", "--online"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "clean pair: {out:?}");
    assert!(text.contains(" 0 difference(s)"), "{text}");

    assert!(
        corrupt(&pair.node(Node::B).data(), marker),
        "marker not found in beta's log"
    );
    let out = pair.twinfs(Node::A, &["verify", "--online"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "differences must exit 1: {out:?}"
    );
    assert!(
        err.contains("/victim.bin (block 2): damaged on the peer")
            && err.contains("1 difference(s)"),
        "the report does not name the damaged file and block: {err}"
    );
    // Range hashes: only the range holding the damage was compared record by record.
    assert!(err.contains("1 of "), "{err}");

    let out = pair.twinfs(Node::A, &["verify", "--online", "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "repair: {out:?}");
    assert!(text.contains("repaired 1 on the peer"), "{text}");
    let clean = crate::harness::util::poll_until(Duration::from_secs(30), || {
        let out = pair.twinfs(Node::A, &["verify", "--online"]);
        out.status.success().then_some(())
    });
    assert!(clean.is_some(), "still different after the repair");

    // The secondary really holds the right bytes: fail over and read them.
    pair.kill(Node::A);
    pair.wait_status(Node::B, "primary seen dead", Duration::from_secs(60), |s| {
        s["connection"] != "Connected"
    });
    pair.promote(Node::B);
    let got = std::fs::read(pair.node(Node::B).mnt().join("victim.bin")).unwrap();
    assert!(got == victim, "victim.bin differs on beta after the repair");
}
