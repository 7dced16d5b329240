//! Replication end to end: two `twinfs run` nodes in network namespaces, real
//! QUIC with mutual TLS over the lab's private link, real FUSE mounts.

use crate::harness::lab::{require_lab, Node};
use crate::harness::pair::Pair;
use crate::harness::util::{require_fuse, TestRng};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

pub(crate) fn require(test: &str) -> bool {
    require_fuse(test) && require_lab(test)
}

/// Writes `n` files of random sizes under `root` (some in subdirectories),
/// fsyncing each, and returns name → contents.
pub(crate) fn write_fsynced_files(root: &Path, n: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    let mut rng = TestRng::new(seed);
    let mut files = BTreeMap::new();
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for i in 0..n {
        // Distinct names per seed, so that two batches can share a tree.
        let name = match i % 3 {
            0 => format!("file-{seed:x}-{i}.html"),
            1 => format!("sub/file-{seed:x}-{i}.bin"),
            _ => format!("sub/deeper/file-{seed:x}-{i}.txt"),
        };
        let len = match rng.below(4) {
            0 => rng.below(64) as usize,
            1 => 4096,
            2 => rng.below(300_000) as usize,
            _ => 16384 * 3 + 7,
        };
        let data = rng.bytes(len);
        let mut f = std::fs::File::create(root.join(&name)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        files.insert(name, data);
    }
    // The directories' entries are made durable too.
    for d in ["", "sub", "sub/deeper"] {
        std::fs::File::open(root.join(d))
            .unwrap()
            .sync_all()
            .unwrap();
    }
    files
}

pub(crate) fn assert_files(root: &Path, files: &BTreeMap<String, Vec<u8>>, who: &str) {
    for (name, want) in files {
        let got = std::fs::read(root.join(name))
            .unwrap_or_else(|e| panic!("{who}: {name} is missing after failover: {e}"));
        assert!(
            got == *want,
            "{who}: {name} differs after failover ({} bytes, expected {})",
            got.len(),
            want.len()
        );
    }
}

fn seq(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// The promise of protocol C: every fsync-acknowledged file survives the
/// primary's sudden death (processes killed, links down), and the secondary,
/// promoted by hand, serves it byte-exact.
fn fsynced_files_survive_the_primary_s_death(protocol: &str) {
    let mut pair = Pair::new(
        &format!("kill{}", protocol.to_lowercase()),
        &format!("protocol = \"{protocol}\""),
    );
    pair.start(Node::A);
    pair.start(Node::B);
    pair.wait_connected();
    pair.promote(Node::A);
    pair.wait_status(Node::A, "connected as primary", LONG, |s| {
        s["role"] == "Primary" && s["connection"] == "Connected"
    });

    let files = write_fsynced_files(&pair.node(Node::A).mnt(), 60, 0x7a11_0c00);

    // Under C and B, nothing fsynced is held back: the peer has applied all of it.
    let a = pair.status(Node::A);
    let b = pair.status(Node::B);
    assert_eq!(a["role"], "Primary");
    assert_eq!(b["role"], "Secondary");
    assert!(
        seq(&b, "applied_seq") >= seq(&a, "committed_seq"),
        "the secondary is behind what the primary acknowledged:\nA: {a:#}\nB: {b:#}"
    );

    pair.kill(Node::A);
    // The secondary notices (deadtime 2 s) and may then be promoted.
    pair.wait_status(Node::B, "primary seen dead", LONG, |s| {
        s["connection"] != "Connected"
    });
    pair.promote(Node::B);
    assert_files(&pair.node(Node::B).mnt(), &files, "beta");
    let b = pair.status(Node::B);
    assert_eq!(b["role"], "Primary", "{b:#}");
    assert_eq!(b["disk"], "UpToDate", "{b:#}");

    // The new primary takes writes alone (degraded: its peer is dead).
    std::fs::write(pair.node(Node::B).mnt().join("after.txt"), b"new primary").unwrap();
    let status = pair.stop(Node::B).expect("beta stops on SIGTERM");
    assert!(
        status.success(),
        "beta exit: {status:?}\n{}",
        pair.node(Node::B).log_text()
    );
    let out = crate::harness::util::run_twinfs(&[
        "verify",
        "--data-dir",
        pair.node(Node::B).data().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "verify beta: {out:?}");
}

#[test]
fn protocol_c_fsynced_files_survive_the_primary_s_death() {
    if !require("protocol_c_fsynced_files_survive_the_primary_s_death") {
        return;
    }
    fsynced_files_survive_the_primary_s_death("C");
}

#[test]
fn protocol_b_fsynced_files_survive_the_primary_s_death() {
    if !require("protocol_b_fsynced_files_survive_the_primary_s_death") {
        return;
    }
    fsynced_files_survive_the_primary_s_death("B");
}

/// Protocol A promises less: writes and fsyncs return on the local store
/// alone (a frozen peer does not hold them up), and the peer follows; once the
/// status shows no lag, the peer holds everything.
#[test]
fn protocol_a_does_not_wait_for_the_peer_and_the_peer_follows() {
    if !require("protocol_a_does_not_wait_for_the_peer_and_the_peer_follows") {
        return;
    }
    let mut pair = Pair::new("proto-a", "protocol = \"A\"");
    pair.start(Node::A);
    pair.start(Node::B);
    pair.wait_connected();
    pair.promote(Node::A);
    pair.wait_status(Node::A, "connected as primary", LONG, |s| {
        s["connection"] == "Connected"
    });
    // Freeze the secondary: it receives nothing and acknowledges nothing.
    let b_pid = pair.node_pid(Node::B);
    crate::harness::pair::signal(b_pid, libc::SIGSTOP);
    let mnt = pair.node(Node::A).mnt();
    let files = write_fsynced_files(&mnt, 20, 0xa);
    // The writes returned before the peer was declared lost: they did not wait for it.
    let a = pair.status(Node::A);
    assert_eq!(
        a["counters"]["peer_losses"], 0,
        "protocol A waited for the frozen peer:\n{a:#}"
    );
    assert_eq!(a["connection"], "Connected", "{a:#}");
    crate::harness::pair::signal(b_pid, libc::SIGCONT);
    // The peer follows: the lag drains to zero.
    pair.wait_status(Node::A, "lag drained", LONG, |s| {
        s["lag"]["seqs"] == 0 && s["peer"]["applied_seq"] == s["applied_seq"]
    });
    pair.kill(Node::A);
    pair.wait_status(Node::B, "primary seen dead", LONG, |s| {
        s["connection"] != "Connected"
    });
    pair.promote(Node::B);
    assert_files(&pair.node(Node::B).mnt(), &files, "beta");
}

/// A peer whose certificate is not the pinned one is refused, and the refusing
/// node's log names the peer's address and the reason.
#[test]
fn a_peer_with_the_wrong_certificate_is_refused() {
    if !require("a_peer_with_the_wrong_certificate_is_refused") {
        return;
    }
    let mut pair = Pair::new("wrongcert", "");
    // Beta pins a certificate that is not alpha's.
    let stranger = pair.node(Node::B).data().join("../stranger.crt");
    let stranger_key = pair.node(Node::B).data().join("../stranger.key");
    let out = crate::harness::util::run_twinfs(&[
        "keygen",
        "--name",
        "mallory",
        "--cert",
        stranger.to_str().unwrap(),
        "--key",
        stranger_key.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    pair.write_config(Node::B, &stranger, "");
    pair.start(Node::A);
    pair.start(Node::B);
    let a_addr = pair.lab.node(Node::A).addr().to_string();
    // Alpha (10.201.x.1) dials beta; beta refuses and says who and why.
    let logged = crate::harness::util::poll_until(LONG, || {
        let log = pair.node(Node::B).log_text();
        log.lines()
            .find(|l| l.contains("refused") && l.contains(&a_addr))
            .map(str::to_owned)
    });
    let line = logged.unwrap_or_else(|| {
        panic!(
            "beta never logged a refusal naming {a_addr}; log:\n{}",
            pair.node(Node::B).log_text()
        )
    });
    assert!(
        line.contains("not the pinned peer certificate"),
        "the refusal does not say why: {line}"
    );
    // And neither side believes it is connected.
    for node in [Node::A, Node::B] {
        let s = pair.status(node);
        assert_ne!(s["connection"], "Connected", "{s:#}");
    }
}

/// Garbage on the stream from a peer that passed the TLS check (it holds the
/// pinned key) is refused with an error naming the peer and the reason; the
/// connection is closed; the node lives on and the real peer connects after.
#[test]
fn garbage_from_an_authenticated_peer_closes_the_connection_and_the_node_lives_on() {
    if !require("garbage_from_an_authenticated_peer_closes_the_connection_and_the_node_lives_on") {
        return;
    }
    let mut pair = Pair::new("garbage", "");
    pair.start(Node::B);
    let rogue = RogueAlpha::new(&pair);
    let a_ip = pair.lab.node(Node::A).addr();
    let mut wrong_version = Vec::new();
    twinfs_replicator_proto::Frame::Heartbeat { now_ms: 1 }.encode(&mut wrong_version);
    let mut unknown_type = wrong_version.clone();
    wrong_version[4] = 99;
    unknown_type[5] = 200;
    let huge = b"TWRP\x01\x04\xff\xff\xff\xff".to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not our protocol",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("wrong version", wrong_version),
        ("unknown type", unknown_type),
        ("oversized length", huge),
    ];
    let reasons = in_alpha(&pair, async {
        let mut reasons = Vec::new();
        for (what, garbage) in &cases {
            let (ep, conn) = rogue.connect().await?;
            let (mut send, _recv) = conn.open_bi().await.map_err(std::io::Error::other)?;
            send.write_all(garbage)
                .await
                .map_err(std::io::Error::other)?;
            let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
            reasons.push(format!("{what}: {closed:?}"));
            ep.close(0u32.into(), b"done");
        }
        Ok(reasons)
    });
    for r in &reasons {
        eprintln!("{r}");
        assert!(
            r.contains("bad frame"),
            "beta did not close with a reason: {r}"
        );
    }
    let log = pair.node(Node::B).log_text();
    let a_str = a_ip.to_string();
    let refusals = log
        .lines()
        .filter(|l| {
            l.contains("closing the connection") && l.contains(&a_str) && l.contains("bad frame")
        })
        .count();
    assert!(
        refusals >= cases.len(),
        "beta's log does not name the peer and the reason:\n{log}"
    );
    // Alive, and the real alpha gets in.
    assert_ne!(
        pair.status(Node::B),
        serde_json::Value::Null,
        "beta stopped answering"
    );
    pair.start(Node::A);
    pair.wait_connected();
}

/// Alpha's identity and addresses, for a test that plays a rogue alpha (a
/// peer with a valid certificate) against beta, and the runtime to do it in,
/// inside alpha's namespace.
struct RogueAlpha {
    identity: twinfs_replicator::tls::Identity,
    trust: twinfs_replicator::tls::PeerTrust,
    listen: std::net::SocketAddr,
    beta: std::net::SocketAddr,
}

impl RogueAlpha {
    fn new(pair: &Pair) -> RogueAlpha {
        let a = pair.node(Node::A);
        RogueAlpha {
            identity: twinfs_replicator::tls::Identity::load(&a.cert(), &a.key()).unwrap(),
            trust: twinfs_replicator::tls::PeerTrust::from_cert_file(&pair.node(Node::B).cert())
                .unwrap(),
            listen: std::net::SocketAddr::new(pair.lab.node(Node::A).addr(), 0),
            beta: std::net::SocketAddr::new(
                pair.lab.node(Node::B).addr(),
                crate::harness::pair::PORT,
            ),
        }
    }

    /// A connection to beta with alpha's certificate.
    async fn connect(&self) -> std::io::Result<(quinn::Endpoint, quinn::Connection)> {
        use twinfs_replicator::transport::{self, TransportOptions};
        let ep = transport::endpoint(
            self.listen,
            &self.identity,
            &self.trust,
            &TransportOptions::default(),
        )
        .map_err(std::io::Error::other)?;
        let conn = transport::connect(&ep, self.beta)
            .await
            .map_err(std::io::Error::other)?;
        Ok((ep, conn))
    }
}

/// Runs `f` on a current-thread runtime inside alpha's namespace.
fn in_alpha<T: Send>(
    pair: &Pair,
    f: impl std::future::Future<Output = std::io::Result<T>> + Send,
) -> T {
    crate::harness::lab::in_netns(pair.lab.node(Node::A).netns_path(), || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(f)
    })
    .unwrap()
}

/// A peer with a valid certificate is still held to the protocol's order: a
/// report (a split brain's file list) before its hello is refused, and the
/// node lives on for the real peer.
#[test]
fn a_report_before_the_hello_is_refused() {
    if !require("a_report_before_the_hello_is_refused") {
        return;
    }
    use twinfs_replicator::transport::FrameStream;
    let mut pair = Pair::new("report-first", "");
    pair.start(Node::B);
    let rogue = RogueAlpha::new(&pair);
    in_alpha(&pair, async {
        let (ep, conn) = rogue.connect().await?;
        let mut s = FrameStream::open(&conn)
            .await
            .map_err(std::io::Error::other)?;
        let report = br#"{"node":"alpha","changed_files":["/forged"]}"#.to_vec();
        s.send(&twinfs_replicator_proto::Frame::Report { payload: report })
            .await
            .map_err(std::io::Error::other)?;
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        ep.close(0u32.into(), b"done");
        Ok(())
    });
    let log = pair.node(Node::B).log_text();
    assert!(
        log.contains("the peer sent a report frame before its hello"),
        "beta's log does not show the refusal:\n{log}"
    );
    let sb = pair.status(Node::B);
    assert!(
        sb["split_brain"].is_null(),
        "a forged report was taken: {sb:#}"
    );
    pair.start(Node::A);
    pair.wait_connected();
}

/// A hello from a rogue alpha that beta accepts: two secondaries, nothing to do.
fn rogue_hello() -> twinfs_replicator_proto::Frame {
    use twinfs_replicator_proto::{DiskState, Generation, Hello, Role, Seq, PROTOCOL_VERSION};
    twinfs_replicator_proto::Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: "alpha".into(),
        generation: Generation(1),
        last_applied: Seq(0),
        role: Role::Secondary,
        disk: DiskState::UpToDate,
        shared: Generation(1),
        changed_blocks: 0,
        primary_since_ms: 0,
        floor: Seq(0),
    })
}

/// Plays a rogue alpha that says hello and then sends `frames` in one write;
/// waits (at most 10 s) for beta to close the connection.
fn rogue_session(pair: &Pair, frames: Vec<twinfs_replicator_proto::Frame>) {
    use twinfs_replicator::transport::FrameStream;
    let rogue = RogueAlpha::new(pair);
    in_alpha(pair, async {
        let (ep, conn) = rogue.connect().await?;
        let mut s = FrameStream::open(&conn)
            .await
            .map_err(std::io::Error::other)?;
        s.send(&rogue_hello())
            .await
            .map_err(std::io::Error::other)?;
        // Beta's hello: the handshake is done before the rest goes out.
        let _ = tokio::time::timeout(Duration::from_secs(10), s.recv()).await;
        s.send_many(frames).await.map_err(std::io::Error::other)?;
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
        ep.close(0u32.into(), b"done");
        Ok(())
    });
}

/// Issue 13: repair values answer an online verify; a peer with a valid
/// certificate that sends them without one is refused (nothing applied), and
/// beta lives on for the real alpha.
#[test]
fn a_repair_without_a_running_verify_is_refused() {
    if !require("a_repair_without_a_running_verify_is_refused") {
        return;
    }
    let mut pair = Pair::new("repair-unasked", "");
    pair.start(Node::B);
    let repair = twinfs_replicator_proto::Frame::Repair {
        payload: b"not asked for".to_vec(),
    };
    rogue_session(&pair, vec![repair]);
    let log = pair.node(Node::B).log_text();
    assert!(
        log.contains("the peer sent repair data without a running online verify"),
        "beta's log does not show the refusal:\n{log}"
    );
    assert!(
        !log.contains("bytes of repairs"),
        "beta applied the repair:\n{log}"
    );
    pair.start(Node::A);
    pair.wait_connected();
}

/// Issue 13: a secondary answers one online verify request at a time; a flood
/// of them from a peer with a valid certificate is refused after the first,
/// and beta lives on for the real alpha.
#[test]
fn a_flood_of_verify_requests_is_refused() {
    if !require("a_flood_of_verify_requests_is_refused") {
        return;
    }
    let mut pair = Pair::new("verify-flood", "");
    pair.start(Node::B);
    // A valid request (postcard): id 1, one range from the empty key, its hash.
    let mut payload = vec![1, 1, 0, 1];
    payload.extend_from_slice(&[0; 32]);
    let flood = (0..20)
        .map(|_| twinfs_replicator_proto::Frame::VerifyRequest {
            payload: payload.clone(),
        })
        .collect();
    rogue_session(&pair, flood);
    let log = pair.node(Node::B).log_text();
    assert!(
        log.contains(
            "the peer sent a verify request while the previous one is still being answered"
        ),
        "beta's log does not show the refusal:\n{log}"
    );
    pair.start(Node::A);
    pair.wait_connected();
}

/// Issue 13: a resync target reports the records it changed in chunks; one
/// that reports without end (here a rogue alpha with 600,000 keys) makes the
/// source stop collecting at its bound and ship everything instead, and the
/// real alpha is resynced afterwards.
#[test]
fn a_target_that_lists_changes_without_end_gets_a_full_resync() {
    if !require("a_target_that_lists_changes_without_end_gets_a_full_resync") {
        return;
    }
    use twinfs_replicator::transport::FrameStream;
    use twinfs_replicator_proto::{
        DiskState, Frame, Generation, Hello, Role, Seq, PROTOCOL_VERSION,
    };
    let mut pair = Pair::new("keys-flood", "");
    pair.start(Node::A);
    pair.start(Node::B);
    pair.wait_connected();
    pair.promote(Node::B);
    pair.wait_in_sync(Node::B);
    let a = pair.status(Node::A);
    let generation =
        |field: &str| Generation(u64::from_str_radix(a[field].as_str().unwrap(), 16).unwrap());
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: "alpha".into(),
        generation: generation("generation"),
        last_applied: Seq(a["applied_seq"].as_u64().unwrap()),
        role: Role::Secondary,
        disk: DiskState::UpToDate,
        shared: generation("shared_generation"),
        changed_blocks: 0,
        primary_since_ms: 0,
        floor: Seq(a["floor_seq"].as_u64().unwrap()),
    });
    pair.stop(Node::A);
    write_fsynced_files(&pair.node(Node::B).mnt(), 5, 13);
    let rogue = RogueAlpha::new(&pair);
    let chunk = |n: u64| {
        let keys: Vec<twinfs_fs::StoreKey> = (0..20_000)
            .map(|i| twinfs_fs::StoreKey::Block(twinfs_fs::Ino(1_000 + n), i))
            .collect();
        postcard::to_allocvec(&keys).unwrap()
    };
    let asked = in_alpha(&pair, async {
        let (ep, conn) = rogue.connect().await?;
        let mut s = FrameStream::open(&conn)
            .await
            .map_err(std::io::Error::other)?;
        s.send(&hello).await.map_err(std::io::Error::other)?;
        let mut asked = false;
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_secs(10), s.recv()).await {
                Ok(Ok(Some(Frame::ResyncRequest { .. }))) => {
                    asked = true;
                    break;
                }
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
        if asked {
            let mut frames: Vec<Frame> = (0..30)
                .map(|n| Frame::ResyncKeys {
                    last: false,
                    known: true,
                    payload: chunk(n),
                })
                .collect();
            frames.push(Frame::ResyncKeys {
                last: true,
                known: true,
                payload: chunk(30),
            });
            s.send_many(frames).await.map_err(std::io::Error::other)?;
            // Beta plans and starts shipping; take a little of it.
            for _ in 0..1000 {
                match tokio::time::timeout(Duration::from_secs(10), s.recv()).await {
                    Ok(Ok(Some(Frame::ResyncData { .. }))) => break,
                    Ok(Ok(Some(_))) => {}
                    _ => break,
                }
            }
        }
        ep.close(0u32.into(), b"done");
        Ok(asked)
    });
    assert!(
        asked,
        "beta never asked the rogue alpha for its changes:\n{}",
        pair.node(Node::B).log_text()
    );
    let log = pair.node(Node::B).log_text();
    assert!(
        log.contains("shipping everything instead"),
        "beta did not stop collecting the rogue's keys:\n{log}"
    );
    pair.start(Node::A);
    pair.wait_in_sync(Node::B);
}

/// Local users cannot command the node: the data dir is private (0700), and
/// even with it and the socket opened up by hand, the control socket serves
/// only root (peer credentials).
#[test]
fn a_non_root_user_cannot_use_the_control_socket() {
    if !require("a_non_root_user_cannot_use_the_control_socket") {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mut pair = Pair::new("nonroot", "");
    pair.start(Node::B);
    let b = pair.node(Node::B);
    let data = b.data();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data dir must be private");
    // Open the way by hand: only the credential check stands.
    let top = data.parent().unwrap();
    let old_top = mode(top);
    for (p, m) in [(top, 0o711), (data.as_path(), 0o711)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let sock = data.join("control.sock");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = crate::harness::util::run_bounded(
        {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(crate::harness::util::twinfs_bin())
                .args(["status", "--json", "--data-dir"])
                .arg(&data);
            c
        },
        Duration::from_secs(30),
    );
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(old_top)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = out.expect("setpriv twinfs status");
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "uid 65534 got an answer: {out:?}"
    );
    let log = pair.node(Node::B).log_text();
    assert!(
        log.contains("refused a client running as uid 65534"),
        "beta's log does not show the refusal:\n{log}"
    );
    // Root still gets its answer.
    assert_eq!(pair.status(Node::B)["role"], "Secondary");
}

/// A promotion whose mount cannot come up is undone: the command fails with the
/// reason and the node stays secondary.
#[test]
fn a_promotion_that_cannot_mount_is_undone() {
    if !require("a_promotion_that_cannot_mount_is_undone") {
        return;
    }
    let mut pair = Pair::new("badmount", "");
    pair.start(Node::A);
    let mnt = pair.node(Node::A).mnt();
    // Something else is mounted there already.
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let out = pair.twinfs(Node::A, &["promote"]);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "promoted onto a busy mountpoint");
    assert!(
        err.contains("busy") && err.contains(mnt.to_str().unwrap()),
        "{err}"
    );
    let s = pair.status(Node::A);
    assert_eq!(s["role"], "Secondary", "{s:#}");
    // With the mountpoint free, the promotion works and answers once mounted.
    pair.promote(Node::A);
    assert_eq!(pair.status(Node::A)["role"], "Primary");
}

/// A killed daemon leaves its FUSE mount dead ("Transport endpoint is not
/// connected"). The next `twinfs run` (systemd's restart) removes it, so that
/// the node can be promoted and mount again.
#[test]
fn restart_after_a_kill_clears_the_dead_mount() {
    if !require("restart_after_a_kill_clears_the_dead_mount") {
        return;
    }
    let mut pair = Pair::connected("deadmount", "");
    let mnt = pair.node(Node::A).mnt();
    std::fs::write(mnt.join("before.txt"), b"kept").unwrap();
    crate::harness::pair::signal(pair.node_pid(Node::A), libc::SIGKILL);
    pair.forget(Node::A);
    let dead = std::fs::metadata(&mnt).map_err(|e| e.raw_os_error());
    assert_eq!(
        dead.err(),
        Some(Some(libc::ENOTCONN)),
        "the mount should be dead"
    );
    pair.start(Node::A);
    assert!(
        pair.node(Node::A)
            .log_text()
            .contains("removed the dead twinfs mount a crashed daemon left at"),
        "{}",
        pair.node(Node::A).log_text()
    );
    pair.wait_status(Node::A, "connected again", Duration::from_secs(60), |s| {
        s["connection"] == "Connected"
    });
    // The peer is primary-less; promote alpha again: it mounts.
    pair.promote(Node::A);
    assert_eq!(std::fs::read(mnt.join("before.txt")).unwrap(), b"kept");
}

/// `twinfs status` shows the link as QUIC measures it, and the replication
/// link uses jumbo frames where the link has them: datagrams of at most 1472
/// bytes (IPv4) on a 1500-byte veth, 6500 once both ends are set to MTU 9000.
#[test]
fn status_shows_the_link_and_jumbo_frames_are_used() {
    if !require("status_shows_the_link_and_jumbo_frames_are_used") {
        return;
    }
    for (mtu, expect) in [(1500, 1400..=1472), (9000, 6500..=6500)] {
        let mut pair = Pair::new(&format!("mtu{mtu}"), "");
        for node in [Node::A, Node::B] {
            let n = pair.lab.node(node);
            let mtu = mtu.to_string();
            crate::harness::lab::ip(&[
                "-n",
                n.ns_name(),
                "link",
                "set",
                n.private_dev(),
                "mtu",
                &mtu,
            ])
            .unwrap();
        }
        pair.start(Node::A);
        pair.start(Node::B);
        pair.wait_connected();
        pair.promote(Node::A);
        pair.wait_in_sync(Node::A);
        // Some data, so that the path is busy while discovery probes it.
        let f = pair.node(Node::A).mnt().join(format!("data-{mtu}"));
        std::fs::write(&f, vec![0x5a; 4 << 20]).unwrap();
        let s = pair.wait_status(Node::A, "path MTU discovered", LONG, |s| {
            s["peer"]["link"]["path_mtu"]
                .as_u64()
                .is_some_and(|m| expect.contains(&m))
        });
        let link = &s["peer"]["link"];
        assert!(link["rtt_us"].as_u64().unwrap() > 0, "{s:#}");
        assert!(link["sent_packets"].as_u64().unwrap() > 0, "{s:#}");
        let human = pair.twinfs(Node::A, &["status"]);
        let human = String::from_utf8_lossy(&human.stdout);
        // Discovery may still be moving within the range: read the number.
        let shown: Option<u64> = human
            .split("datagrams of ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok());
        assert!(shown.is_some_and(|m| expect.contains(&m)), "{human}");
    }
}
