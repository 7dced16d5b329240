//! The node in-process, as the supervisor and the metrics use it: requests
//! through the typed `NodeHandle` and the event stream, on a real store and
//! a real QUIC endpoint (the peer never answers).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use twinfs_fs::DiskStore;
use twinfs_replicator::control::{Request, Response};
use twinfs_replicator::evidence::{EvidenceBoard, EvidenceSource};
use twinfs_replicator::node::{self, MountError, MountReady, Mounter, NodeEvent, NodeOptions};
use twinfs_replicator::store::ReplicatedStore;
use twinfs_replicator::tls::{self, Identity, PeerTrust};
use twinfs_replicator_proto::{ConnectionState, DiskState, ProtocolConfig, Role, SplitBrainPolicy};

/// Mounts nothing, at once.
struct NoMount;

impl Mounter for NoMount {
    fn mount(&mut self, _store: Arc<ReplicatedStore>, ready: MountReady) -> Result<(), MountError> {
        ready(Ok(()));
        Ok(())
    }
    fn unmount(&mut self) -> Result<(), MountError> {
        Ok(())
    }
}

fn free_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The next events until one `want` accepts, within 10 s.
fn wait_for(events: &node::NodeEvents, want: impl Fn(&NodeEvent) -> bool) -> Vec<NodeEvent> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(ev) => {
                let done = want(&ev);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("no such event ({e}); seen: {seen:?}"),
        }
    }
    panic!("no such event within 10 s; seen: {seen:?}");
}

#[test]
fn the_handle_promotes_and_demotes_and_the_event_stream_tells() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("a.crt"), dir.path().join("a.key"));
    tls::write_identity(&tls::generate("a").unwrap(), &cert, &key).unwrap();
    let peer = tls::generate("b").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let disk = Arc::new(DiskStore::open(&data).unwrap());
    let opts = NodeOptions {
        name: "a".into(),
        data_dir: data,
        listen: free_port(),
        peer: free_port(),
        identity: Identity::load(&cert, &key).unwrap(),
        trust: PeerTrust::from_fingerprint(&peer.fingerprint).unwrap(),
        protocol: ProtocolConfig::default(),
        split_brain: SplitBrainPolicy::Manual,
        resync_rate: 0,
        evidence: Arc::new(EvidenceBoard::new(EvidenceSource::Unguarded)),
        standby: None,
        view: twinfs_fs::view::View::new(twinfs_fs::view::Access::ReadWrite),
    };
    let (handle, inbox) = node::channel();
    // The node runs until the test process ends (it stops on a signal).
    std::thread::spawn(move || node::run(opts, disk, Box::new(NoMount), inbox));

    let events = handle.subscribe().unwrap();
    let first: Vec<_> = (0..3)
        .map(|_| events.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert_eq!(
        first,
        [
            NodeEvent::Role(Role::Secondary),
            NodeEvent::Disk(DiskState::UpToDate),
            NodeEvent::Connection(ConnectionState::Connecting),
        ],
        "a subscriber starts with the current states"
    );
    let status = handle.status(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (status.role, status.disk),
        (Role::Secondary, DiskState::UpToDate)
    );
    assert_eq!(status.schema, twinfs_replicator::status::STATUS_SCHEMA);

    match handle
        .call(Request::Promote, Duration::from_secs(30))
        .unwrap()
    {
        Response::Done(line) => assert!(line.contains("a is now primary"), "{line}"),
        other => panic!("promotion: {other:?}"),
    }
    let seen = wait_for(&events, |e| *e == NodeEvent::Role(Role::Primary));
    assert!(
        seen.iter()
            .any(|e| matches!(e, NodeEvent::Note(n) if n.starts_with("promoted to primary"))),
        "the note comes with it: {seen:?}"
    );
    assert_eq!(
        handle.status(Duration::from_secs(10)).unwrap().role,
        Role::Primary
    );

    // A second promotion is refused, with the reason, as a typed answer.
    match handle
        .call(Request::Promote, Duration::from_secs(10))
        .unwrap()
    {
        Response::Error(e) => assert_eq!(e, "this node is already primary"),
        other => panic!("second promotion: {other:?}"),
    }
    match handle
        .call(Request::Demote, Duration::from_secs(30))
        .unwrap()
    {
        Response::Done(line) => assert!(line.contains("a is now secondary"), "{line}"),
        other => panic!("demotion: {other:?}"),
    }
    wait_for(&events, |e| *e == NodeEvent::Role(Role::Secondary));
}
