//! Acceptance (issue 13, item 3): the beacon and the witness under a flood.
//!
//! A pair with a witness serves Apache on the VIP. From the client's
//! namespace (10.202.N.100, inside the lab), one thread floods the
//! secondary's beacon port and the witness with forged frames naming the
//! primary (fresh clock, new boot ids and counters, signed with another
//! key) and with garbage, from many source ports. While it runs:
//!
//! - for several deadtimes nothing moves: alpha stays Primary, beta
//!   Secondary (the forged heartbeats neither hide alpha nor pass as it);
//! - then alpha dies (`Lab::kill_node`): beta is promoted, with the lease
//!   the witness granted it, within the usual failover limit;
//! - the refusal lines in beta's and the witness's logs stay within the log
//!   limit: at most `LOG_LINES_PER_SEC` a second per kind of refusal.
//!
//! The flood is bounded in count and time, and goes only to lab addresses.

use crate::failover::{
    failover_pair_with, require_all, start_serving, start_witness, wait_serving, witness_lines,
    WitnessFiles, BEACON_PORT, FAILOVER_LIMIT, WITNESS_PORT,
};
use crate::harness::lab::{enter_netns, Node, Place, PublicOpts};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use twinfs_supervisor::witness::{
    Kind, Signer, SigningKey, LOG_LINES_PER_SEC, MAGIC, REFUSAL_CLASSES,
};

/// How long the flood runs before the primary is killed: four deadtimes
/// (`pair::DEADTIME` is 2 s).
const QUIET_PHASE: Duration = Duration::from_secs(8);
/// The flood stops after this long at the latest.
const FLOOD_TIME: Duration = Duration::from_secs(120);
/// And after this many datagrams.
const FLOOD_MAX: u64 = 5_000_000;
/// Source ports the flood comes from.
const PORTS: usize = 32;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Frames signed with a key nobody pins, as `sender`, each with its own
/// boot id (counter 1): well formed, fresh, failing only the signature.
struct Forged {
    frames: Vec<Vec<u8>>,
}

impl Forged {
    /// `n` frames of each (sender, kind) from `key_file` (PKCS#8 PEM).
    fn new(key_file: &std::path::Path, n: u64, rng: &mut Rng) -> Forged {
        let heartbeat: &[u8] = &[2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let renew: &[u8] = &[0, 0, 0, 0, 0, 0, 0, 7, 3];
        let mut frames = Vec::new();
        for (sender, kind, body) in [
            ("alpha", Kind::Heartbeat, heartbeat),
            ("alpha", Kind::WitnessRequest, renew),
            ("beta", Kind::WitnessRequest, renew),
            ("mallory", Kind::Heartbeat, heartbeat),
        ] {
            for _ in 0..n {
                let key = SigningKey::from_pem_file(key_file).unwrap();
                let signer = Signer::with_boot_id(sender, key, rng.next()).unwrap();
                frames.push(signer.seal(kind, body, now_ms()).unwrap());
            }
        }
        Forged { frames }
    }

    /// Frame `i` of (sender, kind) pair `which` (0..4, in the order above).
    fn get(&self, which: usize, i: u64) -> &[u8] {
        let n = self.frames.len() / 4;
        &self.frames[which * n + (i as usize % n)]
    }
}

/// What the flood did.
#[derive(Debug)]
struct Report {
    sent: u64,
    elapsed: Duration,
}

/// The flooding thread, stopped by `stop`, by drop (also when the test
/// panics, before the lab's namespaces go: the thread holds the client's)
/// or by its own bounds.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<Report>>>,
}

impl Flood {
    /// Floods `beacon` (a node's beacon port) and `witness` from the
    /// client's namespace, `PORTS` source ports.
    fn start(
        pair: &crate::harness::pair::Pair,
        beacon: SocketAddr,
        witness: SocketAddr,
        forged: Forged,
    ) -> Flood {
        let ns = pair.lab.netns_path(Place::Client).to_owned();
        let client = pair.lab.client_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // This thread only: its sockets are the client's.
            enter_netns(&ns)?;
            let sockets = (0..PORTS)
                .map(|_| UdpSocket::bind((client, 0)))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok(run(&sockets, beacon, witness, &forged, &flag))
        });
        Flood {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the flood thread panicked")
            .expect("the flood could not start in the client's namespace")
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // It looks at the flag every 64 datagrams.
            let _ = t.join();
        }
    }
}

fn run(
    sockets: &[UdpSocket],
    beacon: SocketAddr,
    witness: SocketAddr,
    forged: &Forged,
    stop: &AtomicBool,
) -> Report {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let mut sent = 0;
    for i in 0..FLOOD_MAX {
        if i % 64 == 0 && (stop.load(Ordering::Relaxed) || started.elapsed() >= FLOOD_TIME) {
            break;
        }
        let to = if i % 2 == 0 { beacon } else { witness };
        // Forged as alpha (and beta, at the witness) with a new boot id each
        // time: were one accepted, it would retire the real boot id.
        let bytes = match (i / 2) % 5 {
            0 | 1 if to == beacon => forged.get(0, i).to_vec(),
            0 | 1 => forged.get(1, i).to_vec(),
            2 if to == witness => forged.get(2, i).to_vec(),
            2 => (0..rng.next() % 1200).map(|_| rng.next() as u8).collect(),
            3 => {
                let mut v = MAGIC.to_vec();
                v.extend((0..rng.next() % 200).map(|_| rng.next() as u8));
                v
            }
            _ => forged.get(3, i).to_vec(),
        };
        let socket = &sockets[(i as usize / 2) % sockets.len()];
        if socket.send_to(&bytes, to).is_ok() {
            sent += 1;
        }
        // A pause now and then, so that the flood does not starve the nodes
        // on a small machine: at most ~50,000 datagrams a second.
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Report {
        sent,
        elapsed: started.elapsed(),
    }
}

fn count_lines(text: &str, needle: &str) -> u64 {
    text.lines().filter(|l| l.contains(needle)).count() as u64
}

#[test]
fn flood_causes_no_failover_and_hides_no_death() {
    if !require_all("flood_causes_no_failover_and_hides_no_death") {
        return;
    }
    let w = WitnessFiles::new();
    let (mut pair, _confs) =
        failover_pair_with("flood", PublicOpts { witness: true }, |_, conf, addr| {
            format!(
                "{}{}",
                witness_lines(&w, addr),
                conf.services_toml("apache2")
            )
        });
    let _witness = start_witness(&pair, &w);
    start_serving(&mut pair);
    pair.wait_status(Node::A, "lease held", FAILOVER_LIMIT, |s| {
        s["failover"]["witness"]
            .as_str()
            .is_some_and(|t| t.contains("held by alpha"))
    });

    let beacon = SocketAddr::from((pair.lab.public_addr(Node::B), BEACON_PORT));
    let witness = SocketAddr::from((pair.lab.witness_addr(), WITNESS_PORT));
    // A key nobody pins: made as the nodes' keys are.
    let mallory = crate::harness::util::tempdir("flood-mallory");
    let (cert, key) = (mallory.path().join("m.crt"), mallory.path().join("m.key"));
    let made = crate::harness::util::run_twinfs(&[
        "keygen",
        "--name",
        "mallory",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "keygen: {made:?}");
    let forged = Forged::new(&key, 100, &mut Rng(0x5eed));
    let flood = Flood::start(&pair, beacon, witness, forged);
    let flood_start = Instant::now();

    // Several deadtimes of flood: nobody moves. Bounded: QUIET_PHASE in
    // steps of at least 500 ms (each step runs `twinfs status` twice).
    let mut checks = 0;
    while flood_start.elapsed() < QUIET_PHASE && checks < 64 {
        checks += 1;
        let (sa, sb) = (pair.status(Node::A), pair.status(Node::B));
        assert_eq!(
            sa["role"], "Primary",
            "alpha lost its role in the flood: {sa:#}"
        );
        assert_eq!(sb["role"], "Secondary", "beta moved in the flood: {sb:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let beta_beacon = pair.status(Node::B)["failover"]["beacon"].to_string();
    assert!(beta_beacon.contains("peer heard"), "{beta_beacon}");

    // The primary really dies, the flood goes on: beta is promoted.
    let killed_at = Instant::now();
    pair.kill(Node::A);
    wait_serving(&pair, Node::B);
    let promoted_after = killed_at.elapsed();
    let sb = pair.wait_status(Node::B, "lease held by beta", FAILOVER_LIMIT, |s| {
        s["failover"]["witness"]
            .as_str()
            .is_some_and(|t| t.contains("held by beta"))
    });
    let report = flood.stop();
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "flood: {} datagrams in {:.1} s ({:.0}/s) from {PORTS} ports; beta served {:.1} s after \
         the kill; beta's witness: {}",
        report.sent,
        secs,
        report.sent as f64 / secs,
        promoted_after.as_secs_f64(),
        sb["failover"]["witness"]
    );
    assert!(report.sent > 10_000, "the flood hardly ran: {report:?}");

    // Logs stay bounded: per class of refusal, LOG_LINES_PER_SEC a second
    // (and as many at once).
    let bound =
        u64::from(REFUSAL_CLASSES) * (f64::from(LOG_LINES_PER_SEC) * (secs + 1.0)).ceil() as u64;
    let beta_lines = count_lines(&pair.node(Node::B).log_text(), "beacon datagram refused");
    let witness_log = std::fs::read_to_string(w.log()).unwrap_or_default();
    let witness_lines = count_lines(&witness_log, "witness request refused");
    eprintln!(
        "refusal log lines: beta {beta_lines}, witness {witness_lines} (bound {bound} each, \
         for {} datagrams to each)",
        report.sent / 2
    );
    assert!(beta_lines > 0, "beta logged no refusal at all");
    assert!(witness_lines > 0, "the witness logged no refusal at all");
    assert!(
        beta_lines <= bound,
        "beta logged {beta_lines} refusals in {secs:.1} s"
    );
    assert!(
        witness_lines <= bound,
        "the witness logged {witness_lines} refusals in {secs:.1} s"
    );
}
