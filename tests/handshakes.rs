//! Strangers knocking at the replication port: the listening node keeps
//! letting the real peer in.
//!
//! The flood comes from inside the lab, from alpha's namespace (the only one
//! that reaches the private link): garbage shaped like QUIC Initials and real
//! Initials from a second address on alpha's link (a stranger's), and silent
//! half-handshakes from alpha's own address (clients that pass the address
//! check, get the server's first flight and then never answer).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::rustls;

use crate::harness::lab::{self, Node};
use crate::harness::pair::{Pair, DEADTIME, PORT};
use crate::harness::util::TestRng;
use crate::replication::require;

/// How long the flood lasts at most (its threads stop earlier when told).
const FLOOD_MAX: Duration = Duration::from_secs(60);
/// Concurrent silent half-handshakes from alpha's address.
const SILENT_CLIENTS: usize = 24;
/// How long a silent client sits on the server's first flight.
const SILENCE: Duration = Duration::from_secs(2);
/// Sockets (source ports) the garbage is sent from.
const GARBAGE_SOURCES: usize = 32;
/// Memory the listening node may grow by under the flood (quinn holds at most
/// 64 unexamined attempts of 64 KiB and 8 handshakes; this is far above that).
const RSS_GROWTH_LIMIT_KIB: u64 = 64 << 10;

/// The lab's deadtime as a duration.
fn deadtime() -> Duration {
    let ms: u64 = DEADTIME.trim_end_matches('s').parse::<u64>().unwrap() * 1000;
    Duration::from_millis(ms)
}

#[test]
fn a_handshake_flood_does_not_keep_the_real_peer_out() {
    if !require("a_handshake_flood_does_not_keep_the_real_peer_out") {
        return;
    }
    let pair = Pair::connected("hs-flood", "");
    // alpha has the lower address, so alpha dials and beta listens.
    assert!(
        pair.node(Node::B)
            .log_text()
            .contains("waiting for the peer to connect"),
        "beta is not the listening node"
    );
    let alpha = pair.lab.node(Node::A);
    let beta = SocketAddr::new(pair.lab.node(Node::B).addr(), PORT);
    let [a, b, c, _] = alpha.addr_v4().octets();
    let stranger = Ipv4Addr::new(a, b, c, 66);
    lab::ip(&[
        "-n",
        alpha.ns_name(),
        "addr",
        "add",
        &format!("{stranger}/24"),
        "dev",
        alpha.private_dev(),
    ])
    .unwrap();
    let beta_pid = pair.node_pid(Node::B);
    let rss_before = rss_kib(beta_pid);
    let log_before = pair.node(Node::B).log_text().len();

    let flood = Flood::start(&pair, beta, IpAddr::V4(stranger), alpha.addr());
    std::thread::sleep(Duration::from_secs(2));

    // Cut the link long enough for both sides to lose the connection.
    pair.lab.partition();
    for node in [Node::A, Node::B] {
        pair.wait_status(node, "connection lost", Duration::from_secs(15), |s| {
            s["connection"] != "Connected"
        });
    }
    pair.lab.heal();
    let healed = Instant::now();
    // The acceptance bound: back within one deadtime of the link's return
    // (the peer's death is declared after one deadtime of silence).
    for node in [Node::A, Node::B] {
        pair.wait_status(node, "reconnected within one deadtime", deadtime(), |s| {
            s["connection"] == "Connected"
        });
    }
    eprintln!(
        "reconnected {:?} after the link came back",
        healed.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib(beta_pid);
    let sent = flood.stop();
    eprintln!("flood: {sent:?}; beta RSS {rss_before} KiB -> {rss_after} KiB");

    assert!(
        sent.garbage > 1000 && sent.stranger > 20 && sent.silent > 10,
        "{sent:?}"
    );
    assert!(
        rss_after < rss_before + RSS_GROWTH_LIMIT_KIB,
        "beta grew from {rss_before} KiB to {rss_after} KiB under the flood"
    );
    let log = pair.node(Node::B).log_text();
    let during = &log[log_before..];
    let stranger_lines = during
        .lines()
        .filter(|l| l.contains(&format!("attempt from {stranger}:")))
        .count();
    assert!(
        stranger_lines > 0,
        "the stranger's attempts were not seen:\n{during}"
    );
    assert!(
        during.contains("more like this suppressed"),
        "no suppressed count:\n{during}"
    );
    assert!(
        during.contains("did not finish within") || during.contains("abandoned the oldest"),
        "the silent half-handshakes were not seen:\n{during}"
    );
    // Each kind of refusal at most 2 a second (plus its burst): five kinds.
    let refusals = during
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("replication"))
        .count();
    let limit = 5 * 2 * (sent.seconds as usize + 2);
    assert!(
        refusals <= limit,
        "{refusals} warnings in {} s of flood (at most {limit}):\n{during}",
        sent.seconds
    );
}

/// What the flood sent.
#[derive(Debug, Default)]
struct Sent {
    garbage: u64,
    stranger: u64,
    silent: u64,
    seconds: u64,
}

/// The flood's threads, all inside alpha's namespace.
struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    counts: Arc<[AtomicU64; 3]>,
    started: Instant,
}

impl Flood {
    fn start(pair: &Pair, target: SocketAddr, stranger: IpAddr, peer_ip: IpAddr) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let ns = pair.lab.node(Node::A).netns_path().to_owned();
        let mut threads = Vec::new();
        let mut spawn = |f: Box<dyn FnOnce() + Send>| {
            let ns = ns.clone();
            threads.push(std::thread::spawn(move || {
                lab::enter_netns(&ns).unwrap();
                f();
            }));
        };
        {
            let (stop, counts) = (stop.clone(), counts.clone());
            spawn(Box::new(move || {
                garbage(target, stranger, &stop, &counts[0])
            }));
        }
        {
            let (stop, counts) = (stop.clone(), counts.clone());
            spawn(Box::new(move || {
                stranger_initials(target, stranger, &stop, &counts[1])
            }));
        }
        for _ in 0..SILENT_CLIENTS {
            let (stop, counts) = (stop.clone(), counts.clone());
            spawn(Box::new(move || silent(target, peer_ip, &stop, &counts[2])));
        }
        Flood {
            stop,
            threads,
            counts,
            started: Instant::now(),
        }
    }

    fn stop(self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Sent {
            garbage: self.counts[0].load(Ordering::Relaxed),
            stranger: self.counts[1].load(Ordering::Relaxed),
            silent: self.counts[2].load(Ordering::Relaxed),
            seconds: self.started.elapsed().as_secs(),
        }
    }
}

/// Whether the flood should go on.
fn going(stop: &AtomicBool, started: Instant) -> bool {
    !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_MAX
}

/// Datagrams shaped like QUIC v1 Initials (long header, random connection
/// ids, random "encrypted" payload) from many source ports.
fn garbage(target: SocketAddr, from: IpAddr, stop: &AtomicBool, sent: &AtomicU64) {
    let sockets: Vec<UdpSocket> = (0..GARBAGE_SOURCES)
        .map(|_| UdpSocket::bind(SocketAddr::new(from, 0)).unwrap())
        .collect();
    let mut rng = TestRng::new(0x9a7b);
    let started = Instant::now();
    let mut datagram = vec![0u8; 1200];
    while going(stop, started) {
        for socket in &sockets {
            for chunk in datagram.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes()[..chunk.len()]);
            }
            datagram[0] = 0xc3; // long header, Initial, 4-byte packet number
            datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            datagram[5] = 8; // destination connection id length
            datagram[14] = 8; // source connection id length
            datagram[23] = 0; // no token
            datagram[24..26].copy_from_slice(&(0x4000u16 | 1100).to_be_bytes());
            if socket.send_to(&datagram, target).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        // About 10 000 datagrams a second.
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Real QUIC connection attempts (valid Initials) from the stranger's address.
fn stranger_initials(target: SocketAddr, from: IpAddr, stop: &AtomicBool, sent: &AtomicU64) {
    let rt = runtime();
    rt.block_on(async {
        let endpoint = quinn::Endpoint::client(SocketAddr::new(from, 0)).unwrap();
        let config = client_config(Duration::ZERO);
        let started = Instant::now();
        while going(stop, started) {
            let mut attempts = tokio::task::JoinSet::new();
            for _ in 0..20 {
                if let Ok(connecting) = endpoint.connect_with(config.clone(), target, "x") {
                    sent.fetch_add(1, Ordering::Relaxed);
                    attempts.spawn(tokio::time::timeout(Duration::from_millis(300), connecting));
                }
            }
            while attempts.join_next().await.is_some() {}
        }
        endpoint.close(0u32.into(), b"");
    });
}

/// Handshakes from the peer's own address that prove the address (they
/// answer the Retry) and then fall silent on the server's first flight.
fn silent(target: SocketAddr, from: IpAddr, stop: &AtomicBool, sent: &AtomicU64) {
    let started = Instant::now();
    while going(stop, started) {
        let rt = runtime();
        rt.block_on(async {
            let endpoint = quinn::Endpoint::client(SocketAddr::new(from, 0)).unwrap();
            if let Ok(connecting) = endpoint.connect_with(client_config(SILENCE), target, "x") {
                sent.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::time::timeout(SILENCE * 2, connecting).await;
            }
        });
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client whose certificate check blocks its thread for `stall` and then
/// fails: while it blocks, the client sends nothing at all.
fn client_config(stall: Duration) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Stall { stall, provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![twinfs_replicator::tls::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(5).try_into().unwrap()));
    config.transport_config(Arc::new(transport));
    config
}

#[derive(Debug)]
struct Stall {
    stall: Duration,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Stall {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        std::thread::sleep(self.stall);
        Err(rustls::Error::General("a silent test client".into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("never reached".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
