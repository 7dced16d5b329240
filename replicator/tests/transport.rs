//! The QUIC transport and its pinned mutual TLS, on loopback.
//!
//! Every test binds 127.0.0.1 port 0, generates its certificates into a
//! tempdir and is bounded by [`LIMIT`].

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, Endpoint};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tempfile::TempDir;
use twinfs_replicator::inflight::{self, InFlight, ReadEnd};
use twinfs_replicator::tls::{
    self, GeneratedIdentity, Identity, PeerTrust, PinnedPeerVerifier, TlsError,
};
use twinfs_replicator::transport::{
    self, close_for, FrameStream, TransportError, TransportOptions, CLOSE_BAD_FRAME,
};
use twinfs_replicator_proto::{
    DiskState, Frame, Generation, Hello, Role, Seq, FRAME_VERSION, MAGIC, PROTOCOL_VERSION,
};

const LIMIT: Duration = Duration::from_secs(5);
const LOCALHOST: &str = "127.0.0.1:0";

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test did not finish in time")
}

/// A node's generated certificate and key, written to a tempdir.
struct Node {
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
    generated: GeneratedIdentity,
}

impl Node {
    fn new(name: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join(format!("{name}.crt"));
        let key = dir.path().join(format!("{name}.key"));
        let generated = tls::generate(name).unwrap();
        tls::write_identity(&generated, &cert, &key).unwrap();
        Node {
            _dir: dir,
            cert,
            key,
            generated,
        }
    }

    fn identity(&self) -> Identity {
        Identity::load(&self.cert, &self.key).unwrap()
    }

    /// Trust in this node, by its certificate file.
    fn pin(&self) -> PeerTrust {
        PeerTrust::from_cert_file(&self.cert).unwrap()
    }

    /// An endpoint for this node that trusts `peer`.
    fn endpoint(&self, peer: &PeerTrust) -> Endpoint {
        self.endpoint_with(peer, &TransportOptions::default())
    }

    fn endpoint_with(&self, peer: &PeerTrust, opts: &TransportOptions) -> Endpoint {
        self.endpoint_at(LOCALHOST, peer, opts)
    }

    fn endpoint_at(&self, at: &str, peer: &PeerTrust, opts: &TransportOptions) -> Endpoint {
        transport::endpoint(at.parse().unwrap(), &self.identity(), peer, opts).unwrap()
    }

    fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.identity().cert_der().clone()]
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        rustls_pemfile::private_key(&mut &std::fs::read(&self.key).unwrap()[..])
            .unwrap()
            .unwrap()
    }
}

fn addr(endpoint: &Endpoint) -> SocketAddr {
    endpoint.local_addr().unwrap()
}

fn hello(node: &str) -> Frame {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: node.into(),
        generation: Generation(7),
        last_applied: Seq(41),
        role: Role::Secondary,
        disk: DiskState::UpToDate,
        shared: Generation(6),
        changed_blocks: 3,
        primary_since_ms: 0,
        floor: Seq(40),
    })
}

fn mutation(seq: u64, len: usize) -> Frame {
    Frame::Mutation {
        seq: Seq(seq),
        flush: seq & 1 == 0,
        payload: (0..len).map(|i| (i * 31 + seq as usize) as u8).collect(),
    }
}

fn ack(seq: u64) -> Frame {
    Frame::Ack {
        received: Seq(seq),
        applied: Seq(seq),
        flushed: Seq(seq - 1),
    }
}

const BIG: usize = 4 << 20;

/// The opener sends Hello, a 4 MiB mutation and a batch; the acceptor answers
/// each, sends its own 4 MiB mutation, and both finish cleanly.
async fn exchange(client: &quinn::Connection, server: &quinn::Connection) {
    let client_side = async {
        let mut s = FrameStream::open(client).await.unwrap();
        s.send(&hello("a")).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), Some(hello("b")));
        s.send(&mutation(1, BIG)).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), Some(ack(1)));
        s.send_many([
            mutation(2, 10),
            Frame::Heartbeat { now_ms: 5 },
            mutation(3, 0),
        ])
        .await
        .unwrap();
        assert_eq!(s.recv().await.unwrap(), Some(ack(3)));
        assert_eq!(s.recv().await.unwrap(), Some(mutation(9, BIG)));
        s.finish().unwrap();
        assert_eq!(s.recv().await.unwrap(), None);
    };
    let server_side = async {
        let mut s = FrameStream::accept(server).await.unwrap();
        assert_eq!(s.peer(), server.remote_address());
        assert_eq!(s.recv().await.unwrap(), Some(hello("a")));
        s.send(&hello("b")).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), Some(mutation(1, BIG)));
        s.send(&ack(1)).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), Some(mutation(2, 10)));
        assert_eq!(
            s.recv().await.unwrap(),
            Some(Frame::Heartbeat { now_ms: 5 })
        );
        assert_eq!(s.recv().await.unwrap(), Some(mutation(3, 0)));
        s.send_many([ack(3), mutation(9, BIG)]).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), None, "client finished");
        s.finish().unwrap();
    };
    tokio::join!(client_side, server_side);
}

/// Connects `client` to `server` and returns both ends, accepted.
async fn pair(client: &Endpoint, server: &Endpoint) -> (quinn::Connection, quinn::Connection) {
    let (c, s) = tokio::join!(
        transport::connect(client, addr(server)),
        transport::accept(server)
    );
    (c.unwrap(), s.unwrap().unwrap())
}

fn peer_fingerprint(conn: &quinn::Connection) -> String {
    let certs = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<CertificateDer<'static>>>()
        .unwrap();
    tls::fingerprint(&certs[0])
}

#[tokio::test]
async fn pinned_peers_exchange_frames_both_ways() {
    bounded(async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let by_file = [(a.endpoint(&b.pin()), b.endpoint(&a.pin()))];
        let by_fingerprint = [(
            a.endpoint(&PeerTrust::from_fingerprint(&b.generated.fingerprint).unwrap()),
            // Lowercase without colons or prefix: how an admin might paste it.
            b.endpoint(
                &PeerTrust::from_fingerprint(
                    &a.generated.fingerprint[7..].replace(':', "").to_lowercase(),
                )
                .unwrap(),
            ),
        )];
        for (ep_a, ep_b) in by_file.iter().chain(&by_fingerprint) {
            // Either node may dial: both endpoints are client and server.
            for (client, server) in [(ep_a, ep_b), (ep_b, ep_a)] {
                let (c, s) = pair(client, server).await;
                assert_eq!(s.remote_address(), addr(client));
                assert_eq!(c.remote_address(), addr(server));
                let (fp_client, fp_server) = if std::ptr::eq(client, ep_a) {
                    (&a.generated.fingerprint, &b.generated.fingerprint)
                } else {
                    (&b.generated.fingerprint, &a.generated.fingerprint)
                };
                assert_eq!(&peer_fingerprint(&s), fp_client);
                assert_eq!(&peer_fingerprint(&c), fp_server);
                exchange(&c, &s).await;
                c.close(transport::CLOSE_SHUTDOWN, b"done");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn keepalive_holds_an_idle_connection_past_the_idle_timeout() {
    bounded(async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let opts = TransportOptions {
            keepalive: Duration::from_millis(50),
            idle_timeout: Duration::from_millis(300),
        };
        let (ep_a, ep_b) = (
            a.endpoint_with(&b.pin(), &opts),
            b.endpoint_with(&a.pin(), &opts),
        );
        let (c, s) = pair(&ep_a, &ep_b).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(c.close_reason().is_none() && s.close_reason().is_none());
        exchange(&c, &s).await;
    })
    .await;
}

/// A `tracing` writer into a shared buffer, to assert on log lines.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    /// Captures this thread's events (the whole current-thread runtime) from now on.
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_env_filter("twinfs_replicator=debug")
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn warnings(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            // Hosts with a low net.core.rmem_max add a socket buffer warning.
            .filter(|l| l.contains(" WARN ") && !l.contains("UDP socket buffers"))
            .map(str::to_owned)
            .collect()
    }
}

/// Drives a client through connect, open, send and recv; returns the first error.
async fn client_error(client: &Endpoint, server: SocketAddr) -> TransportError {
    let conn = match transport::connect(client, server).await {
        Ok(conn) => conn,
        Err(e) => return e,
    };
    let mut s = match FrameStream::open(&conn).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    if let Err(e) = s.send(&hello("intruder")).await {
        return e;
    }
    match s.recv().await {
        Err(e) => e,
        Ok(frame) => panic!("refused client received {frame:?}"),
    }
}

#[tokio::test]
async fn server_refuses_a_client_with_another_certificate() {
    let log = LogBuf::default();
    let _guard = log.capture();
    bounded(async {
        let (a, b, c) = (Node::new("alpha"), Node::new("beta"), Node::new("mallory"));
        let ep_b = b.endpoint(&a.pin()); // b expects a...
        let ep_c = c.endpoint(&b.pin()); // ...and c dials it
        let (server, client) =
            tokio::join!(transport::accept(&ep_b), client_error(&ep_c, addr(&ep_b)));

        let reason = format!(
            "peer certificate {} is not the pinned peer certificate {} (from {})",
            c.generated.fingerprint,
            a.generated.fingerprint,
            a.cert.display()
        );
        let server = server.unwrap().unwrap_err();
        assert!(matches!(server, TransportError::Refused { peer, .. } if peer == addr(&ep_c)));
        assert_eq!(
            server.to_string(),
            format!(
                "refused replication connection from {}: {reason}",
                addr(&ep_c)
            )
        );
        let warnings = log.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(
            warnings[0].ends_with(&server.to_string()),
            "{}",
            warnings[0]
        );

        assert!(
            matches!(client, TransportError::ConnectionLost { .. }),
            "{client:?}"
        );
        assert_eq!(
            client.to_string(),
            format!(
                "connection to {} lost: the peer refused the TLS handshake: {reason}",
                addr(&ep_b)
            )
        );

        // The refusal does not disturb the endpoint: the pinned peer gets in.
        let ep_a = a.endpoint(&b.pin());
        let (c, s) = pair(&ep_a, &ep_b).await;
        exchange(&c, &s).await;
    })
    .await;
}

#[tokio::test]
async fn client_refuses_a_server_with_another_certificate() {
    bounded(async {
        let (a, b, c) = (Node::new("alpha"), Node::new("beta"), Node::new("mallory"));
        let ep_a = a.endpoint(&b.pin()); // a expects b...
        let ep_c = c.endpoint(&a.pin()); // ...but reaches c, which would accept a
        let (client, server) = tokio::join!(
            transport::connect(&ep_a, addr(&ep_c)),
            transport::accept(&ep_c)
        );
        let reason = format!(
            "peer certificate {} is not the pinned peer certificate {} (from {})",
            c.generated.fingerprint,
            b.generated.fingerprint,
            b.cert.display()
        );
        let client = client.unwrap_err();
        assert_eq!(
            client.to_string(),
            format!("replication handshake with {} failed: {reason}", addr(&ep_c))
        );
        let server = server.unwrap().unwrap_err();
        assert!(matches!(server, TransportError::Handshake { .. }), "{server:?}");
        assert_eq!(
            server.to_string(),
            format!(
                "replication handshake with {} failed: the peer refused the TLS handshake: {reason}",
                addr(&ep_a)
            )
        );
    })
    .await;
}

/// A rustls client configuration for `node` with any ALPN and client certificate.
fn raw_client(trust: &PeerTrust, cert: Option<&Node>, alpn: &[u8]) -> quinn::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(PinnedPeerVerifier::new(trust));
    let mut config = match cert {
        Some(node) => builder
            .with_client_auth_cert(node.cert_chain(), node.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(config).unwrap()))
}

#[tokio::test]
async fn server_refuses_a_client_without_certificate() {
    let log = LogBuf::default();
    let _guard = log.capture();
    bounded(async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let ep_b = b.endpoint(&a.pin());
        let mut ep_a = a.endpoint(&b.pin());
        ep_a.set_default_client_config(raw_client(&b.pin(), None, tls::ALPN));
        let (server, client) = tokio::join!(transport::accept(&ep_b), client_error(&ep_a, addr(&ep_b)));
        let server = server.unwrap().unwrap_err();
        assert_eq!(
            server.to_string(),
            format!(
                "refused replication connection from {}: peer sent no certificates",
                addr(&ep_a)
            )
        );
        assert_eq!(log.warnings().len(), 1);
        assert_eq!(
            client.to_string(),
            format!(
                "connection to {} lost: the peer refused the TLS handshake: peer sent no certificates",
                addr(&ep_b)
            )
        );
    })
    .await;
}

/// Presents one node's certificate but signs with another node's key.
#[derive(Debug)]
struct Impostor(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Impostor {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn server_refuses_the_pinned_certificate_without_its_key() {
    bounded(async {
        let (a, b, c) = (Node::new("alpha"), Node::new("beta"), Node::new("mallory"));
        let ep_b = b.endpoint(&a.pin());
        let mut ep_c = c.endpoint(&b.pin());
        // c copied a's certificate (it is public) but has only its own key.
        let provider = rustls::crypto::ring::default_provider();
        let key = provider.key_provider.load_private_key(c.key_der()).unwrap();
        let stolen = rustls::sign::CertifiedKey::new(a.cert_chain(), key);
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(PinnedPeerVerifier::new(&b.pin()))
            .with_client_cert_resolver(Arc::new(Impostor(Arc::new(stolen))));
        config.alpn_protocols = vec![tls::ALPN.to_vec()];
        ep_c.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(config).unwrap(),
        )));
        let (server, client) =
            tokio::join!(transport::accept(&ep_b), client_error(&ep_c, addr(&ep_b)));
        let server = server.unwrap().unwrap_err();
        assert!(
            matches!(server, TransportError::Refused { .. }),
            "{server:?}"
        );
        let text = server.to_string();
        assert!(
            text.starts_with(&format!(
                "refused replication connection from {}: ",
                addr(&ep_c)
            )),
            "{text}"
        );
        let reason = format!(
            "peer presented certificate {} but did not prove it holds its private key (",
            a.generated.fingerprint
        );
        assert!(text.contains(&reason), "{text}");
        assert!(client.to_string().contains(&reason), "{client}");
    })
    .await;
}

#[tokio::test]
async fn server_refuses_another_application_protocol() {
    bounded(async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let ep_b = b.endpoint(&a.pin());
        let mut ep_a = a.endpoint(&b.pin());
        ep_a.set_default_client_config(raw_client(&b.pin(), Some(&a), b"h3"));
        let (server, client) = tokio::join!(transport::accept(&ep_b), client_error(&ep_a, addr(&ep_b)));
        let reason = "no common application protocol: the client does not speak twinfs/1";
        assert_eq!(
            server.unwrap().unwrap_err().to_string(),
            format!("refused replication connection from {}: {reason}", addr(&ep_a))
        );
        assert_eq!(
            client.to_string(),
            format!(
                "replication handshake with {} failed: the peer refused the TLS handshake: {reason}",
                addr(&ep_b)
            )
        );
    })
    .await;
}

#[tokio::test]
async fn bad_frames_close_the_connection_and_the_endpoint_goes_on() {
    let mut huge = MAGIC.to_vec();
    huge.extend_from_slice(&[1, 2, 0xff, 0xff, 0xff, 0xff]);
    let mut unknown_type = MAGIC.to_vec();
    unknown_type.extend_from_slice(&[1, 99, 0, 0, 0, 0]);
    let mut wrong_version = MAGIC.to_vec();
    wrong_version.extend_from_slice(&[FRAME_VERSION + 1, 4, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
    let mut good_then_bad = Vec::new();
    Frame::Heartbeat { now_ms: 1 }.encode(&mut good_then_bad);
    good_then_bad.extend_from_slice(b"\0\0\0\0");
    let mut cut = Vec::new();
    mutation(1, 100).encode(&mut cut);
    cut.truncate(50);
    let cases: [(&str, &[u8], bool, &str); 6] = [
        ("http", b"GET / HTTP/1.1\r\n\r\n", false, "bad frame magic"),
        (
            "huge length",
            &huge,
            false,
            "frame body of 4294967295 bytes exceeds the limit",
        ),
        (
            "unknown type",
            &unknown_type,
            false,
            "unknown frame type 99",
        ),
        (
            "wrong version",
            &wrong_version,
            false,
            "unsupported frame version",
        ),
        (
            "good then bad",
            &good_then_bad,
            false,
            "bad frame magic [00, 00, 00, 00]",
        ),
        (
            "cut",
            &cut,
            true,
            "ended the replication stream inside a frame (50 bytes",
        ),
    ];
    bounded(async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let ep_a = a.endpoint(&b.pin());
        let ep_b = b.endpoint(&a.pin());
        for (name, bytes, finish, want) in cases {
            let (client, server) = pair(&ep_a, &ep_b).await;
            let (mut send, _recv) = client.open_bi().await.unwrap();
            send.write_all(bytes).await.unwrap();
            if finish {
                send.finish().unwrap();
            }
            let mut s = FrameStream::accept(&server).await.unwrap();
            if name == "good then bad" {
                assert_eq!(
                    s.recv().await.unwrap(),
                    Some(Frame::Heartbeat { now_ms: 1 })
                );
            }
            let err = s.recv().await.unwrap_err();
            assert!(
                matches!(
                    err,
                    TransportError::BadFrame { peer, .. } | TransportError::Truncated { peer, .. }
                        if peer == addr(&ep_a)
                ),
                "{name}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(&addr(&ep_a).to_string()), "{name}: {text}");
            assert!(text.contains(want), "{name}: {text}");

            close_for(&server, &err);
            match client.closed().await {
                ConnectionError::ApplicationClosed(close) => {
                    assert_eq!(close.error_code, CLOSE_BAD_FRAME, "{name}");
                    let reason = String::from_utf8(close.reason.to_vec()).unwrap();
                    let expected = if finish {
                        "stream ended inside a frame"
                    } else {
                        "bad frame: "
                    };
                    assert!(reason.starts_with(expected), "{name}: {reason}");
                }
                other => panic!("{name}: client saw {other:?}"),
            }
        }
        // The endpoint still serves the pinned peer.
        let (c, s) = pair(&ep_a, &ep_b).await;
        exchange(&c, &s).await;
    })
    .await;
}

/// A peer with a valid certificate that announces a 32 MiB frame and sends
/// ten bytes of it gets no 32 MiB buffer: memory follows what arrived.
#[tokio::test]
async fn a_frame_header_s_claim_reserves_no_memory_before_the_bytes_arrive() {
    let mut claim = MAGIC.to_vec();
    claim.extend_from_slice(&[FRAME_VERSION, 2]);
    claim.extend_from_slice(&(32u32 << 20).to_be_bytes());
    claim.extend_from_slice(&[7; 10]);
    bounded(async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let ep_a = a.endpoint(&b.pin());
        let ep_b = b.endpoint(&a.pin());
        let (client, server) = pair(&ep_a, &ep_b).await;
        let (mut send, _recv) = client.open_bi().await.unwrap();
        send.write_all(&claim).await.unwrap();
        let mut s = FrameStream::accept(&server).await.unwrap();
        // The rest never comes: recv waits (cancel-safe), holding what came.
        let pending = tokio::time::timeout(Duration::from_millis(300), s.recv()).await;
        assert!(pending.is_err(), "a frame was returned: {pending:?}");
        assert!(
            s.buffer_capacity() <= 2 << 20,
            "{} bytes reserved for {} received",
            s.buffer_capacity(),
            claim.len()
        );
    })
    .await;
}

/// Issue 13: a reader whose frames nobody is done with stops reading once
/// its budget is spent, and QUIC's flow control then holds the sender back:
/// what the sender could write is at most the budget, the frame waiting for
/// its charge and the stream window. Once the frames are done with, the rest
/// flows, whole and in order.
#[tokio::test]
async fn a_reader_with_its_budget_spent_stops_reading_and_flow_control_holds_the_sender() {
    const FRAMES: u64 = 48;
    const LEN: usize = 1 << 20;
    const BUDGET: usize = 4 << 20;
    // The transport's per-stream flow-control window.
    const WINDOW: usize = 16 << 20;
    let run = async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let ep_a = a.endpoint(&b.pin());
        let ep_b = b.endpoint(&a.pin());
        let (client, server) = pair(&ep_a, &ep_b).await;
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sender = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut s = FrameStream::open(&client).await.unwrap();
                s.send(&hello("a")).await.unwrap();
                for seq in 1..=FRAMES {
                    s.send(&mutation(seq, LEN)).await.unwrap();
                    sent.store(seq, std::sync::atomic::Ordering::SeqCst);
                }
                s.finish().unwrap();
                (s, client)
            })
        };
        let (_send, mut receiver) = FrameStream::accept(&server).await.unwrap().into_split();
        let budget = InFlight::new(BUDGET);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reader = {
            let budget = budget.clone();
            tokio::spawn(async move {
                inflight::read_frames(&mut receiver, &budget, |frame, charge| {
                    tx.send((frame, charge)).is_ok()
                })
                .await
            })
        };
        // Nobody is done with a frame: wait until the sender stops moving
        // (one second without progress, at most 30 s in all).
        let load = || sent.load(std::sync::atomic::Ordering::SeqCst);
        let (mut last, mut still) = (u64::MAX, 0);
        for _ in 0..150 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = load();
            if now == last {
                still += 1;
                if still == 5 {
                    break;
                }
            } else {
                (last, still) = (now, 0);
            }
        }
        let stalled_at = load();
        assert!(
            stalled_at < FRAMES,
            "the sender wrote all {FRAMES} MiB although nothing was done with: no back-pressure"
        );
        let written = stalled_at as usize * LEN;
        assert!(
            written <= BUDGET + 2 * LEN + WINDOW,
            "the sender wrote {written} bytes, beyond the budget ({BUDGET}), one frame and the window"
        );
        let mut held = Vec::new();
        while let Ok(x) = rx.try_recv() {
            held.push(x);
        }
        let handed: usize = held
            .iter()
            .map(|(f, _)| match f {
                Frame::Mutation { payload, .. } => payload.len(),
                _ => 0,
            })
            .sum();
        eprintln!(
            "back-pressure: the sender stalled after {stalled_at} MiB; {} frames ({handed} \
             payload bytes) handed on",
            held.len()
        );
        assert!(
            handed <= BUDGET,
            "{handed} bytes handed on, budget {BUDGET}"
        );
        assert!(budget.available() < LEN, "the reader waits for budget");

        // Done with them: everything else arrives, in order.
        drop(held);
        let mut seen = 0;
        for _ in 0..=FRAMES {
            let Some((frame, charge)) = rx.recv().await else {
                break;
            };
            drop(charge);
            if let Frame::Mutation { seq, .. } = frame {
                seen = seq.0;
            }
        }
        assert_eq!(seen, FRAMES);
        let (_stream, _client) = sender.await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), ReadEnd::Finished);
        assert_eq!(budget.available(), BUDGET, "every charge came back");
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("test did not finish in time");
}

#[tokio::test]
async fn closed_connection_surfaces_in_stream_ops_with_the_reason() {
    bounded(async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let (ep_a, ep_b) = (a.endpoint(&b.pin()), b.endpoint(&a.pin()));
        let (c, s) = pair(&ep_a, &ep_b).await;
        let mut client = FrameStream::open(&c).await.unwrap();
        client.send(&hello("a")).await.unwrap();
        let mut server = FrameStream::accept(&s).await.unwrap();
        assert_eq!(server.recv().await.unwrap(), Some(hello("a")));
        close_for(
            &s,
            &TransportError::BadFrame {
                peer: addr(&ep_a),
                error: twinfs_replicator_proto::FrameError::UnknownType { ty: 9 },
            },
        );
        let err = client.recv().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "connection to {} lost: closed by peer (code 1): bad frame: unknown frame type 9",
                addr(&ep_b)
            )
        );
        assert_eq!(err.peer(), Some(addr(&ep_b)));
    })
    .await;
}

/// A node's acceptor drops an attempt from any address but the peer's
/// without a handshake (even one with the right certificate), makes the
/// peer's address prove itself with a stateless Retry, and accepts it.
#[tokio::test]
async fn the_acceptor_ignores_other_addresses_and_accepts_the_peer() {
    bounded(async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let ep_b = b.endpoint(&a.pin());
        let policy = transport::AcceptPolicy {
            peer: Some("127.0.0.2".parse().unwrap()),
            handshake_timeout: Duration::from_secs(2),
        };
        let mut acceptor = transport::Acceptor::new(ep_b.clone(), policy);
        let accepting = tokio::spawn(async move {
            let accepted = acceptor.next().await;
            (acceptor, accepted)
        });
        let short = TransportOptions {
            keepalive: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(500),
        };
        let stranger = a.endpoint_at("127.0.0.1:0", &b.pin(), &short);
        let unanswered = Duration::from_secs(1);
        let attempt = tokio::time::timeout(unanswered, transport::connect(&stranger, addr(&ep_b)));
        assert!(
            !matches!(attempt.await, Ok(Ok(_))),
            "a connection from another address was accepted"
        );
        let peer = a.endpoint_at("127.0.0.2:0", &b.pin(), &short);
        let conn = transport::connect(&peer, addr(&ep_b)).await.unwrap();
        let (acceptor, accepted) = accepting.await.unwrap();
        let accepted = accepted.unwrap().unwrap();
        assert_eq!(accepted.remote_address(), addr(&peer));
        drop(conn);
        let stats = acceptor.stats();
        assert!(stats.not_peer >= 1, "{stats:?}");
        assert!(stats.retried >= 1, "{stats:?}");
        assert_eq!((stats.failed, stats.timed_out, stats.evicted), (0, 0, 0));
    })
    .await;
}

#[tokio::test]
async fn accept_returns_none_once_the_endpoint_is_closed() {
    bounded(async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let ep = a.endpoint(&b.pin());
        ep.close(transport::CLOSE_SHUTDOWN, b"");
        assert!(transport::accept(&ep).await.is_none());
    })
    .await;
}

#[tokio::test]
async fn endpoint_and_connect_errors_name_the_address() {
    bounded(async {
        let (a, b) = (Node::new("alpha"), Node::new("beta"));
        let ep = a.endpoint(&b.pin());
        let taken = addr(&ep);
        let err = transport::endpoint(taken, &a.identity(), &b.pin(), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot listen on {taken}: ")),
            "{err}"
        );

        let nowhere: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let err = transport::connect(&ep, nowhere)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot connect to 0.0.0.0:0: "), "{err}");

        let opts = TransportOptions {
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
        };
        let err = transport::endpoint(LOCALHOST.parse().unwrap(), &a.identity(), &b.pin(), &opts)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "transport keepalive (10s) must be non-zero and shorter than idle_timeout (10s)"
        );
    })
    .await;
}

#[test]
fn endpoint_outside_a_runtime_is_an_error() {
    let (a, b) = (Node::new("alpha"), Node::new("beta"));
    let err = transport::endpoint(
        LOCALHOST.parse().unwrap(),
        &a.identity(),
        &b.pin(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TransportError::NoRuntime), "{err}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn identity_round_trip() {
    let a = Node::new("alpha");
    assert_eq!(mode(&a.key), 0o600);
    assert_eq!(mode(&a.cert), 0o644);
    let id = a.identity();
    assert_eq!(id.fingerprint(), a.generated.fingerprint);
    assert_eq!(a.pin().fingerprint(), a.generated.fingerprint);
    assert_eq!(
        PeerTrust::from_fingerprint(&a.generated.fingerprint)
            .unwrap()
            .fingerprint(),
        a.generated.fingerprint
    );
    assert_eq!(
        a.pin().to_string(),
        format!("{} (from {})", a.generated.fingerprint, a.cert.display())
    );
    // Debug output never shows the key.
    assert!(!format!("{:?} {id:?}", a.generated).contains("PRIVATE"));
}

#[test]
fn write_identity_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("n.crt"), dir.path().join("n.key"));
    let gen = tls::generate("n").unwrap();
    std::fs::write(&key, "precious").unwrap();
    let err = tls::write_identity(&gen, &cert, &key).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("refusing to overwrite {}: it already exists", key.display())
    );
    assert!(!cert.exists(), "nothing written when refusing");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "precious");

    std::fs::remove_file(&key).unwrap();
    tls::write_identity(&gen, &cert, &key).unwrap();
    let err = tls::write_identity(&tls::generate("n").unwrap(), &cert, &key).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "refusing to overwrite {}: it already exists",
            cert.display()
        )
    );
    assert_eq!(
        Identity::load(&cert, &key).unwrap().fingerprint(),
        gen.fingerprint,
        "the first identity is intact"
    );

    let err = tls::write_identity(&gen, &dir.path().join("x"), &dir.path().join("x"));
    assert!(matches!(err, Err(TlsError::SamePath { .. })));
}

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let a = Node::new("alpha");
    let b = Node::new("beta");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.crt");
    let garbage = dir.path().join("garbage.pem");
    std::fs::File::create(&garbage)
        .unwrap()
        .write_all(b"this is not a certificate\n")
        .unwrap();
    let bad_pem = dir.path().join("bad.pem");
    std::fs::write(
        &bad_pem,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = |cert: &Path, key: &Path| Identity::load(cert, key).unwrap_err().to_string();

    let e = err(&missing, &a.key);
    assert!(
        e.starts_with(&format!("cannot read {}: ", missing.display())),
        "{e}"
    );
    assert!(e.contains("No such file or directory"), "{e}");
    let e = err(&a.cert, &missing);
    assert!(
        e.starts_with(&format!("cannot read {}: ", missing.display())),
        "{e}"
    );

    assert_eq!(
        err(&garbage, &a.key),
        format!(
            "{} contains no PEM certificate (no \"BEGIN CERTIFICATE\" block)",
            garbage.display()
        )
    );
    assert_eq!(
        err(&a.cert, &garbage),
        format!(
            "{} contains no PEM private key (no \"BEGIN PRIVATE KEY\" block)",
            garbage.display()
        )
    );
    let e = err(&bad_pem, &a.key);
    assert!(
        e.starts_with(&format!("{} is not valid PEM", bad_pem.display())),
        "{e}"
    );
    let e = err(&a.key, &a.cert);
    assert!(
        e.ends_with("are the certificate and key paths swapped?"),
        "{e}"
    );
    assert!(e.starts_with(&a.key.display().to_string()), "{e}");
    assert_eq!(
        err(&a.cert, &b.key),
        format!(
            "private key {} does not match certificate {}",
            b.key.display(),
            a.cert.display()
        )
    );

    let e = PeerTrust::from_cert_file(&a.key).unwrap_err().to_string();
    assert!(e.contains("never copy a key"), "{e}");
    let e = PeerTrust::from_cert_file(&missing).unwrap_err().to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    let two = dir.path().join("two.crt");
    std::fs::write(
        &two,
        format!("{}{}", a.generated.cert_pem, b.generated.cert_pem),
    )
    .unwrap();
    assert_eq!(
        PeerTrust::from_cert_file(&two).unwrap_err().to_string(),
        format!(
            "{} contains 2 certificates, expected exactly the peer's one",
            two.display()
        )
    );
}

#[test]
fn fingerprint_matches_openssl() {
    let a = Node::new("alpha");
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&a.cert)
        .output()
        .expect("openssl is installed");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (label, openssl) = stdout.trim().split_once('=').unwrap();
    assert!(label.eq_ignore_ascii_case("sha256 Fingerprint"), "{stdout}");
    assert_eq!(
        a.generated.fingerprint.strip_prefix("sha256:"),
        Some(openssl)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&a.cert)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("DNS:alpha, DNS:twinfs-peer"), "{text}");
    assert!(
        text.contains("Subject: CN=alpha") || text.contains("Subject: CN = alpha"),
        "{text}"
    );
    // Valid from last January for a hundred years: peers pin, nothing expires.
    let dates = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-dates", "-in"])
        .arg(&a.cert)
        .output()
        .unwrap();
    let years: Vec<i32> = String::from_utf8(dates.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    assert_eq!(years.len(), 2);
    assert_eq!(years[1] - years[0], 101, "{years:?}");
    // And the pasted openssl output pins the same certificate.
    assert_eq!(
        PeerTrust::from_fingerprint(stdout.trim())
            .unwrap()
            .fingerprint(),
        a.generated.fingerprint
    );
}
