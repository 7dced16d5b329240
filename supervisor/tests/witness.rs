//! The beacon and the witness over real UDP sockets on 127.0.0.1.
//!
//! Only loopback traffic; every wait is a loop bounded in count and time.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use twinfs_supervisor::witness::{
    Announce, Beacon, BeaconConfig, DiskState, Kind, LeaseStatus, PublicKey, Role, Signer,
    SigningKey, Verifier, WitnessClient, WitnessClientConfig, WitnessConfig, WitnessError,
    WitnessServer,
};

fn signer(name: &str) -> Arc<Signer> {
    Arc::new(Signer::new(name, SigningKey::generate().unwrap()).unwrap())
}

fn loopback() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Polls `cond` every 10 ms, at most `limit` times; true once it holds.
fn wait_until(limit: u32, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
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
fn beacons_hear_each_other_and_stop_hearing_a_dropped_peer() {
    let (a_sock, b_sock) = (loopback(), loopback());
    let (a_addr, b_addr) = (a_sock.local_addr().unwrap(), b_sock.local_addr().unwrap());
    assert_ne!(a_addr.port(), b_addr.port());
    let (alpha, beta) = (signer("alpha"), signer("beta"));
    let every = Duration::from_millis(20);
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
    assert!(wait_until(300, || a.last_heard().is_some() && b.last_heard().is_some()));
    let heard = b.peer().unwrap();
    assert_eq!(heard.from, a_addr);
    assert_eq!(heard.announce, SECONDARY);

    let primary = Announce {
        role: Role::Primary,
        disk: DiskState::UpToDate,
        generation: 7,
        link_up: false,
        handover: false,
        takeover: false,
    };
    a.set_announce(primary);
    assert!(wait_until(300, || b.peer().map(|p| p.announce) == Some(primary)));
    assert_eq!(b.status().rejected, 0);

    drop(a); // joins alpha's thread: it sends nothing more
             // Let what was in flight arrive, then B must hear nothing new while it
             // keeps sending its own heartbeats.
    std::thread::sleep(Duration::from_millis(100));
    let last = b.last_heard();
    let sent = b.status().sent;
    assert!(wait_until(300, || b.status().sent >= sent + 5));
    assert_eq!(b.last_heard(), last, "heard a dropped peer");
}

#[test]
fn beacon_refuses_an_impostor_and_says_why() {
    let (b_sock, c_sock) = (loopback(), loopback());
    let (b_addr, c_addr) = (b_sock.local_addr().unwrap(), c_sock.local_addr().unwrap());
    let (alpha, beta) = (signer("alpha"), signer("beta"));
    let impostor = signer("alpha"); // same name, another key
    let every = Duration::from_millis(20);
    let b = Beacon::start(
        b_sock,
        beta.clone(),
        BeaconConfig::new("alpha", alpha.public_key(), c_addr, every),
        SECONDARY,
    )
    .unwrap();
    let _c = Beacon::start(
        c_sock,
        impostor,
        BeaconConfig::new("beta", beta.public_key(), b_addr, every),
        SECONDARY,
    )
    .unwrap();
    assert!(wait_until(300, || b.status().rejected >= 3));
    let status = b.status();
    let why = status.last_rejection.unwrap();
    assert!(
        why.starts_with(&format!("from {c_addr}: signature")),
        "{why}"
    );
    assert!(why.contains("\"alpha\" does not verify"), "{why}");
    assert_eq!(b.last_heard(), None);
}

/// A witness thread on 127.0.0.1, stopped and joined on drop.
struct TestWitness {
    addr: SocketAddr,
    name: String,
    key: PublicKey,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), WitnessError>>>,
}

impl TestWitness {
    fn start(nodes: &[&Arc<Signer>], lease: Duration, grace: Duration) -> TestWitness {
        let key = rcgen::KeyPair::generate().unwrap().serialize_der();
        Self::start_at("127.0.0.1:0".parse().unwrap(), &key, nodes, lease, grace)
    }

    /// `key`: the witness's PKCS#8 key, so that a restart can keep it.
    fn start_at(
        listen: SocketAddr,
        key: &[u8],
        nodes: &[&Arc<Signer>],
        lease: Duration,
        grace: Duration,
    ) -> TestWitness {
        let key = SigningKey::from_pkcs8_der(key).unwrap();
        let signer = Signer::new("witness", key).unwrap();
        let key = signer.public_key();
        let mut config = WitnessConfig::new(
            nodes
                .iter()
                .map(|s| (s.name().to_owned(), s.public_key()))
                .collect(),
            lease,
        );
        config.startup_grace = grace;
        let server = WitnessServer::bind(listen, signer, config).unwrap();
        let addr = server.local_addr();
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = shutdown.clone();
        let thread = std::thread::spawn(move || server.run(&flag));
        TestWitness {
            addr,
            name: "witness".to_owned(),
            key,
            shutdown,
            thread: Some(thread),
        }
    }

    fn client(&self, node: &Arc<Signer>) -> WitnessClient {
        let mut config = WitnessClientConfig::new(self.addr, &self.name, self.key);
        config.timeout = Duration::from_millis(400);
        WitnessClient::new(node.clone(), config).unwrap()
    }

    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for TestWitness {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn lease_goes_to_one_node_and_moves_only_after_it_expired() {
    let (alpha, beta) = (signer("alpha"), signer("beta"));
    let lease = Duration::from_millis(300);
    let w = TestWitness::start(&[&alpha, &beta], lease, Duration::ZERO);
    let (mut a, mut b) = (w.client(&alpha), w.client(&beta));

    let first = a.renew_lease().unwrap();
    assert!(
        matches!(first.lease, LeaseStatus::Granted { .. }),
        "{first:?}"
    );
    assert_eq!(first.lease_duration, lease);
    assert_eq!(first.peer_heard_ago, None, "beta has not spoken yet");
    let until = a.lease_granted_until().unwrap();
    assert!(
        until < Instant::now() + lease,
        "the client's view is shorter than a lease"
    );

    // While alpha renews, beta is refused, and both hear about each other.
    for _ in 0..5 {
        let ans = b.renew_lease().unwrap();
        assert_eq!(ans.lease, LeaseStatus::Refused);
        assert_eq!(ans.holder.as_ref().unwrap().node, "alpha");
        assert!(ans.peer_heard_ago.is_some());
        assert_eq!(b.lease_granted_until(), None);
        let ans = a.renew_lease().unwrap();
        assert!(matches!(ans.lease, LeaseStatus::Granted { .. }), "{ans:?}");
        assert!(ans.peer_heard_ago.is_some());
        std::thread::sleep(Duration::from_millis(50));
    }

    // alpha stops renewing; beta gets the lease once alpha's has run out.
    let mut granted_at = None;
    for _ in 0..100 {
        let ans = b.renew_lease().unwrap();
        if let LeaseStatus::Granted { .. } = ans.lease {
            granted_at = Some(Instant::now());
            break;
        }
        assert_eq!(ans.lease, LeaseStatus::Refused);
        std::thread::sleep(Duration::from_millis(20));
    }
    let granted_at = granted_at.expect("beta never got the lease");
    // The safety property: alpha's own view had expired before beta's grant.
    assert!(a.lease_granted_until().unwrap() < granted_at);
    let ans = a.renew_lease().unwrap();
    assert_eq!(ans.lease, LeaseStatus::Refused);
    assert_eq!(a.lease_granted_until(), None);

    // A planned handover: beta releases, alpha takes it at once.
    assert_eq!(b.release_lease().unwrap().lease, LeaseStatus::Released);
    assert!(matches!(
        a.renew_lease().unwrap().lease,
        LeaseStatus::Granted { .. }
    ));
    w.stop();
}

#[test]
fn wrong_keys_are_refused_with_a_clear_error() {
    let (alpha, beta) = (signer("alpha"), signer("beta"));
    let w = TestWitness::start(&[&alpha, &beta], Duration::from_secs(3), Duration::ZERO);

    // A node signing with a key the witness does not trust for its name.
    let impostor = signer("alpha");
    let err = w.client(&impostor).renew_lease().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WitnessError::Rejected { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "witness {} refused the request: signature",
            w.addr
        )),
        "{msg}"
    );
    assert!(
        msg.contains("\"alpha\" does not verify with the key pinned for it"),
        "{msg}"
    );

    // A name the witness does not know at all.
    let err = w.client(&signer("gamma")).ping().unwrap_err().to_string();
    assert!(
        err.contains("unknown sender \"gamma\" (trusted: alpha, beta)"),
        "{err}"
    );

    // A node that pinned the wrong witness key accepts no answer.
    let mut config = WitnessClientConfig::new(
        w.addr,
        "witness",
        SigningKey::generate().unwrap().public_key(),
    );
    config.timeout = Duration::from_millis(300);
    let err = WitnessClient::new(alpha.clone(), config)
        .unwrap()
        .ping()
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(
        err.to_string()
            .contains("invalid answer: signature of a frame from \"witness\" does not verify"),
        "{err}"
    );

    // None of that gave anyone the lease.
    let ans = w.client(&beta).renew_lease().unwrap();
    assert!(matches!(ans.lease, LeaseStatus::Granted { .. }), "{ans:?}");
}

#[test]
fn a_replayed_renewal_is_rejected() {
    let (alpha, beta) = (signer("alpha"), signer("beta"));
    let w = TestWitness::start(&[&alpha, &beta], Duration::from_secs(3), Duration::ZERO);
    let sock = loopback();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // A renewal as the wire format documents it: request id 77, op 3.
    let mut body = 77u64.to_be_bytes().to_vec();
    body.push(3);
    let request = alpha.seal(Kind::WitnessRequest, &body, now_ms()).unwrap();
    let mut verifier = Verifier::new([("witness".to_owned(), w.key)]);
    let mut buf = [0u8; 2048];
    let mut answer = |verifier: &mut Verifier| {
        let n = sock.recv(&mut buf).expect("the witness answers");
        let opened = verifier
            .open(&buf[..n], Kind::WitnessAnswer, now_ms())
            .unwrap();
        let body = opened.body.to_vec();
        (
            u64::from_be_bytes(body[..8].try_into().unwrap()),
            body[8],
            String::from_utf8_lossy(&body).into_owned(),
        )
    };

    sock.send_to(&request, w.addr).unwrap();
    let (id, outcome, _) = answer(&mut verifier);
    assert_eq!((id, outcome), (77, 1), "granted");

    sock.send_to(&request, w.addr).unwrap();
    let (id, outcome, text) = answer(&mut verifier);
    assert_eq!((id, outcome), (77, 5), "rejected");
    assert!(
        text.contains("replayed frame from \"alpha\": counter 1"),
        "{text}"
    );
}

#[test]
fn clients_report_an_unreachable_witness() {
    let (alpha, beta) = (signer("alpha"), signer("beta"));
    // Nothing listens on a port that was just freed.
    let free = loopback().local_addr().unwrap();
    let mut config = WitnessClientConfig::new(
        free,
        "witness",
        SigningKey::generate().unwrap().public_key(),
    );
    config.timeout = Duration::from_millis(200);
    let mut client = WitnessClient::new(alpha.clone(), config).unwrap();
    let err = client.renew_lease().unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "witness {free} unreachable: no valid answer within 200ms to 2 request(s)"
        )),
        "{err}"
    );

    // Up, then down.
    let w = TestWitness::start(&[&alpha, &beta], Duration::from_secs(3), Duration::ZERO);
    let mut client = w.client(&alpha);
    assert_eq!(client.ping().unwrap().lease, LeaseStatus::NotAsked);
    w.stop();
    let err = client.ping().unwrap_err();
    assert!(err.is_unreachable(), "{err}");
}

#[test]
fn a_restarted_witness_lets_only_the_holder_renew() {
    let (alpha, beta) = (signer("alpha"), signer("beta"));
    let witness_key = rcgen::KeyPair::generate().unwrap().serialize_der();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    // Long enough that alpha's own view outlives the restart below.
    let lease = Duration::from_secs(20);
    let mut w = TestWitness::start_at(any, &witness_key, &[&alpha, &beta], lease, Duration::ZERO);
    let addr = w.addr;
    let mut a = w.client(&alpha);
    assert!(matches!(
        a.renew_lease().unwrap().lease,
        LeaseStatus::Granted { .. }
    ));
    w.halt();
    drop(w);

    // Same address and key, no memory of the lease, a grace period of one lease.
    let w = TestWitness::start_at(addr, &witness_key, &[&alpha, &beta], lease, lease);
    let mut b = w.client(&beta);
    let ans = b.renew_lease().unwrap();
    assert_eq!(ans.lease, LeaseStatus::Grace, "acquire waits out the grace");
    assert_eq!(ans.holder, None);
    // alpha's own view is still valid, so it renews, and that is granted.
    let ans = a.renew_lease().unwrap();
    assert!(matches!(ans.lease, LeaseStatus::Granted { .. }), "{ans:?}");
    assert_eq!(b.renew_lease().unwrap().lease, LeaseStatus::Refused);
}
