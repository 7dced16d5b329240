//! The right to acknowledge alone: partitions with a writer running.
//!
//! A writer process on the primary's mount writes files in a loop (write,
//! fsync the file, fsync the directory, append a line to a log file and fsync
//! it) and records each file whose fsyncs all returned. Then a cable is cut.
//! What must hold (DURABILITY.md, "The right to acknowledge alone"):
//!
//! - `cut_cable_isolated_primary_*`: all of the primary's cables are pulled
//!   while its processes live. It suspends its writes (no evidence), demotes
//!   (its mount's users are stopped, the busy mount does not block it), the
//!   peer promotes; at no sampled moment (every 100 ms) do both nodes
//!   acknowledge; after the cables return the old primary is resynced as a
//!   secondary without any manual step, and every write either node
//!   acknowledged is on the node that serves. Without and with a witness.
//! - `replication_link_cut_*`: the private link only: no promotion (the
//!   public beacon shows the primary alive), the primary acknowledges alone
//!   (the ping target answers), and resyncs the peer afterwards.
//! - `public_network_cut_*`: both public cables: the replication link still
//!   works, nobody promotes, writes go on.
//! - `isolated_secondary_*`: the primary goes on alone, the secondary stays.
//! - `witness_cut_from_the_primary_*`: the primary keeps writing while
//!   connected; when it then loses the peer too it suspends (and nobody
//!   promotes: the beacon shows it alive); when the link returns, the
//!   suspended writes complete.

use crate::failover::{
    decisions, failover_pair, failover_pair_with, start_serving, start_witness, wait_serving,
    witness_lines, WitnessFiles, FAILOVER_LIMIT,
};
use crate::harness::lab::{Node, Place, PublicOpts};
use crate::harness::pair::Pair;
use crate::harness::util::{poll_until, run_twinfs};
use serde_json::Value;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a writer runs (each test stops its writers much earlier).
const WRITER_LIMIT_S: u64 = 300;
/// How often the sampler looks at both nodes.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// A replicating primary counts as acknowledging only while it heard the
/// peer this recently (2 × keepalive): under protocol C a primary whose peer
/// is silent acknowledges nothing.
const FRESH_MS: u64 = 400;

/// A writer process on one node's mount (bash and coreutils: `dd
/// conv=fsync` fsyncs the file, `sync PATH` fsyncs a directory or file).
/// Its working directory is the mount, as a real user's would be, so the
/// mount is busy while it runs. It appends the number of every file whose
/// fsyncs all returned to `acks`, outside the mount.
struct Writer {
    child: Child,
    tag: String,
    acks: PathBuf,
    _dir: tempfile::TempDir,
}

const WRITER_SCRIPT: &str = r#"
cd "$1" || exit 3
tag=$2 acks=$3 i=0 end=$((SECONDS + $4))
while ((SECONDS < end)); do
    i=$((i + 1))
    if printf '%s %s %0900d\n' "$tag" "$i" "$i" | dd of="$tag-$i" conv=fsync status=none 2>/dev/null &&
        sync . 2>/dev/null &&
        printf '%s\n' "$i" >>"log-$tag" 2>/dev/null &&
        sync "log-$tag" 2>/dev/null; then
        printf '%s\n' "$i" >>"$acks"
    else
        sleep 0.05
    fi
done
"#;

impl Writer {
    fn start(mnt: &Path, tag: &str) -> Writer {
        let dir = crate::harness::util::tempdir(&format!("writer-{tag}"));
        let acks = dir.path().join("acks");
        std::fs::write(&acks, "").unwrap();
        let child = Command::new("bash")
            .args(["-c", WRITER_SCRIPT, "writer"])
            .arg(mnt)
            .arg(tag)
            .arg(&acks)
            .arg(WRITER_LIMIT_S.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: stopping it stops its dd and sync too.
            .process_group(0)
            .spawn()
            .expect("bash");
        Writer {
            child,
            tag: tag.into(),
            acks,
            _dir: dir,
        }
    }

    /// A writer on `node`'s mount that has acknowledged 20 files already.
    fn started(pair: &Pair, node: Node, tag: &str) -> Writer {
        let w = Writer::start(&pair.node(node).mnt(), tag);
        wait_progress(pair, node, &w, 20, "before the cut");
        w
    }

    /// The numbers of the files acknowledged so far.
    fn acked(&self) -> Vec<u64> {
        std::fs::read_to_string(&self.acks)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn content(&self, i: u64) -> Vec<u8> {
        format!("{} {i} {i:0900}\n", self.tag).into_bytes()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        if self.running() {
            // The writer's own group (it was spawned as its leader).
            crate::harness::pair::signal_group(self.child.id(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Every acknowledged file is on `mnt` with exactly its content. Returns
    /// how many were checked.
    fn assert_all_on(&self, mnt: &Path, node: &str) -> usize {
        let acked = self.acked();
        for &i in &acked {
            let name = format!("{}-{i}", self.tag);
            match std::fs::read(mnt.join(&name)) {
                Ok(b) if b == self.content(i) => {}
                Ok(b) => panic!(
                    "{name}: acknowledged by the writer but {node} holds {} other bytes",
                    b.len()
                ),
                Err(e) => panic!("{name}: acknowledged by the writer but missing on {node}: {e}"),
            }
        }
        acked.len()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `s` (a node's status) says it acknowledges writes now.
fn acknowledges(s: &Value) -> bool {
    if s["role"] != "Primary" {
        return false;
    }
    match s["writes"]["state"].as_str() {
        Some("alone") | Some("alone-unguarded") => true,
        Some("replicating") => {
            s["connection"] == "Connected"
                && s["peer"]["heard_ms_ago"]
                    .as_u64()
                    .is_some_and(|ms| ms <= FRESH_MS)
        }
        _ => false,
    }
}

/// One look at both nodes.
#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    states: [String; 2],
    acks: [bool; 2],
}

/// Looks at both nodes every 100 ms until dropped (or finished).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    fn start(pair: &Pair) -> Sampler {
        let configs = [Node::A, Node::B].map(|n| pair.node(n).config());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut out = Vec::new();
            // Bounded: at most the writers' limit.
            while !flag.load(Ordering::SeqCst) && t0.elapsed().as_secs() < WRITER_LIMIT_S {
                let started = Instant::now();
                let s = configs.clone().map(|c| status_of(&c));
                out.push(Sample {
                    at_ms: t0.elapsed().as_millis() as u64,
                    states: s.clone().map(|s| {
                        format!(
                            "{}/{}/{}",
                            s["role"].as_str().unwrap_or("-"),
                            s["writes"]["state"].as_str().unwrap_or("-"),
                            s["connection"].as_str().unwrap_or("-")
                        )
                    }),
                    acks: s.map(|s| acknowledges(&s)),
                });
                if let Some(rest) = SAMPLE_EVERY.checked_sub(started.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            out
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; panics if both nodes acknowledged at one sample.
    /// Returns the samples.
    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self.thread.take().unwrap().join().expect("sampler");
        assert!(samples.len() > 10, "too few samples: {samples:?}");
        if let Some(bad) = samples.iter().find(|s| s.acks[0] && s.acks[1]) {
            panic!(
                "both nodes acknowledged writes at {} ms: alpha {} beta {}\nall samples: {samples:#?}",
                bad.at_ms, bad.states[0], bad.states[1]
            );
        }
        samples
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn status_of(config: &Path) -> Value {
    let out = run_twinfs(&["status", "--json", "--config", config.to_str().unwrap()]);
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Waits until `writer` has acknowledged `more` files beyond what it had.
fn wait_progress(pair: &Pair, node: Node, writer: &Writer, more: usize, what: &str) {
    let base = writer.acked().len();
    let ok = poll_until(FAILOVER_LIMIT, || {
        (writer.acked().len() >= base + more).then_some(())
    });
    assert!(
        ok.is_some(),
        "{what}: the writer on {} acknowledged {} files, wanted {more} more\nstatus: {:#}\nlog:\n{}",
        pair.node(node).name,
        writer.acked().len() - base,
        pair.status(node),
        pair.node(node).log_text()
    );
}

/// The pair after healing: `primary` Primary and connected, its peer an
/// UpToDate secondary, no resync running, without any manual step.
fn wait_healed(pair: &Pair, primary: Node) {
    pair.wait_status(
        primary.peer(),
        "back as an UpToDate secondary",
        FAILOVER_LIMIT,
        |s| s["role"] == "Secondary" && s["connection"] == "Connected" && s["disk"] == "UpToDate",
    );
    pair.wait_status(
        primary,
        "primary, connected, in sync",
        FAILOVER_LIMIT,
        |s| {
            s["role"] == "Primary"
                && s["connection"] == "Connected"
                && s["resync"].is_null()
                && s["split_brain"].is_null()
        },
    );
}

fn cut_cable(pair: &mut Pair, tag: &str) {
    let mut wa = Writer::started(pair, Node::A, &format!("{tag}a"));
    let sampler = Sampler::start(pair);
    pair.lab.isolate(Node::A);
    // Alpha stays alive but reaches nobody: it suspends, demotes (stopping
    // the writer that keeps its mount busy); beta promotes.
    pair.wait_status(Node::A, "demoted itself", FAILOVER_LIMIT, |s| {
        s["role"] == "Secondary"
    });
    let stopped = poll_until(Duration::from_secs(30), || (!wa.running()).then_some(()));
    assert!(
        stopped.is_some(),
        "the writer on the isolated primary still runs after its demotion"
    );
    wait_serving(pair, Node::B);
    let mut wb = Writer::start(&pair.node(Node::B).mnt(), &format!("{tag}b"));
    wait_progress(pair, Node::B, &wb, 20, "on the new primary");
    let log_a = pair.node(Node::A).log_text();
    assert!(
        log_a.contains("writes SUSPENDED"),
        "alpha's log should say its writes were suspended:\n{log_a}"
    );
    assert!(
        !log_a.contains("acknowledging writes ALONE"),
        "the isolated alpha must never acknowledge alone:\n{log_a}"
    );
    for l in log_a.lines().filter(|l| {
        [
            "SUSPENDED",
            "busy",
            "demot",
            "never acknowledged",
            "isolated",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        eprintln!("alpha: {l}");
    }
    // The cables come back: alpha learns beta is primary in a newer
    // generation and is resynced, with no split brain and no manual step.
    pair.lab.revive_links(Node::A);
    wait_healed(pair, Node::B);
    wait_progress(pair, Node::B, &wb, 10, "after healing");
    wb.stop();
    wa.stop();
    let samples = sampler.finish();
    let b_mnt = pair.node(Node::B).mnt();
    let na = wa.assert_all_on(&b_mnt, "beta");
    let nb = wb.assert_all_on(&b_mnt, "beta");
    eprintln!(
        "{tag}: {na} files acknowledged on alpha, {nb} on beta, all on beta; {} samples, never two acknowledging",
        samples.len()
    );
    let sa = pair.status(Node::A);
    assert!(
        decisions(&sa).contains("isolated"),
        "the reason should say isolated:\n{}",
        decisions(&sa)
    );
}

#[test]
fn cut_cable_isolated_primary_suspends_demotes_and_rejoins_without_split_brain() {
    if !crate::failover::require_all("cut_cable_isolated_primary_suspends_demotes_and_rejoins") {
        return;
    }
    let (mut pair, _confs) = failover_pair("iso-cut", PublicOpts::default(), "");
    start_serving(&mut pair);
    cut_cable(&mut pair, "cut");
}

#[test]
fn cut_cable_isolated_primary_with_a_witness_suspends_demotes_and_rejoins() {
    if !crate::failover::require_all("cut_cable_isolated_primary_with_a_witness") {
        return;
    }
    let mut w = WitnessPair::start("iso-wit");
    cut_cable(&mut w.pair, "wit");
}

/// A serving pair (alpha primary) with a witness, and the witness running.
struct WitnessPair {
    // Dropped in this order: the pair (its nodes), then the witness.
    pair: Pair,
    _confs: Vec<crate::harness::web::ApacheConf>,
    _witness: crate::harness::lab::LabChild,
    _files: WitnessFiles,
}

impl WitnessPair {
    fn start(tag: &str) -> WitnessPair {
        let files = WitnessFiles::new();
        let (mut pair, confs) =
            failover_pair_with(tag, PublicOpts { witness: true }, |_, conf, addr| {
                format!(
                    "{}{}",
                    witness_lines(&files, addr),
                    conf.services_toml("apache2")
                )
            });
        let witness = start_witness(&pair, &files);
        start_serving(&mut pair);
        WitnessPair {
            pair,
            _confs: confs,
            _witness: witness,
            _files: files,
        }
    }
}

/// Samples where `node` was Primary.
fn primary_samples(samples: &[Sample], node: Node) -> usize {
    let i = crate::failover::idx(node);
    samples
        .iter()
        .filter(|s| s.states[i].starts_with("Primary"))
        .count()
}

#[test]
fn replication_link_cut_the_primary_acknowledges_alone_and_nobody_promotes() {
    if !crate::failover::require_all("replication_link_cut_the_primary_acknowledges_alone") {
        return;
    }
    let (mut pair, _confs) = failover_pair("iso-link", PublicOpts::default(), "");
    start_serving(&mut pair);
    let mut wa = Writer::started(&pair, Node::A, "linka");
    let sampler = Sampler::start(&pair);
    pair.lab.partition();
    // The ping target answers: alpha acknowledges alone after deadtime.
    let s = pair.wait_status(Node::A, "acknowledging alone", FAILOVER_LIMIT, |s| {
        s["writes"]["state"] == "alone"
    });
    assert!(
        s["writes"]["evidence"]
            .as_str()
            .is_some_and(|e| e.contains("ping target")),
        "the evidence should be the ping target's answer: {:#}",
        s["writes"]
    );
    wait_progress(&pair, Node::A, &wa, 20, "alone");
    pair.lab.heal();
    wait_healed(&pair, Node::A);
    wa.stop();
    let samples = sampler.finish();
    assert_eq!(
        primary_samples(&samples, Node::B),
        0,
        "beta promoted although the beacon showed alpha alive"
    );
    let n = wa.assert_all_on(&pair.node(Node::A).mnt(), "alpha");
    eprintln!("link cut: {n} files acknowledged and present, beta never primary");
}

#[test]
fn public_network_cut_nobody_promotes_and_writes_go_on() {
    if !crate::failover::require_all("public_network_cut_nobody_promotes") {
        return;
    }
    let (mut pair, _confs) = failover_pair("iso-pub", PublicOpts::default(), "");
    start_serving(&mut pair);
    let mut wa = Writer::started(&pair, Node::A, "puba");
    let sampler = Sampler::start(&pair);
    pair.lab.cut_public(Node::A);
    pair.lab.cut_public(Node::B);
    // Well past deadtime, with the replication link up: writes replicate.
    std::thread::sleep(Duration::from_secs(5));
    wait_progress(&pair, Node::A, &wa, 20, "public network cut");
    let sa = pair.status(Node::A);
    assert_eq!(sa["role"], "Primary", "{sa:#}");
    assert_eq!(sa["writes"]["state"], "replicating", "{sa:#}");
    pair.lab.restore_public(Node::A);
    pair.lab.restore_public(Node::B);
    wa.stop();
    let samples = sampler.finish();
    assert_eq!(primary_samples(&samples, Node::B), 0, "beta promoted");
    wait_healed(&pair, Node::A);
    wa.assert_all_on(&pair.node(Node::A).mnt(), "alpha");
}

#[test]
fn isolated_secondary_does_not_promote_and_the_primary_goes_on_alone() {
    if !crate::failover::require_all("isolated_secondary_does_not_promote") {
        return;
    }
    let (mut pair, _confs) = failover_pair("iso-sec", PublicOpts::default(), "");
    start_serving(&mut pair);
    let mut wa = Writer::started(&pair, Node::A, "seca");
    let sampler = Sampler::start(&pair);
    pair.lab.isolate(Node::B);
    pair.wait_status(Node::A, "acknowledging alone", FAILOVER_LIMIT, |s| {
        s["writes"]["state"] == "alone"
    });
    wait_progress(&pair, Node::A, &wa, 20, "alone");
    // Beta reaches neither alpha nor the ping target: it must stay put.
    std::thread::sleep(Duration::from_secs(4));
    let sb = pair.status(Node::B);
    assert_eq!(sb["role"], "Secondary", "{sb:#}");
    pair.lab.revive_links(Node::B);
    wait_healed(&pair, Node::A);
    wa.stop();
    let samples = sampler.finish();
    assert_eq!(primary_samples(&samples, Node::B), 0, "beta promoted");
    wa.assert_all_on(&pair.node(Node::A).mnt(), "alpha");
}

/// Drops what `from` sends to the witness, inside the witness's namespace
/// (the table goes with the namespace).
fn cut_witness_from(pair: &Pair, from: Node) {
    let script = format!(
        "add table inet twinfs_test_cut\n\
         add chain inet twinfs_test_cut input {{ type filter hook input priority 0; }}\n\
         add rule inet twinfs_test_cut input ip saddr {} drop\n",
        pair.lab.public_addr(from)
    );
    let mut cmd = pair.lab.command_in(Place::Witness, "nft");
    cmd.args(["-f", "-"]).stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("nft");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nft in the witness namespace"
    );
}

#[test]
fn witness_cut_from_the_primary_keeps_writes_while_connected_then_suspends() {
    if !crate::failover::require_all("witness_cut_from_the_primary") {
        return;
    }
    let w = WitnessPair::start("iso-wcut");
    let pair = &w.pair;
    let mut wa = Writer::started(pair, Node::A, "wcuta");
    let sampler = Sampler::start(pair);
    cut_witness_from(pair, Node::A);
    // Connected to the peer: the right holds, writes go on.
    std::thread::sleep(Duration::from_secs(5));
    wait_progress(
        pair,
        Node::A,
        &wa,
        20,
        "witness unreachable, peer connected",
    );
    assert_eq!(pair.status(Node::A)["role"], "Primary");
    // Then the peer too (replication link; the beacon still shows alpha):
    // no lease can be renewed, so the writes are suspended.
    pair.lab.partition();
    pair.wait_status(Node::A, "suspended", FAILOVER_LIMIT, |s| {
        s["writes"]["state"] == "suspended"
    });
    let held = wa.acked().len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        wa.acked().len(),
        held,
        "a primary without the peer and without a lease acknowledged writes"
    );
    assert_eq!(pair.status(Node::B)["role"], "Secondary");
    // The link returns: the held writes reach the peer and complete.
    pair.lab.heal();
    wait_progress(pair, Node::A, &wa, 10, "after the link returned");
    wait_healed(pair, Node::A);
    wa.stop();
    let samples = sampler.finish();
    assert_eq!(primary_samples(&samples, Node::B), 0, "beta promoted");
    wa.assert_all_on(&pair.node(Node::A).mnt(), "alpha");
}

#[test]
fn a_demotion_that_cannot_unmount_refuses_every_write_and_escalates() {
    if !crate::failover::require_all("a_demotion_that_cannot_unmount_refuses_every_write") {
        return;
    }
    let marker_dir = crate::harness::util::tempdir("unmount-escalation");
    let marker = marker_dir.path().join("escalated");
    let (mut pair, _confs) =
        failover_pair_with("iso-busy", PublicOpts::default(), |node, conf, _| {
            let mut t = conf.services_toml("apache2");
            if node == Node::A {
                // Its escalation only leaves a mark (a real one reboots).
                t = format!(
                    "escalation = \"reboot\"\n\
                 escalation_command = [\"/bin/sh\", \"-c\", \"echo escalated > {}\"]\n{t}",
                    marker.display()
                );
            }
            t
        });
    // Alpha does not stop the mount's users: its demotion cannot unmount.
    let config = pair.node(Node::A).config();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[fs]\n", "[fs]\nforce_unmount = false\n", 1),
    )
    .unwrap();
    start_serving(&mut pair);
    let mut wa = Writer::started(&pair, Node::A, "busya");
    pair.lab.isolate(Node::A);
    crate::failover::wait_escalated(&pair, &marker);
    // Still primary and still mounted, but refusing every write.
    let sa = pair.status(Node::A);
    assert_eq!(sa["role"], "Primary", "{sa:#}");
    assert_eq!(sa["writes"]["state"], "closed", "{sa:#}");
    assert!(
        wa.running(),
        "force_unmount = false must leave the writer alone"
    );
    let held = wa.acked().len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        wa.acked().len(),
        held,
        "a node whose demotion failed acknowledged writes"
    );
    let log = pair.node(Node::A).log_text();
    assert!(log.contains("refuses every write"), "{log}");
    wait_serving(&pair, Node::B);
    wa.stop();
    wa.assert_all_on(&pair.node(Node::B).mnt(), "beta");
}
