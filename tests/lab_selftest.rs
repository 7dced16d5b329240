//! Self-tests of the network lab (`src/lab/net.rs`, compiled into
//! `tests/harness/`): the private link joins the two nodes and nothing else,
//! a partition cuts it while processes live, a killed node's processes are
//! gone and its link is silent, programs run in the test's mount namespace,
//! and nothing is left behind, also after a panic. With the
//! public network: the bridge joins client, nodes and witness; a killed or
//! isolated node is silent there too (isolation keeps its processes); a
//! partition leaves it alone; a VIP added by hand is seen and reachable; and
//! Apache started from `web::ApacheConf` inside node A serves the client.
//!
//! Run: `cargo test --test tests lab_selftest -- --test-threads=1`.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use crate::harness::lab::{self, Lab, LabChild, Node, Place, PublicOpts};
use crate::harness::util::{poll_until, tempdir};
use crate::harness::web::{self, ApacheConf, Poller};

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

// ---------------------------------------------------------------------------
// The public network

/// Whether `from` reaches `to` within `SETTLE` (one ping per try).
fn eventually_reaches(lab: &Lab, from: Place, to: std::net::Ipv4Addr) -> bool {
    poll_until(SETTLE, || lab.ping_from(from, to).then_some(())).is_some()
}

/// One ping per (from, to), all at once; the results in the same order.
fn ping_all(lab: &Lab, pairs: &[(Place, std::net::Ipv4Addr)]) -> Vec<bool> {
    std::thread::scope(|s| {
        let hs: Vec<_> = pairs
            .iter()
            .map(|&(from, to)| s.spawn(move || lab.ping_from(from, to)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    })
}

/// `sleep 600` in `place`, recorded by the lab.
fn spawn_sleep_in(lab: &Lab, place: Place) -> LabChild {
    let mut cmd = lab.command_in(place, "sleep");
    cmd.arg("600").stdin(Stdio::null());
    lab.spawn_in(place, cmd)
}

/// A public lab whose client already reaches both nodes.
fn public_lab(tag: &str, witness: bool) -> Lab {
    let lab = Lab::with_public(tag, PublicOpts { witness });
    for node in Node::ALL {
        assert!(
            eventually_reaches(&lab, Place::Client, lab.public_addr(node)),
            "the client never reached {node:?} at {}",
            lab.public_addr(node)
        );
    }
    lab
}

#[test]
fn lab_selftest_public_bridge_joins_client_nodes_and_witness() {
    if !lab::require_lab("lab_selftest_public_bridge_joins_client_nodes_and_witness") {
        return;
    }
    let lab = public_lab("pub", true);
    use Place::{Client, Witness};
    let (a, b) = (Place::Node(Node::A), Place::Node(Node::B));
    let (pa, pb) = (lab.public_addr(Node::A), lab.public_addr(Node::B));
    let (c, w) = (lab.client_addr(), lab.witness_addr());
    assert!(eventually_reaches(&lab, Witness, c), "witness -> client");
    let pairs = [
        (Client, pa),
        (Client, pb),
        (Client, w),
        (a, pb),
        (b, pa),
        (a, w),
        (Witness, pa),
        (Witness, pb),
        (a, c),
        (b, c),
    ];
    assert_eq!(ping_all(&lab, &pairs), vec![true; pairs.len()], "{pairs:?}");
    // The private link is still there, and still private.
    assert!(eventually_pings(&lab, Node::A, Node::B));
    for priv_addr in [lab.node(Node::A).addr_v4(), lab.node(Node::B).addr_v4()] {
        assert!(
            !lab.ping_from(Client, priv_addr),
            "client reaches {priv_addr}"
        );
    }

    // Addresses and names are where the docs say.
    assert_eq!(
        pa.octets()[..3],
        [10, 202, lab.node(Node::A).addr_v4().octets()[2]]
    );
    assert_eq!(
        (pa.octets()[3], pb.octets()[3], w.octets()[3], c.octets()[3]),
        (1, 2, 3, 100)
    );
    assert_eq!(lab.vip().octets()[3], 10);
    let eth0 = lab::ip(&[
        "-n",
        lab.node(Node::A).ns_name(),
        "-o",
        "-4",
        "addr",
        "show",
        "dev",
        "eth0",
    ])
    .expect("ip addr in A");
    assert!(eth0.contains(&format!(" {pa}/24 ")), "{eth0}");
    for place in [Client, Witness, a, b] {
        assert!(listed(lab.ns_name_of(place)), "{place:?} not listed");
    }
    assert_eq!(lab.all_ns_names().len(), 4);
    assert!(lab.client_ns().ends_with("-c") && lab.witness_ns().ends_with("-w"));
    assert_eq!(
        lab::lab_namespace_owner(lab.witness_ns()),
        Some(std::process::id())
    );
    assert!(lab.vip_holders().is_empty(), "the lab configured the VIP");
    assert_eq!(lab.neigh_mac(Client, pa), Some(lab.node_mac(Node::A)));
    assert_ne!(lab.node_mac(Node::A), lab.node_mac(Node::B));

    // The host has none of it.
    let host_addrs = lab::ip(&["-o", "addr", "show"]).expect("ip addr");
    for addr in [pa, pb, c, w] {
        assert!(
            !host_addrs.contains(&format!(" {addr}/")),
            "host has {addr}"
        );
    }
}

#[test]
fn lab_selftest_kill_node_cuts_the_public_cable_too() {
    if !lab::require_lab("lab_selftest_kill_node_cuts_the_public_cable_too") {
        return;
    }
    let lab = public_lab("pubkill", false);
    let on_a = spawn_sleep(&lab, Node::A);
    let on_client = spawn_sleep_in(&lab, Place::Client);
    let (pa, pb, c) = (
        lab.public_addr(Node::A),
        lab.public_addr(Node::B),
        lab.client_addr(),
    );
    let b = Place::Node(Node::B);

    lab.kill_node(Node::A);
    assert!(on_a.try_wait().is_some(), "A's sleep survived");
    assert!(on_client.try_wait().is_none(), "the client's sleep died");
    assert!(!lab.links_up(Node::A) && !lab.public_up(Node::A));
    assert_eq!(
        ping_all(
            &lab,
            &[(Place::Client, pa), (b, pa), (Place::Client, pb), (b, c)]
        ),
        [false, false, true, true],
        "[client->A, B->A, client->B, B->client] with A dead"
    );

    lab.revive_links(Node::A);
    assert!(lab.links_up(Node::A) && lab.public_up(Node::A));
    assert!(
        eventually_reaches(&lab, Place::Client, pa),
        "revived A unreachable"
    );
    assert!(
        eventually_pings(&lab, Node::B, Node::A),
        "revived A: private"
    );
}

#[test]
fn lab_selftest_isolate_silences_a_node_whose_processes_live_on() {
    if !lab::require_lab("lab_selftest_isolate_silences_a_node_whose_processes_live_on") {
        return;
    }
    let lab = public_lab("isolate", true);
    assert!(eventually_pings(&lab, Node::A, Node::B));
    let on_a = spawn_sleep(&lab, Node::A);
    let (a, b) = (Place::Node(Node::A), Place::Node(Node::B));
    let (pa, c, w) = (
        lab.public_addr(Node::A),
        lab.client_addr(),
        lab.witness_addr(),
    );

    lab.isolate(Node::A);
    assert!(
        on_a.try_wait().is_none() && alive(on_a.pid()),
        "isolate killed"
    );
    assert!(!lab.links_up(Node::A));
    assert_eq!(
        ping_all(
            &lab,
            &[(a, c), (a, w), (Place::Client, pa), (b, pa), (b, c), (b, w)]
        ),
        [false, false, false, false, true, true],
        "[A->client, A->witness, client->A, B->A, B->client, B->witness] with A isolated"
    );
    assert_eq!(probe_all(&lab), [false; 4], "A isolated: {PROBES}");

    lab.revive_links(Node::A);
    assert!(
        eventually_reaches(&lab, a, c),
        "A back: no ping to the client"
    );
    assert!(eventually_pings(&lab, Node::A, Node::B), "A back: private");
    assert!(
        on_a.try_wait().is_none() && alive(on_a.pid()),
        "revive killed"
    );
}

#[test]
fn lab_selftest_partition_leaves_public_up_and_cut_public_leaves_private_up() {
    if !lab::require_lab("lab_selftest_partition_leaves_public_up_and_cut_public_leaves_private_up")
    {
        return;
    }
    let lab = public_lab("pubpart", false);
    assert!(eventually_pings(&lab, Node::A, Node::B));
    let (a, b) = (Place::Node(Node::A), Place::Node(Node::B));
    let (pa, pb) = (lab.public_addr(Node::A), lab.public_addr(Node::B));

    lab.partition();
    assert_eq!(probe_all(&lab), [false; 4], "partitioned: {PROBES}");
    assert_eq!(
        ping_all(
            &lab,
            &[(a, pb), (b, pa), (Place::Client, pa), (Place::Client, pb)]
        ),
        [true; 4],
        "[A->B, B->A, client->A, client->B] on the public network while partitioned"
    );
    lab.heal();
    assert!(eventually_pings(&lab, Node::A, Node::B), "healed: no ping");

    lab.cut_public(Node::A);
    assert!(lab.public_up(Node::B) && !lab.public_up(Node::A) && !lab.links_up(Node::A));
    let link = lab::ip(&[
        "-n",
        lab.node(Node::A).ns_name(),
        "-o",
        "link",
        "show",
        "dev",
        "eth0",
    ])
    .expect("ip link in A");
    assert!(
        link.contains("NO-CARRIER"),
        "A's eth0 after a pulled cable: {link}"
    );
    assert_eq!(
        ping_all(&lab, &[(Place::Client, pa), (b, pa), (Place::Client, pb)]),
        [false, false, true],
        "[client->A, B->A, client->B] with A's cable pulled"
    );
    assert_eq!(
        probe_all(&lab),
        [true; 4],
        "private with A's cable pulled: {PROBES}"
    );

    lab.restore_public(Node::A);
    assert!(lab.links_up(Node::A));
    assert!(
        eventually_reaches(&lab, Place::Client, pa),
        "cable back: client->A"
    );
}

#[test]
fn lab_selftest_a_vip_added_by_hand_is_seen_and_reachable() {
    if !lab::require_lab("lab_selftest_a_vip_added_by_hand_is_seen_and_reachable") {
        return;
    }
    let lab = public_lab("vip", false);
    let vip = lab.vip();
    let cidr = format!("{vip}/{}", lab.public_prefix_len());
    let a_ns = lab.node(Node::A).ns_name().to_string();
    assert!(lab.vip_holders().is_empty());
    assert_eq!(
        lab.neigh_mac(Place::Client, vip),
        None,
        "client knows the VIP already"
    );

    lab::ip(&["-n", &a_ns, "addr", "add", &cidr, "dev", lab::PUBLIC_DEV]).expect("add VIP on A");
    assert_eq!(lab.vip_holders(), vec![Node::A]);
    assert!(
        eventually_reaches(&lab, Place::Client, vip),
        "client cannot ping the VIP on A"
    );
    assert_eq!(
        lab.neigh_mac(Place::Client, vip),
        Some(lab.node_mac(Node::A)),
        "the client's ARP entry for the VIP is not A's eth0"
    );
    // Reachable over the public network from B too (not over the private link:
    // B's route to the VIP is its eth0).
    lab.partition();
    assert!(
        lab.ping_from(Place::Node(Node::B), vip),
        "B cannot ping the VIP on A"
    );
    lab.heal();

    // Both holding it is what vip_holders exists to show.
    let b_ns = lab.node(Node::B).ns_name().to_string();
    lab::ip(&["-n", &b_ns, "addr", "add", &cidr, "dev", lab::PUBLIC_DEV]).expect("add VIP on B");
    assert_eq!(lab.vip_holders(), vec![Node::A, Node::B]);
    lab::ip(&["-n", &a_ns, "addr", "del", &cidr, "dev", lab::PUBLIC_DEV]).expect("del VIP on A");
    assert_eq!(lab.vip_holders(), vec![Node::B]);
    // A dead node keeps what it had configured.
    lab.kill_node(Node::B);
    assert_eq!(lab.vip_holders(), vec![Node::B]);
}

#[test]
fn lab_selftest_public_drop_removes_client_and_witness_even_after_a_panic() {
    if !lab::require_lab("lab_selftest_public_drop_removes_client_and_witness_even_after_a_panic") {
        return;
    }
    let lab = Lab::with_public("pubdrop", PublicOpts { witness: true });
    let names = lab.all_ns_names();
    assert_eq!(names.len(), 4, "{names:?}");
    let sleepers: Vec<LabChild> = [Place::Client, Place::Witness, Place::Node(Node::A)]
        .into_iter()
        .map(|p| spawn_sleep_in(&lab, p))
        .collect();
    // A process the lab did not spawn (as a detached daemon would be).
    let marker = tempdir("twinfs-lab-");
    let pidfile = marker.path().join("daemon.pid");
    let out = lab
        .command_in(Place::Witness, "sh")
        .args(["-c", "sleep 600 >/dev/null 2>&1 & echo $! > \"$1\"", "sh"])
        .arg(&pidfile)
        .stdin(Stdio::null())
        .output()
        .expect("run sh in the witness");
    assert!(out.status.success(), "{out:?}");
    let daemon: u32 = std::fs::read_to_string(&pidfile)
        .expect("daemon pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(alive(daemon));
    lab.partition();
    lab.cut_public(Node::B);
    drop(lab);
    for n in &names {
        assert!(!listed(n), "{n} still listed after drop");
    }
    for s in &sleepers {
        assert!(
            s.try_wait().is_some(),
            "drop left {:?}'s sleep running",
            s.place()
        );
    }
    assert!(
        poll_until(SETTLE, || (!alive(daemon)).then_some(())).is_some(),
        "drop left the witness's daemon {daemon} running"
    );

    let seen: Mutex<Option<Vec<String>>> = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::with_public("pubpanic", PublicOpts { witness: true });
        *seen.lock().unwrap() = Some(lab.all_ns_names());
        lab.isolate(Node::A);
        panic!("intentional panic inside a public lab test");
    });
    assert!(result.is_err());
    for n in seen.into_inner().unwrap().expect("the lab was made") {
        assert!(!listed(&n), "{n} still listed after a panic");
    }
}

#[test]
fn lab_selftest_apache_from_apacheconf_serves_the_client_and_stops() {
    let name = "lab_selftest_apache_from_apacheconf_serves_the_client_and_stops";
    if !lab::require_lab(name) || !web::require_apache(name) {
        return;
    }
    let lab = public_lab("apache", false);
    // Apache runs as www-data: everything on the way must be readable.
    let root_dir = tempdir("twinfs-web-root-");
    let mode = |p: &Path, m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    };
    mode(root_dir.path(), 0o755);
    let page = format!("<html>node A, lab {}</html>\n", lab.tag());
    let index = root_dir.path().join("index.html");
    std::fs::write(&index, &page).expect("write index.html");
    mode(&index, 0o644);
    let conf_dir = tempdir("twinfs-web-conf-");
    let conf = ApacheConf::write(conf_dir.path(), root_dir.path(), None, 80);

    let out = web::run_in(
        &lab,
        Place::Node(Node::A),
        &conf.start_argv(),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("start: {e}\n{}", conf.logs()));
    let pid = conf
        .running_pid()
        .unwrap_or_else(|| panic!("no Apache after start ({out:?})\n{}", conf.logs()));
    // It runs in A's network namespace, detached from the start command.
    assert_eq!(
        ns_inode(Path::new(&format!("/proc/{pid}/ns/net"))),
        ns_inode(lab.node(Node::A).netns_path())
    );
    // Starting again is a no-op that succeeds, as the supervisor expects.
    web::run_in(
        &lab,
        Place::Node(Node::A),
        &conf.start_argv(),
        Duration::from_secs(30),
    )
    .expect("second start");
    assert_eq!(conf.running_pid(), Some(pid));

    let url = format!("http://{}/index.html", lab.public_addr(Node::A));
    let poller = Poller::start(&lab, Place::Client, &url, Duration::from_secs(30));
    let ok = poller
        .wait_ok_after(Duration::ZERO, Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "no 200 from Apache on A:\n{}\n{}",
                poller.report(),
                conf.logs()
            )
        });
    assert_eq!(ok.hash(), Some(web::body_hash(page.as_bytes())), "{ok:?}");
    let (status, body) = web::http_get(&lab, Place::Client, &url, Duration::from_secs(5))
        .expect("one GET from the client");
    assert_eq!((status, body), (200, page.clone().into_bytes()));
    let (status, _) = web::http_get(
        &lab,
        Place::Client,
        &format!("http://{}/missing", lab.public_addr(Node::A)),
        Duration::from_secs(5),
    )
    .expect("GET of a missing page");
    assert_eq!(status, 404);

    web::run_in(
        &lab,
        Place::Node(Node::A),
        &conf.stop_argv(),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("stop: {e}\n{}", conf.logs()));
    // Stop returns once the pid file's process is gone.
    let gone_at = poller.elapsed();
    assert!(!alive(pid), "Apache pid {pid} alive after stop returned");
    assert_eq!(conf.running_pid(), None);
    let e = web::http_get(&lab, Place::Client, &url, Duration::from_secs(2))
        .expect_err("Apache answers after stop");
    assert!(e.contains("connect"), "{e}");
    // Stopping a stopped Apache succeeds too.
    web::run_in(
        &lab,
        Place::Node(Node::A),
        &conf.stop_argv(),
        Duration::from_secs(30),
    )
    .expect("second stop");

    // The poller saw the site go away.
    let seen_after = poll_until(SETTLE, || {
        poller.results().into_iter().find(|s| s.at >= gone_at)
    });
    let samples = poller.stop();
    let report = web::report(&samples);
    let after = seen_after.unwrap_or_else(|| panic!("no sample after the stop:\n{report}"));
    assert!(!after.is_ok(), "{after:?} after Apache stopped:\n{report}");
    assert!(
        samples
            .iter()
            .filter(|s| s.at >= gone_at)
            .all(|s| !s.is_ok()),
        "a 200 after Apache stopped:\n{report}"
    );
    assert!(samples.iter().any(|s| s.is_ok()), "{report}");
}
