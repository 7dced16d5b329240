//! The beacon and the witness under a flood (issue 13, acceptance item 3):
//! forged frames naming the real peer, with its boot id, a fresh clock and
//! counters far ahead, but no valid signature; and garbage from many source
//! addresses and ports. The real peer keeps beating, a real client keeps
//! renewing, and both must still get through.
//!
//! Only loopback traffic (127.0.0.0/8, where any address can be bound
//! without setup); every flood and every wait is bounded in count and time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use twinfs_supervisor::witness::{
    Announce, Beacon, BeaconConfig, DiskState, IntakeStats, Kind, LeaseStatus, Role, Signer,
    SigningKey, WitnessClient, WitnessClientConfig, WitnessConfig, WitnessServer,
    LOG_LINES_PER_SEC, MAGIC, RATE_PER_SOURCE, REFUSAL_CLASSES, SIGNATURE_LEN, VERSION,
};

/// How long each flood lasts at most.
const FLOOD_TIME: Duration = Duration::from_secs(3);
/// How many datagrams each flood sends at most.
const FLOOD_MAX: u64 = 300_000;
/// Addresses the forged frames come from (127.0.0.2 ..), and the garbage.
const FORGED_ADDRS: u8 = 8;
const GARBAGE_ADDRS: u8 = 32;

fn signer(name: &str) -> Arc<Signer> {
    Arc::new(Signer::new(name, SigningKey::generate().unwrap()).unwrap())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

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

/// A frame laid out as the wire format documents it, with a signature of
/// random bytes: well formed, naming `sender`, failing only the signature.
fn forged(
    sender: &str,
    boot_id: u64,
    counter: u64,
    kind: Kind,
    body: &[u8],
    rng: &mut Rng,
) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.push(VERSION);
    v.push(kind as u8);
    v.push(sender.len() as u8);
    v.extend_from_slice(sender.as_bytes());
    v.extend_from_slice(&boot_id.to_be_bytes());
    v.extend_from_slice(&counter.to_be_bytes());
    v.extend_from_slice(&now_ms().to_be_bytes());
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v.extend((0..SIGNATURE_LEN).map(|_| rng.next() as u8));
    v
}

/// What a flood did.
#[derive(Debug)]
struct FloodReport {
    sent: u64,
    elapsed: Duration,
}

impl FloodReport {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// One thread sending, until `FLOOD_MAX` datagrams or `FLOOD_TIME`: forged
/// frames naming `victim` (its real boot id and counters far ahead, and
/// new boot ids) from `FORGED_ADDRS` addresses, and garbage (random bytes,
/// the magic then random bytes, an unknown sender) from `GARBAGE_ADDRS`
/// more, each from its own port.
fn flood(
    target: SocketAddr,
    victim: &Signer,
    kind: Kind,
    body: &'static [u8],
) -> JoinHandle<FloodReport> {
    let (name, boot_id) = (victim.name().to_owned(), victim.boot_id());
    let bind = |a: u8| UdpSocket::bind((Ipv4Addr::new(127, 0, 0, a), 0)).unwrap();
    let forgers: Vec<UdpSocket> = (2..2 + FORGED_ADDRS).map(bind).collect();
    let garblers: Vec<UdpSocket> = (2 + FORGED_ADDRS..2 + FORGED_ADDRS + GARBAGE_ADDRS)
        .map(bind)
        .collect();
    std::thread::spawn(move || {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let started = Instant::now();
        let mut sent = 0;
        for i in 0..FLOOD_MAX {
            if started.elapsed() >= FLOOD_TIME {
                break;
            }
            let bytes = match i % 5 {
                0 => forged(&name, boot_id, (1 << 40) + i, kind, body, &mut rng),
                1 => forged(&name, rng.next(), 1, kind, body, &mut rng),
                2 => (0..rng.next() % 1200).map(|_| rng.next() as u8).collect(),
                3 => {
                    let mut v = MAGIC.to_vec();
                    v.extend((0..rng.next() % 200).map(|_| rng.next() as u8));
                    v
                }
                _ => forged("mallory", 1, i, kind, body, &mut rng),
            };
            let socket = if i % 5 < 2 {
                &forgers[(i as usize / 5) % forgers.len()]
            } else {
                &garblers[(i as usize / 5) % garblers.len()]
            };
            if socket.send_to(&bytes, target).is_ok() {
                sent += 1;
            }
            // A pause now and then, so the flood does not starve everything
            // else on a small machine: at most ~50,000 datagrams a second.
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        FloodReport {
            sent,
            elapsed: started.elapsed(),
        }
    })
}

/// The most signature checks a flood from `FORGED_ADDRS` addresses can
/// cause in `secs`, plus `real` frames of the real peer: each address's
/// burst (at most the rate) and its rate.
fn max_signature_checks(secs: f64, real: u64) -> u64 {
    let per_source = f64::from(RATE_PER_SOURCE) * (1.0 + secs);
    (f64::from(FORGED_ADDRS) * per_source) as u64 + real
}

/// At most `LOG_LINES_PER_SEC` lines a second (and as many at once) per
/// class of refusal.
fn max_log_lines(secs: f64) -> u64 {
    u64::from(REFUSAL_CLASSES) * (f64::from(LOG_LINES_PER_SEC) * (secs + 1.0)).ceil() as u64
}

fn check_bounds(what: &str, st: &IntakeStats, report: &FloodReport, secs: f64, real: u64) {
    eprintln!(
        "{what}: flood of {} datagrams in {:.2?} ({:.0}/s); {st:?}",
        report.sent,
        report.elapsed,
        report.rate()
    );
    assert!(report.sent > 1_000, "{what}: the flood hardly ran");
    assert!(st.refused_early > 0 && st.over_rate > 0, "{what}: {st:?}");
    assert!(
        st.refused_late > 0,
        "{what}: no forged frame reached the signature check"
    );
    assert!(
        st.signature_checks <= max_signature_checks(secs, real),
        "{what}: {} signature checks, more than the rate limits allow",
        st.signature_checks
    );
    assert!(
        st.log_lines <= max_log_lines(secs),
        "{what}: {} refusal log lines in {secs:.1} s",
        st.log_lines
    );
    assert!(st.log_suppressed > 0, "{what}: {st:?}");
}

const SECONDARY: Announce = Announce {
    role: Role::Secondary,
    disk: DiskState::UpToDate,
    generation: 1,
    link_up: true,
    handover: false,
    takeover: false,
};

#[test]
fn a_beacon_hears_its_peer_through_a_flood() {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (a_sock, b_sock) = (
        UdpSocket::bind((localhost, 0)).unwrap(),
        UdpSocket::bind((localhost, 0)).unwrap(),
    );
    let (a_addr, b_addr) = (a_sock.local_addr().unwrap(), b_sock.local_addr().unwrap());
    let (alpha, beta) = (signer("alpha"), signer("beta"));
    let every = Duration::from_millis(50);
    // A deadtime of 20 intervals, as a supervisor would configure it.
    let deadtime = every * 20;
    let a = Beacon::start(
        a_sock,
        alpha.clone(),
        BeaconConfig::new("beta", beta.public_key(), b_addr, every),
        SECONDARY,
    )
    .unwrap();
    let b = Beacon::start(
        b_sock,
        beta.clone(),
        BeaconConfig::new("alpha", alpha.public_key(), a_addr, every),
        SECONDARY,
    )
    .unwrap();
    let mut heard = None;
    for _ in 0..300 {
        heard = b.last_heard();
        if heard.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut last = heard.expect("beta never heard alpha");

    let body: &'static [u8] = &[2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    let flooder = flood(b_addr, &alpha, Kind::Heartbeat, body);
    // Watch what beta hears while the flood runs (bounded: FLOOD_TIME plus
    // a margin, in 10 ms steps).
    let mut longest_gap = Duration::ZERO;
    for _ in 0..(FLOOD_TIME.as_millis() / 10 + 200) {
        if flooder.is_finished() {
            break;
        }
        if let Some(at) = b.last_heard() {
            longest_gap = longest_gap.max(at.saturating_duration_since(last));
            last = last.max(at);
        }
        longest_gap = longest_gap.max(Instant::now().saturating_duration_since(last));
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = flooder.join().unwrap();
    let flood_end = Instant::now();
    assert!(
        longest_gap <= deadtime,
        "beta did not hear alpha for {longest_gap:?} during the flood (deadtime {deadtime:?})"
    );
    // Heard after the flood: the forged counters (far ahead, with alpha's
    // boot id) did not make alpha's real ones look like replays, and the
    // forged boot ids did not retire alpha's.
    let mut heard_after = false;
    for _ in 0..300 {
        if b.last_heard().is_some_and(|at| at > flood_end) {
            heard_after = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        heard_after,
        "beta stopped hearing alpha after the flood: {:?}",
        b.status()
    );
    let st = b.status();
    let real = a.status().sent;
    check_bounds(
        "beacon",
        &st.intake,
        &report,
        report.elapsed.as_secs_f64(),
        real,
    );
    assert!(st.rejected >= st.intake.refused_early + st.intake.refused_late);
}

#[test]
fn a_witness_grants_through_a_flood() {
    let (alpha, beta) = (signer("alpha"), signer("beta"));
    let witness = Signer::new("witness", SigningKey::generate().unwrap()).unwrap();
    let witness_key = witness.public_key();
    let lease = Duration::from_secs(2);
    let mut config = WitnessConfig::new(
        vec![
            ("alpha".to_owned(), alpha.public_key()),
            ("beta".to_owned(), beta.public_key()),
        ],
        lease,
    );
    config.startup_grace = Duration::ZERO;
    let server = WitnessServer::bind("127.0.0.1:0".parse().unwrap(), witness, config).unwrap();
    let addr = server.local_addr();
    let counters = server.counters();
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = shutdown.clone();
    let thread = std::thread::spawn(move || server.run(&flag));
    let client = |node: &Arc<Signer>| {
        let mut c = WitnessClientConfig::new(addr, "witness", witness_key);
        c.timeout = Duration::from_secs(1);
        WitnessClient::new(node.clone(), c).unwrap()
    };
    let (mut a, mut b) = (client(&alpha), client(&beta));
    let granted = |s: &LeaseStatus| matches!(s, LeaseStatus::Granted { .. });
    assert!(granted(&a.renew_lease().unwrap().lease));

    // A renewal as the wire format documents it: request id, op 3 (renew).
    let body: &'static [u8] = &[0, 0, 0, 0, 0, 0, 0, 7, 3];
    let flooders = [
        flood(addr, &alpha, Kind::WitnessRequest, body),
        flood(addr, &beta, Kind::WitnessRequest, body),
    ];
    // alpha renews every lease/10 while the flood runs; beta asks too and is
    // told alpha holds the lease. Bounded: FLOOD_TIME plus a margin.
    let mut renewals = 0;
    let mut failures = Vec::new();
    for _ in 0..(FLOOD_TIME.as_millis() / 200 + 20) {
        if flooders.iter().all(|f| f.is_finished()) {
            break;
        }
        match a.renew_lease() {
            Ok(ans) if granted(&ans.lease) => renewals += 1,
            other => failures.push(format!("{other:?}")),
        }
        match b.renew_lease() {
            Ok(ans) if ans.lease == LeaseStatus::Refused => {}
            other => failures.push(format!("beta: {other:?}")),
        }
        std::thread::sleep(lease / 10);
    }
    let reports: Vec<FloodReport> = flooders.into_iter().map(|f| f.join().unwrap()).collect();
    assert!(renewals >= 5, "only {renewals} renewals during the flood");
    assert!(failures.is_empty(), "during the flood: {failures:?}");
    // After the flood alpha still renews: forged requests with its boot id
    // and counters far ahead did not move its replay counter.
    assert!(granted(&a.renew_lease().unwrap().lease));

    shutdown.store(true, Ordering::Relaxed);
    thread.join().unwrap().unwrap();
    let st = counters.snapshot();
    let report = FloodReport {
        sent: reports.iter().map(|r| r.sent).sum(),
        elapsed: reports.iter().map(|r| r.elapsed).max().unwrap(),
    };
    // Two flooders, each from the same FORGED_ADDRS addresses.
    check_bounds(
        "witness",
        &st,
        &report,
        report.elapsed.as_secs_f64(),
        2 * renewals + 10,
    );
    assert!(st.accepted >= 2 * renewals);
}
