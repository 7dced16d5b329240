//! Self-tests of the network lab (`lab.rs`): the private link joins the two
//! nodes and nothing else, a partition cuts it while processes live, a killed
//! node's processes are gone and its link is silent, programs run in the test's
//! mount namespace, and nothing is left behind, also after a panic.
//!
//! Run: `cargo test --test tests lab_selftest -- --test-threads=1`.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use crate::lab::{self, Lab, LabChild, Node};
use crate::util::{poll_until, tempdir};

/// How long a link that was just brought up (or healed) may take to carry packets.
const SETTLE: Duration = Duration::from_secs(10);

/// Whether `from` reaches `to` within `SETTLE` (one ping per try).
fn eventually_pings(lab: &Lab, from: Node, to: Node) -> bool {
    poll_until(SETTLE, || lab.ping(from, to).then_some(())).is_some()
}

/// What `probe_all` returns, for messages.
const PROBES: &str = "[ping A->B, ping B->A, udp A->B, udp B->A]";

/// Every probe between the nodes, run at once (a failing probe waits out its
/// whole timeout, so one after another they would add up): see `PROBES`.
fn probe_all(lab: &Lab) -> [bool; 4] {
    use Node::{A, B};
    std::thread::scope(|s| {
        [
            s.spawn(|| lab.ping(A, B)),
            s.spawn(|| lab.ping(B, A)),
            s.spawn(|| lab.udp_reaches(A, B)),
            s.spawn(|| lab.udp_reaches(B, A)),
        ]
        .map(|h| h.join().expect("probe thread"))
    })
}

/// `sleep 600` on `node`, recorded by the lab.
fn spawn_sleep(lab: &Lab, node: Node) -> LabChild {
    let mut cmd = lab.command(node, "sleep");
    cmd.arg("600").stdin(Stdio::null());
    lab.spawn(node, cmd)
}

/// The inode that identifies a namespace: of `/run/netns/NAME`, or of
/// `/proc/PID/ns/net` (which `metadata` follows to the namespace).
fn ns_inode(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

fn listed(name: &str) -> bool {
    lab::netns_list()
        .expect("ip netns list")
        .iter()
        .any(|n| n == name)
}

#[test]
fn lab_selftest_link_joins_the_nodes_and_nothing_else() {
    if !lab::require_lab("lab_selftest_link_joins_the_nodes_and_nothing_else") {
        return;
    }
    let lab = Lab::new("link");
    for node in Node::ALL {
        let info = lab.node(node);
        assert!(listed(info.ns_name()), "{} not listed", info.ns_name());
        assert_eq!(
            info.netns_path(),
            Path::new("/run/netns").join(info.ns_name())
        );
    }
    assert_ne!(lab.node(Node::A).addr(), lab.node(Node::B).addr());
    assert!(eventually_pings(&lab, Node::A, Node::B), "A cannot ping B");
    assert_eq!(probe_all(&lab), [true; 4], "{PROBES}");
    assert!(lab.ping(Node::A, Node::A), "A cannot ping itself");

    // The test's own namespace has neither the addresses nor a link to them.
    let host_addrs = lab::ip(&["-o", "addr", "show"]).expect("ip addr");
    for node in Node::ALL {
        let addr = lab.node(node).addr().to_string();
        assert!(
            !host_addrs.contains(&format!(" {addr}/")),
            "host has {addr}"
        );
        assert!(!lab.ping_from_host(node), "host reaches {addr}");
    }
}

#[test]
fn lab_selftest_partition_cuts_the_link_and_heal_restores_it() {
    if !lab::require_lab("lab_selftest_partition_cuts_the_link_and_heal_restores_it") {
        return;
    }
    let lab = Lab::new("partition");
    assert!(eventually_pings(&lab, Node::A, Node::B));
    let sleepers = Node::ALL.map(|n| spawn_sleep(&lab, n));

    lab.partition();
    assert_eq!(probe_all(&lab), [false; 4], "partitioned: {PROBES}");
    for s in &sleepers {
        assert!(
            s.try_wait().is_none() && alive(s.pid()),
            "a partition kills"
        );
    }

    lab.heal();
    assert!(eventually_pings(&lab, Node::A, Node::B), "healed: no ping");
    assert_eq!(probe_all(&lab), [true; 4], "healed: {PROBES}");

    // One way: datagrams from A are lost, B's still arrive; anything that
    // needs an answer (a ping, either way) fails.
    lab.partition_oneway(Node::A, Node::B);
    let want = [false, false, false, true];
    assert_eq!(probe_all(&lab), want, "A -> B cut: {PROBES}");
    lab.heal();
    assert!(eventually_pings(&lab, Node::B, Node::A), "healed: no ping");
    assert_eq!(probe_all(&lab), [true; 4], "healed: {PROBES}");
}

#[test]
fn lab_selftest_kill_node_kills_its_processes_and_silences_it() {
    if !lab::require_lab("lab_selftest_kill_node_kills_its_processes_and_silences_it") {
        return;
    }
    let lab = Lab::new("kill");
    assert!(eventually_pings(&lab, Node::A, Node::B));
    let on_a = spawn_sleep(&lab, Node::A);
    let on_b = spawn_sleep(&lab, Node::B);
    // A grandchild on B that the lab never saw: `sh` forks a sleep and waits.
    let marker = tempdir("twinfs-lab-");
    let pidfile = marker.path().join("grandchild.pid");
    let mut cmd = lab.command(Node::B, "sh");
    cmd.args(["-c", "sleep 600 & echo $! > \"$1\"; wait", "sh"])
        .arg(&pidfile)
        .stdin(Stdio::null());
    let shell = lab.spawn(Node::B, cmd);
    let grandchild: u32 = poll_until(SETTLE, || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .expect("the shell on B wrote its child's pid");

    // The recorded pid is the program's own (nsenter execs it in place), and
    // it runs in B's network namespace.
    let b_ns = ns_inode(lab.node(Node::B).netns_path());
    for pid in [on_b.pid(), shell.pid(), grandchild] {
        assert_eq!(ns_inode(Path::new(&format!("/proc/{pid}/ns/net"))), b_ns);
    }
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", on_b.pid())).unwrap();
    assert_eq!(comm.trim(), "sleep");

    lab.kill_node(Node::B);
    let status = on_b.try_wait().expect("B's sleep was reaped");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(shell.try_wait().is_some());
    assert!(
        poll_until(SETTLE, || (!alive(grandchild)).then_some(())).is_some(),
        "B's grandchild {grandchild} survived"
    );
    assert!(
        on_a.try_wait().is_none() && alive(on_a.pid()),
        "A's sleep died too"
    );
    assert_eq!(probe_all(&lab), [false; 4], "B dead: {PROBES}");

    lab.revive_links(Node::B);
    assert!(eventually_pings(&lab, Node::A, Node::B), "revive: no ping");
    assert!(on_b.try_wait().is_some(), "revive restarts nothing");
}

#[test]
fn lab_selftest_commands_share_the_test_mount_namespace() {
    if !lab::require_lab("lab_selftest_commands_share_the_test_mount_namespace") {
        return;
    }
    let lab = Lab::new("mntns");
    let dir = tempdir("twinfs-lab-");
    let file = dir.path().join(format!("x-{}", std::process::id()));
    let out = lab
        .command(Node::A, "sh")
        .args([
            "-c",
            "echo hi > \"$1\" && readlink /proc/self/ns/mnt /proc/self/ns/net",
            "sh",
        ])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("run sh in node A");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hi\n");

    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let my_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_eq!(
        lines.first().copied(),
        my_mnt.to_str(),
        "node A runs in another mount namespace"
    );
    let a_net = format!("net:[{}]", ns_inode(lab.node(Node::A).netns_path()));
    assert_eq!(lines.get(1).copied(), Some(a_net.as_str()));
    let my_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(Some(a_net.as_str()), my_net.to_str());
}

#[test]
fn lab_selftest_drop_removes_everything_even_after_a_panic() {
    if !lab::require_lab("lab_selftest_drop_removes_everything_even_after_a_panic") {
        return;
    }
    // A normal drop.
    let lab = Lab::new("drop");
    let names = lab.ns_names().map(str::to_string);
    let sleeper = spawn_sleep(&lab, Node::A);
    lab.partition();
    drop(lab);
    for n in &names {
        assert!(!listed(n), "{n} still listed after drop");
    }
    assert!(sleeper.try_wait().is_some(), "drop left a process running");

    // A test that panics with a partitioned lab and a live process.
    let seen: Mutex<Option<([String; 2], LabChild)>> = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::new("panic");
        let child = spawn_sleep(&lab, Node::B);
        *seen.lock().unwrap() = Some((lab.ns_names().map(str::to_string), child));
        lab.partition();
        panic!("intentional panic inside a lab test");
    });
    assert!(result.is_err());
    let (names, child) = seen.into_inner().unwrap().expect("the lab was made");
    for n in &names {
        assert!(!listed(n), "{n} still listed after a panic");
    }
    assert!(child.try_wait().is_some(), "a panic left a process running");
}

#[test]
fn lab_selftest_stale_namespaces_of_dead_runs_are_removed() {
    if !lab::require_lab("lab_selftest_stale_namespaces_of_dead_runs_are_removed") {
        return;
    }
    // A pid that certainly ran and is gone now (a reaped child of ours).
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    child.wait().expect("wait true");
    let dead = child.id();
    let stale = format!("tw-stale-{dead}-0-a");
    let live = format!("tw-stale-{}-0-b", std::process::id());
    let other = format!("tw-notalab-{dead}");
    assert_eq!(lab::lab_namespace_owner(&stale), Some(dead));
    assert_eq!(lab::lab_namespace_owner(&other), None);
    assert_eq!(lab::lab_namespace_owner("node-a"), None);
    for n in [&stale, &live, &other] {
        lab::ip(&["netns", "add", n]).expect("ip netns add");
    }
    let removed = lab::clean_stale_namespaces();
    let (stale_left, live_left, other_left) = (listed(&stale), listed(&live), listed(&other));
    for n in [&stale, &live, &other] {
        let _ = lab::ip(&["netns", "del", n]);
    }
    assert!(removed >= 1);
    assert!(!stale_left, "the dead run's namespace is still there");
    assert!(live_left, "a live run's namespace was removed");
    assert!(other_left, "a namespace that is not a lab's was removed");
}
