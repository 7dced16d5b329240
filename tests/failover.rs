//! Acceptance (issue 4): automatic failover with real parts. Two `twinfs run`
//! nodes with a `[failover]` table and the shipped `scripts/failover.lua`,
//! Apache (Debian's apache2, started and stopped by the hooks inside each
//! node's namespace) serving the twinfs mount, a client fetching the page
//! from the VIP on the public bridge every 50 ms.
//!
//! - `failover_after_primary_death`: the primary dies (kill -9, links down);
//!   the secondary promotes, claims the VIP (checked gratuitous ARP), starts
//!   Apache, and the client gets the same content again; every
//!   fsync-acknowledged file is served; the old primary rejoins as Secondary
//!   (its leftover VIP released at start), resyncs, and does not fail back;
//!   only one node ever holds the VIP once it is back.
//! - `switchover_moves_the_role_without_loss`: `twinfs switchover`.
//! - `isolated_primary_demotes_and_secondary_promotes`: only the primary's
//!   links are cut; it demotes itself within deadtime, the peer promotes.
//! - `cut_replication_link_does_not_promote`: only the private link is cut;
//!   the beacon shows the peer alive, nobody promotes, the status says why.
//! - `startup_releases_leftover_vip_and_service`: a node that starts as
//!   Secondary releases a VIP it still holds and stops a running Apache.

use crate::harness::lab::{require_lab, Lab, Node, Place, PublicOpts};
use crate::harness::pair::Pair;
use crate::harness::util::{poll_until, require_fuse};
use crate::harness::web::{self, ApacheConf, Poller};
use serde_json::Value;
use std::io::Write as _;
use std::time::{Duration, Instant};

pub(crate) const BEACON_PORT: u16 = 7790;
/// How long a failover may take in this test before it counts as failed
/// (generous: CI machines are slow; the benchmark measures the real time).
pub(crate) const FAILOVER_LIMIT: Duration = Duration::from_secs(60);

pub(crate) fn require_all(test: &str) -> bool {
    require_fuse(test) && require_lab(test) && web::require_apache(test)
}

/// The shipped hook script.
fn script_path() -> String {
    format!("{}/scripts/failover.lua", env!("CARGO_MANIFEST_DIR"))
}

/// A pair in a lab with a public network, each node with Apache on its mount
/// and a `[failover]` table; `more` is appended to the `[failover]` table.
/// The Apache configs live (and are cleaned up) with the returned vector.
pub(crate) fn failover_pair(tag: &str, opts: PublicOpts, more: &str) -> (Pair, Vec<ApacheConf>) {
    let more = more.to_owned();
    failover_pair_with(tag, opts, move |_, conf, _| {
        format!("{more}\n{}", conf.services_toml("apache2"))
    })
}

/// Like [`failover_pair`]; `tail(node, apache)` ends that node's
/// `[failover]` table (and must add the `[failover.services.apache2]` table).
pub(crate) fn failover_pair_with(
    tag: &str,
    opts: PublicOpts,
    tail: impl Fn(Node, &ApacheConf, Option<std::net::Ipv4Addr>) -> String,
) -> (Pair, Vec<ApacheConf>) {
    failover_pair_apache(
        tag,
        opts,
        |_, _, dir, mnt| ApacheConf::write(dir, mnt, None, 80),
        tail,
    )
}

/// The lab's public addresses, for writing Apache configs: (alpha's,
/// beta's), and the VIP.
pub(crate) type PublicAddrs = ([std::net::Ipv4Addr; 2], std::net::Ipv4Addr);

/// Like [`failover_pair_with`]; `apache(node, addrs, dir, mount)` writes
/// that node's Apache config into `dir` (the plain one serves the mount on
/// every address, port 80).
pub(crate) fn failover_pair_apache(
    tag: &str,
    opts: PublicOpts,
    apache: impl Fn(Node, PublicAddrs, &std::path::Path, &std::path::Path) -> ApacheConf,
    tail: impl Fn(Node, &ApacheConf, Option<std::net::Ipv4Addr>) -> String,
) -> (Pair, Vec<ApacheConf>) {
    let lab = Lab::with_public(tag, opts);
    let witness = opts.witness.then(|| lab.witness_addr());
    let vip = lab.vip();
    let client = lab.client_addr();
    let publics = [lab.public_addr(Node::A), lab.public_addr(Node::B)];
    let confs = std::cell::RefCell::new(Vec::new());
    let mut pair = Pair::in_lab(lab, tag, |node, files| {
        let dir = files.mnt().parent().unwrap().join("apache");
        std::fs::create_dir_all(&dir).unwrap();
        let conf = apache(node, (publics, vip), &dir, &files.mnt());
        let tail = tail(node, &conf, witness);
        confs.borrow_mut().push(conf);
        let me = publics[idx(node)];
        let peer = publics[idx(node.peer())];
        // A tail may name its own script.
        let script = if tail.starts_with("script = ") {
            String::new()
        } else {
            format!("script = \"{}\"\n", script_path())
        };
        format!(
            "\n[failover]\n{script}vip = \"{vip}/24\"\ninterface = \"eth0\"\n\
             service = \"apache2\"\ncheck_url = \"http://{vip}/twinfs-health\"\n\
             public = \"{me}:{BEACON_PORT}\"\npeer_public = \"{peer}:{BEACON_PORT}\"\n\
             ping = [\"{client}\"]\nhome = \"alpha\"\nhook_timeout = \"30s\"\nhold_down = \"5s\"\n\
             {tail}\n",
        )
    });
    pair.hard_stop = true;
    (pair, confs.into_inner())
}

pub(crate) fn idx(n: Node) -> usize {
    match n {
        Node::A => 0,
        Node::B => 1,
    }
}

/// Waits until `node` is Primary with the VIP and Apache answering on it.
pub(crate) fn wait_serving(pair: &Pair, node: Node) {
    pair.wait_status(node, "primary", FAILOVER_LIMIT, |s| s["role"] == "Primary");
    let url = format!("http://{}/twinfs-health", pair.lab.vip());
    let ok = poll_until(FAILOVER_LIMIT, || {
        (pair.lab.vip_holders().contains(&node)
            && web::http_get(&pair.lab, Place::Client, &url, Duration::from_secs(2))
                .is_ok_and(|(code, _)| code == 200))
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "{} does not serve the VIP: holders {:?}\nstatus: {:#}\nlog:\n{}",
        pair.node(node).name,
        pair.lab.vip_holders(),
        pair.status(node),
        pair.node(node).log_text()
    );
}

/// Writes `n` files on `node`'s mount, each fsync'ed, and returns their contents.
fn write_files(pair: &Pair, node: Node, n: usize, tag: &str) -> Vec<(String, Vec<u8>)> {
    let mnt = pair.node(node).mnt();
    (0..n)
        .map(|i| {
            let name = format!("{tag}-{i:03}.html");
            let body = format!("<p>{tag} page {i}</p>\n{}\n", "x".repeat(i * 37)).into_bytes();
            let mut f = std::fs::File::create(mnt.join(&name)).unwrap();
            f.write_all(&body).unwrap();
            f.sync_all().unwrap();
            (name, body)
        })
        .collect()
}

/// Every file comes back byte-exact through the VIP.
fn assert_served(pair: &Pair, files: &[(String, Vec<u8>)]) {
    let vip = pair.lab.vip();
    for (name, body) in files {
        let url = format!("http://{vip}/{name}");
        let got = web::http_get(&pair.lab, Place::Client, &url, Duration::from_secs(5));
        match got {
            Ok((200, b)) if &b == body => {}
            other => panic!(
                "{url}: expected 200 with {} bytes, got {other:?}",
                body.len()
            ),
        }
    }
}

pub(crate) fn decisions(s: &Value) -> String {
    s["failover"]["decisions"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Starts both nodes and waits until alpha (the home node) serves.
pub(crate) fn start_serving(pair: &mut Pair) {
    pair.start(Node::A);
    pair.start(Node::B);
    wait_serving(pair, Node::A);
    pair.wait_in_sync(Node::A);
}

#[test]
fn failover_after_primary_death() {
    if !require_all("failover_after_primary_death") {
        return;
    }
    let (mut pair, _confs) = failover_pair("fo-death", PublicOpts::default(), "");
    start_serving(&mut pair);
    let index = b"<h1>served by twinfs</h1>\n".to_vec();
    {
        let mut f = std::fs::File::create(pair.node(Node::A).mnt().join("index.html")).unwrap();
        f.write_all(&index).unwrap();
        f.sync_all().unwrap();
    }
    let files = write_files(&pair, Node::A, 40, "acked");
    assert_served(&pair, &files);

    let url = format!("http://{}/index.html", pair.lab.vip());
    let poller = Poller::start(&pair.lab, Place::Client, &url, Duration::from_secs(120));
    let before = poller
        .wait_ok_after(Duration::ZERO, Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the client never got the page before the kill: {}",
                poller.report()
            )
        });
    let killed_at = poller.elapsed();
    pair.kill(Node::A);

    // The secondary takes over: VIP, Apache, the same content.
    wait_serving(&pair, Node::B);
    let back = poller
        .wait_ok_after(killed_at, FAILOVER_LIMIT)
        .unwrap_or_else(|| {
            panic!(
                "the client never got 200 again: {}\nstatus B: {:#}",
                poller.report(),
                pair.status(Node::B)
            )
        });
    assert_eq!(
        back.hash(),
        before.hash(),
        "after the failover the page differs"
    );
    assert_eq!(back.hash(), Some(web::body_hash(&index)));
    eprintln!(
        "failover: first 200 from beta {:.2} s after the kill",
        (back.at - killed_at).as_secs_f64()
    );
    drop(poller.stop());
    // The client's ARP entry for the VIP moved to beta (gratuitous ARP).
    assert_eq!(
        pair.lab.neigh_mac(Place::Client, pair.lab.vip()),
        Some(pair.lab.node_mac(Node::B)),
        "the client still sends VIP traffic elsewhere"
    );
    assert_served(&pair, &files);
    // The Prometheus endpoint (127.0.0.1:9747 inside beta's namespace) and
    // `twinfs status --watch` tell the same story.
    let (code, body) = web::http_get(
        &pair.lab,
        Place::Node(Node::B),
        "http://127.0.0.1:9747/metrics",
        Duration::from_secs(5),
    )
    .expect("metrics endpoint");
    let metrics = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 200, "{metrics}");
    for want in [
        "twinfs_up 1",
        "twinfs_role{role=\"Primary\"} 1",
        "twinfs_failover_promotions_total 1",
        "twinfs_hook_runs_total{hook=\"on_promote\"} 1",
        "twinfs_hook_last_duration_seconds{hook=\"on_promote\"}",
        "twinfs_peer_losses_total 1",
    ] {
        assert!(
            metrics.contains(want),
            "{want:?} missing from beta's metrics:\n{metrics}"
        );
    }
    let out = pair.twinfs(
        Node::B,
        &["status", "--watch", "--interval", "100ms", "--count", "2"],
    );
    let watch = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(watch.matches("twinfs status --watch").count(), 2, "{watch}");
    assert!(watch.contains("failover:    Idle"), "{watch}");
    let sb = pair.status(Node::B);
    let d = decisions(&sb);
    assert!(d.contains("promot"), "no promotion decision recorded:\n{d}");
    assert!(
        sb["failover"]["last_hooks"]
            .to_string()
            .contains("vip.claim"),
        "the VIP claim is not in the status: {:#}",
        sb["failover"]
    );

    // The old primary comes back: its leftover VIP is released at start, it
    // resyncs as Secondary, and it does not take the role back.
    pair.lab.revive_links(Node::A);
    assert!(
        pair.lab.vip_holders().contains(&Node::A),
        "the dead node's VIP should still be configured (a crash leaves it)"
    );
    pair.start(Node::A);
    pair.wait_status(Node::A, "secondary, in sync", FAILOVER_LIMIT, |s| {
        s["role"] == "Secondary" && s["connection"] == "Connected" && s["disk"] == "UpToDate"
    });
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        let holders = pair.lab.vip_holders();
        assert_eq!(
            holders,
            vec![Node::B],
            "only beta may hold the VIP once alpha is back\nalpha's log:\n{}",
            pair.node(Node::A).log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        pair.status(Node::A)["role"],
        "Secondary",
        "no failback without auto_failback"
    );
    assert_served(&pair, &files);
    // Beta saw its peer come back and announced the VIP again (on_peer_back).
    pair.wait_status(Node::B, "VIP re-announced", FAILOVER_LIMIT, |s| {
        s["failover"]["last_hooks"]
            .to_string()
            .contains("on_peer_back vip.announce")
    });
}

#[test]
fn switchover_moves_the_role_without_loss() {
    if !require_all("switchover_moves_the_role_without_loss") {
        return;
    }
    let (mut pair, _confs) = failover_pair("fo-switch", PublicOpts::default(), "");
    start_serving(&mut pair);
    let files = write_files(&pair, Node::A, 30, "before");
    let out = pair.twinfs(Node::A, &["switchover"]);
    assert!(
        out.status.success(),
        "switchover: {}{}\nlog A:\n{}\nlog B:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        pair.node(Node::A).log_text(),
        pair.node(Node::B).log_text()
    );
    wait_serving(&pair, Node::B);
    assert_eq!(pair.status(Node::A)["role"], "Secondary");
    assert_served(&pair, &files);
    // Demotion finished on alpha before beta promoted: alpha's timeline has
    // the hand-over after its demotion steps, and beta's promotion follows it.
    let da = decisions(&pair.status(Node::A));
    let demoted = da.find("DemoteStore").expect("alpha demoted");
    let handover = da.find("HandOver").expect("alpha handed over");
    assert!(demoted < handover, "hand-over before demotion:\n{da}");
    // And back again.
    let more = write_files(&pair, Node::B, 10, "after");
    let out = pair.twinfs(Node::B, &["switchover"]);
    assert!(out.status.success(), "switchover back: {out:?}");
    wait_serving(&pair, Node::A);
    assert_served(&pair, &files);
    assert_served(&pair, &more);
}

#[test]
fn isolated_primary_demotes_and_secondary_promotes() {
    if !require_all("isolated_primary_demotes_and_secondary_promotes") {
        return;
    }
    let (mut pair, _confs) = failover_pair("fo-isol", PublicOpts::default(), "");
    start_serving(&mut pair);
    let files = write_files(&pair, Node::A, 20, "isol");
    pair.lab.isolate(Node::A);
    // Alpha is alive but reaches nobody: it stops Apache, releases the VIP.
    pair.wait_status(Node::A, "demoted itself", FAILOVER_LIMIT, |s| {
        s["role"] == "Secondary"
    });
    let sa = pair.status(Node::A);
    assert!(
        decisions(&sa).contains("isolated"),
        "the reason should say isolated:\n{}",
        decisions(&sa)
    );
    wait_serving(&pair, Node::B);
    assert_eq!(pair.lab.vip_holders(), vec![Node::B]);
    assert_served(&pair, &files);
}

#[test]
fn cut_replication_link_does_not_promote() {
    if !require_all("cut_replication_link_does_not_promote") {
        return;
    }
    let (mut pair, _confs) = failover_pair("fo-cut", PublicOpts::default(), "");
    start_serving(&mut pair);
    pair.lab.partition();
    // Well past deadtime: the beacon still hears alpha, so beta stays put.
    pair.wait_status(Node::B, "link down seen", FAILOVER_LIMIT, |s| {
        s["connection"] != "Connected"
    });
    let why = pair.wait_status(Node::B, "reason recorded", FAILOVER_LIMIT, |s| {
        decisions(s).contains("public network")
    });
    std::thread::sleep(Duration::from_secs(3));
    let sb = pair.status(Node::B);
    assert_eq!(
        sb["role"], "Secondary",
        "beta promoted over a cut link: {sb:#}"
    );
    assert_eq!(pair.lab.vip_holders(), vec![Node::A]);
    eprintln!("beta's reason: {}", decisions(&why));
    pair.lab.heal();
    pair.wait_in_sync(Node::A);
}

#[test]
fn startup_releases_leftover_vip_and_service() {
    if !require_all("startup_releases_leftover_vip_and_service") {
        return;
    }
    let (mut pair, confs) = failover_pair("fo-start", PublicOpts::default(), "");
    // Beta looks like a crashed primary: the VIP on its eth0, Apache running.
    let vip = format!("{}/24", pair.lab.vip());
    let out = pair
        .lab
        .command(Node::B, "ip")
        .args(["addr", "add", &vip, "dev", "eth0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip addr add: {out:?}");
    let conf = &confs[1];
    let out = web::run_in(
        &pair.lab,
        Place::Node(Node::B),
        &conf.start_argv(),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(out.status.success(), "apache start: {out:?}");
    assert!(
        conf.running_pid().is_some(),
        "apache should run before the node starts"
    );
    assert_eq!(pair.lab.vip_holders(), vec![Node::B]);
    pair.start(Node::B);
    let ok = poll_until(Duration::from_secs(30), || {
        (pair.lab.vip_holders().is_empty() && conf.running_pid().is_none()).then_some(())
    });
    assert!(
        ok.is_some(),
        "beta kept the VIP ({:?}) or Apache (pid {:?})\nlog:\n{}",
        pair.lab.vip_holders(),
        conf.running_pid(),
        pair.node(Node::B).log_text()
    );
}

pub(crate) const WITNESS_PORT: u16 = 7791;

/// Waits until alpha's escalation command left its mark in `marker`.
pub(crate) fn wait_escalated(pair: &Pair, marker: &std::path::Path) {
    let ok = poll_until(FAILOVER_LIMIT, || {
        std::fs::read_to_string(marker)
            .ok()
            .filter(|t| t.contains("escalated"))
    });
    assert!(
        ok.is_some(),
        "alpha did not escalate\nstatus: {:#}\nlog:\n{}",
        pair.status(Node::A),
        pair.node(Node::A).log_text()
    );
}

/// The witness's key pair, made as an admin would (`twinfs keygen`).
pub(crate) struct WitnessFiles {
    dir: tempfile::TempDir,
}

impl WitnessFiles {
    pub(crate) fn new() -> WitnessFiles {
        let dir = crate::harness::util::tempdir("witness");
        let w = WitnessFiles { dir };
        let out = crate::harness::util::run_twinfs(&[
            "keygen",
            "--name",
            "witness",
            "--cert",
            w.cert().to_str().unwrap(),
            "--key",
            w.key().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "keygen witness: {out:?}");
        w
    }
    pub(crate) fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("witness.crt")
    }
    fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("witness.key")
    }
    pub(crate) fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("witness.log")
    }
}

/// `twinfs witness` in the lab's witness namespace.
pub(crate) fn start_witness(pair: &Pair, w: &WitnessFiles) -> crate::harness::lab::LabChild {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(w.log())
        .unwrap();
    let mut cmd = pair
        .lab
        .command_in(Place::Witness, crate::harness::util::twinfs_bin());
    cmd.args([
        "witness",
        "--listen",
        &format!("{}:{WITNESS_PORT}", pair.lab.witness_addr()),
        "--cert",
        w.cert().to_str().unwrap(),
        "--key",
        w.key().to_str().unwrap(),
        "--node-cert",
        pair.node(Node::A).cert().to_str().unwrap(),
        "--node-cert",
        pair.node(Node::B).cert().to_str().unwrap(),
        "--lease",
        crate::harness::pair::DEADTIME,
    ])
    .stdin(std::process::Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    pair.lab.spawn_in(Place::Witness, cmd)
}

pub(crate) fn witness_lines(w: &WitnessFiles, addr: Option<std::net::Ipv4Addr>) -> String {
    format!(
        "witness = \"{}:{WITNESS_PORT}\"\nwitness_cert = \"{}\"\n",
        addr.expect("a lab with a witness"),
        w.cert().display()
    )
}

#[test]
fn witness_decides_promotion() {
    if !require_all("witness_decides_promotion") {
        return;
    }
    let w = WitnessFiles::new();
    let (mut pair, _confs) = failover_pair_with(
        "fo-witness",
        PublicOpts { witness: true },
        |_, conf, addr| {
            format!(
                "{}{}",
                witness_lines(&w, addr),
                conf.services_toml("apache2")
            )
        },
    );
    let witness = start_witness(&pair, &w);
    start_serving(&mut pair);
    let sa = pair.wait_status(Node::A, "lease held", FAILOVER_LIMIT, |s| {
        s["failover"]["witness"]
            .as_str()
            .is_some_and(|t| t.contains("held by alpha"))
    });
    eprintln!("alpha's witness: {}", sa["failover"]["witness"]);

    // The witness goes away: the primary keeps its role (it still has the peer).
    witness.kill();
    pair.wait_status(Node::A, "witness unreachable seen", FAILOVER_LIMIT, |s| {
        s["failover"]["witness"]
            .as_str()
            .is_some_and(|t| t.contains("UNREACHABLE"))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        pair.status(Node::A)["role"],
        "Primary",
        "alpha demoted with its peer alive"
    );

    // Now the primary dies too: without the witness's word, beta must not promote.
    pair.kill(Node::A);
    let sb = pair.wait_status(Node::B, "refusal recorded", FAILOVER_LIMIT, |s| {
        decisions(s).contains("did not promote") && decisions(s).contains("witness")
    });
    std::thread::sleep(Duration::from_secs(3));
    let sb2 = pair.status(Node::B);
    assert_eq!(
        sb2["role"], "Secondary",
        "beta promoted without the witness: {sb2:#}"
    );
    eprintln!("beta's reason: {}", sb["failover"]["why"]);

    // The witness returns; alpha's lease has long expired: beta takes over.
    let _witness = start_witness(&pair, &w);
    wait_serving(&pair, Node::B);
    let sb = pair.status(Node::B);
    assert!(
        sb["failover"]["witness"]
            .to_string()
            .contains("held by beta"),
        "{:#}",
        sb["failover"]
    );
}

#[test]
fn isolated_primary_with_witness_escalates_when_demotion_fails() {
    if !require_all("isolated_primary_with_witness_escalates_when_demotion_fails") {
        return;
    }
    let w = WitnessFiles::new();
    let marker_dir = crate::harness::util::tempdir("escalation");
    let marker = marker_dir.path().join("escalated");
    let (mut pair, _confs) = failover_pair_with(
        "fo-escal",
        PublicOpts { witness: true },
        |node, conf, addr| {
            let mut t = witness_lines(&w, addr);
            if node == Node::A {
                // Alpha's Apache "will not stop", and its escalation only
                // leaves a mark (a real one would reboot the machine).
                t.push_str(&format!(
                    "escalation = \"reboot\"\n\
                     escalation_command = [\"/bin/sh\", \"-c\", \"echo escalated > {}\"]\n\
                     [failover.services.apache2]\nstart = [{}]\n\
                     stop = [\"/bin/sh\", \"-c\", \"echo apache will not stop >&2; exit 1\"]\n\
                     pidfile = \"{}\"\n",
                    marker.display(),
                    conf.start_argv()
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    conf.pidfile().display()
                ));
            } else {
                t.push_str(&conf.services_toml("apache2"));
            }
            t
        },
    );
    let _witness = start_witness(&pair, &w);
    start_serving(&mut pair);
    let files = write_files(&pair, Node::A, 10, "escal");
    pair.lab.isolate(Node::A);
    // Alpha lost the peer and the witness: it tries to demote, cannot stop
    // Apache, and escalates.
    wait_escalated(&pair, &marker);
    let sa = pair.status(Node::A);
    let da = decisions(&sa);
    assert!(da.contains("isolated"), "{da}");
    assert!(da.contains("escalat"), "{da}");
    // Beta gets the lease once alpha's has run out, and takes over.
    wait_serving(&pair, Node::B);
    assert_served(&pair, &files);
}

#[test]
fn drill_switches_over_and_back() {
    if !require_all("drill_switches_over_and_back") {
        return;
    }
    let (mut pair, _confs) = failover_pair("fo-drill", PublicOpts::default(), "");
    start_serving(&mut pair);
    let files = write_files(&pair, Node::A, 10, "drill");
    // The drill runs on the primary, in its network namespace (it checks the
    // ARP answer and Apache from there, as an admin's shell would).
    let out = pair
        .lab
        .command(Node::A, crate::harness::util::twinfs_bin())
        .args([
            "drill",
            "--config",
            pair.node(Node::A).config().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "drill failed:\n{text}\nlog A:\n{}\nlog B:\n{}",
        pair.node(Node::A).log_text(),
        pair.node(Node::B).log_text()
    );
    for want in [
        "block digests equal on both nodes before",
        "beta is Primary, this node Secondary",
        "ARP: 10.202.",
        "alpha is Primary again",
        "block digests equal on both nodes after",
        "drill passed",
    ] {
        assert!(
            text.contains(want),
            "{want:?} missing from the drill output"
        );
    }
    wait_serving(&pair, Node::A);
    assert_served(&pair, &files);
    let db = decisions(&pair.status(Node::B));
    assert!(
        db.contains("the peer asks to take over"),
        "beta should have handed back on alpha's request:\n{db}"
    );
}

#[test]
fn fence_hook_runs_before_takeover_and_blocks_it_when_it_fails() {
    if !require_all("fence_hook_runs_before_takeover_and_blocks_it_when_it_fails") {
        return;
    }
    // The shipped script plus an on_fence that succeeds only once the "BMC"
    // (a file) allows it, and leaves a mark when it ran.
    let dir = crate::harness::util::tempdir("fence");
    let allow = dir.path().join("bmc-allows");
    let fenced = dir.path().join("fenced");
    let script = dir.path().join("failover.lua");
    let mut text = std::fs::read_to_string(script_path()).unwrap();
    text.push_str(&format!(
        "\nfunction on_fence()\n  twinfs.exec{{argv = {{\"/bin/sh\", \"-c\", \
         \"test -e {a} && echo fenced > {f}\"}}, timeout = 5}}\nend\n",
        a = allow.display(),
        f = fenced.display()
    ));
    std::fs::write(&script, text).unwrap();
    let out = crate::harness::util::run_twinfs(&["hooks", "check", script.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("on_fence"),
        "{out:?}"
    );
    let (mut pair, _confs) = failover_pair_with("fo-fence", PublicOpts::default(), |_, conf, _| {
        format!(
            "script = \"{}\"\n{}",
            script.display(),
            conf.services_toml("apache2")
        )
    });
    start_serving(&mut pair);
    pair.kill(Node::A);
    // The fence fails: beta does not take over, and says why.
    let sb = pair.wait_status(Node::B, "fence failure recorded", FAILOVER_LIMIT, |s| {
        decisions(s).contains("FencePeer failed")
    });
    assert_eq!(
        sb["role"], "Secondary",
        "promoted although fencing failed: {sb:#}"
    );
    assert!(!fenced.exists());
    // The BMC answers again: after the hold-down beta fences, then promotes.
    std::fs::write(&allow, b"").unwrap();
    wait_serving(&pair, Node::B);
    assert_eq!(std::fs::read_to_string(&fenced).unwrap().trim(), "fenced");
    let d = decisions(&pair.status(Node::B));
    let fence = d.rfind("step FencePeer").expect("fence step recorded");
    let promote = d.rfind("step PromoteStore").expect("promotion recorded");
    assert!(
        fence < promote,
        "the fence must come before the promotion:\n{d}"
    );
}

#[test]
fn clean_stop_of_the_primary_takes_the_site_down_first() {
    if !require_all("clean_stop_of_the_primary_takes_the_site_down_first") {
        return;
    }
    let (mut pair, confs) = failover_pair("fo-stop", PublicOpts::default(), "");
    start_serving(&mut pair);
    let files = write_files(&pair, Node::A, 10, "stop");
    // `systemctl stop twinfs` on the primary: SIGTERM. Apache holds the mount,
    // so the daemon must stop it (and release the VIP) before unmounting.
    let status = pair.stop(Node::A).expect("alpha exits after SIGTERM");
    assert!(
        status.success(),
        "alpha exited with {status:?}\nlog:\n{}",
        pair.node(Node::A).log_text()
    );
    assert!(
        confs[0].running_pid().is_none(),
        "alpha's Apache still runs"
    );
    assert!(
        !pair.lab.vip_holders().contains(&Node::A),
        "alpha still holds the VIP"
    );
    assert!(
        crate::harness::util::mounted_fstype(&pair.node(Node::A).mnt()).is_none(),
        "alpha's mount is still there"
    );
    // Beta takes over (its VIP claim finds no other holder).
    wait_serving(&pair, Node::B);
    assert_eq!(pair.lab.vip_holders(), vec![Node::B]);
    assert_served(&pair, &files);
}
