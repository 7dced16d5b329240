//! Split brain end to end: a partition (nftables), a second primary promoted
//! by hand, writes on both sides, the partition healed. By default the nodes
//! refuse to resync and report the files each side changed; each policy does
//! exactly what it says. Nothing is ever merged.

use crate::harness::lab::{require_lab, Node};
use crate::harness::pair::Pair;
use crate::harness::util::require_fuse;
use crate::resync::{contents, write_file};
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn require(test: &str) -> bool {
    require_fuse(test) && require_lab(test)
}

/// Connected pair with A primary, then a partition, B promoted, and
/// `a_files`/`b_files` files written on each side; then the partition heals.
fn split(tag: &str, policy: &str, a_files: usize, b_files: usize) -> Pair {
    let extra = if policy.is_empty() {
        String::new()
    } else {
        format!("split_brain = \"{policy}\"")
    };
    let pair = Pair::connected(tag, &extra);
    write_file(
        &pair.node(Node::A).mnt().join("common.txt"),
        b"before the split",
    );
    pair.wait_in_sync(Node::A);
    pair.lab.partition();
    pair.wait_status(Node::A, "peer lost", LONG, |s| {
        s["counters"]["peer_losses"].as_u64().unwrap_or(0) >= 1
    });
    pair.wait_status(Node::B, "primary lost", LONG, |s| {
        s["connection"] != "Connected"
    });
    pair.promote(Node::B);
    for i in 0..a_files {
        write_file(
            &pair.node(Node::A).mnt().join(format!("a-{i}.html")),
            format!("written on alpha {i}").as_bytes(),
        );
    }
    for i in 0..b_files {
        write_file(
            &pair.node(Node::B).mnt().join(format!("b-{i}.html")),
            format!("written on beta {i}").as_bytes(),
        );
    }
    pair.lab.heal();
    pair
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// After a policy or the admin picked `survivor`: the pair is in sync with
/// `survivor` primary, and a failover to the other node shows exactly the
/// survivor's files.
fn assert_survivor(pair: &mut Pair, survivor: Node, prefix: &str, gone: &str) {
    pair.wait_in_sync(survivor);
    let want = contents(&pair.node(survivor).mnt());
    assert!(want.keys().any(|k| k.starts_with(prefix)), "{want:?}");
    let victim = survivor.peer();
    pair.kill(survivor);
    pair.wait_status(victim, "survivor seen dead", LONG, |s| {
        s["connection"] != "Connected"
    });
    pair.promote(victim);
    let got = contents(&pair.node(victim).mnt());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the discarded side does not hold exactly the survivor's files\n--- survivor log\n{}\n--- victim log\n{}",
        pair.node(survivor).log_text(),
        pair.node(victim).log_text()
    );
    assert!(!got.keys().any(|k| k.starts_with(gone)), "{got:?}");
    for (k, v) in &want {
        assert!(got[k] == *v, "{k} differs");
    }
}

#[test]
fn split_brain_is_refused_and_reported_with_the_files_of_each_side() {
    if !require("split_brain_is_refused_and_reported_with_the_files_of_each_side") {
        return;
    }
    let mut pair = split("sb-refuse", "", 2, 3);
    for (node, mine, theirs) in [(Node::A, "/a-", "/b-"), (Node::B, "/b-", "/a-")] {
        let s = pair.wait_status(node, "split brain reported", LONG, |s| {
            !s["split_brain"].is_null() && !s["split_brain"]["peer_files"].is_null()
        });
        assert_ne!(s["connection"], "Connected", "{s:#}");
        let local = names(&s["split_brain"]["local_files"]);
        let peer = names(&s["split_brain"]["peer_files"]);
        assert!(
            local.iter().filter(|f| f.starts_with(mine)).count() >= 2
                && !local.iter().any(|f| f.starts_with(theirs)),
            "local files of {node:?}: {local:?}"
        );
        assert!(
            peer.iter().filter(|f| f.starts_with(theirs)).count() >= 2
                && !peer.iter().any(|f| f.starts_with(mine)),
            "peer files seen by {node:?}: {peer:?}"
        );
        let log = pair.node(node).log_text();
        assert!(
            log.contains("SPLIT BRAIN"),
            "no SPLIT BRAIN log line:\n{log}"
        );
        let human = String::from_utf8_lossy(&pair.twinfs(node, &["status"]).stdout).into_owned();
        assert!(
            human.contains("SPLIT BRAIN") && human.contains(&mine[1..]),
            "{human}"
        );
    }
    // Nothing was merged.
    assert!(!contents(&pair.node(Node::A).mnt())
        .keys()
        .any(|k| k.starts_with("b-")));
    assert!(!contents(&pair.node(Node::B).mnt())
        .keys()
        .any(|k| k.starts_with("a-")));
    // The admin decides: beta's changes go.
    let out = pair.twinfs(Node::B, &["demote"]);
    assert!(out.status.success(), "demote beta: {out:?}");
    let out = pair.twinfs(Node::B, &["discard-my-data"]);
    assert!(out.status.success(), "discard-my-data: {out:?}");
    assert_survivor(&mut pair, Node::A, "a-", "b-");
}

#[test]
fn discard_zero_changes_resyncs_the_side_that_wrote_nothing() {
    if !require("discard_zero_changes_resyncs_the_side_that_wrote_nothing") {
        return;
    }
    let mut pair = split("sb-zero", "discard-zero-changes", 3, 0);
    assert_survivor(&mut pair, Node::A, "a-", "b-");
}

#[test]
fn discard_younger_primary_resyncs_the_later_primary() {
    if !require("discard_younger_primary_resyncs_the_later_primary") {
        return;
    }
    // Beta became primary after alpha: its changes go, although it wrote more.
    let mut pair = split("sb-young", "discard-younger-primary", 1, 4);
    assert_survivor(&mut pair, Node::A, "a-", "b-");
}

#[test]
fn discard_least_changes_resyncs_the_side_with_fewer_changes() {
    if !require("discard_least_changes_resyncs_the_side_with_fewer_changes") {
        return;
    }
    // Alpha, the older primary, changed less: it gives up its role and its changes.
    let mut pair = split("sb-least", "discard-least-changes", 1, 4);
    assert_survivor(&mut pair, Node::B, "b-", "a-");
}
