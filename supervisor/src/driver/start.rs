//! Starting the supervisor: every check that can fail (the hook script, the
//! certificates, the sockets) runs here, before the node joins the pair,
//! then the threads start.

use super::admin_socket;
use super::probes::{spawn_pinger, spawn_witness, Probes};
use super::{socket_path, Driver, NodeLink, StatusBoard, SupervisorConfig, SystemClock};
use crate::actuators::{System, SystemOptions};
use crate::hooks::{Hook, HookContext, HookLimits, HookRuntime};
use crate::machine::Machine;
use crate::witness::{
    Announce, Beacon, BeaconConfig, DiskState, PublicKey, Role, Signer, SigningKey, WitnessClient,
    WitnessClientConfig,
};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twinfs_replicator::evidence::EvidenceBoard;
use twinfs_replicator::node::NodeHandle;

/// The running supervisor; dropping it stops it.
pub struct SupervisorHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    socket: PathBuf,
    pre_unmount: PreUnmount,
    board: StatusBoard,
}

impl SupervisorHandle {
    /// What the mounter calls before it unmounts.
    pub fn pre_unmount(&self) -> PreUnmount {
        self.pre_unmount.clone()
    }

    /// The supervisor's latest status, for the other parts of this process.
    pub fn status_board(&self) -> StatusBoard {
        self.board.clone()
    }
}

/// Lets the FUSE mounter ask the supervisor to run `on_demote` (stop Apache,
/// release the VIP) before the unmount at shutdown (SIGTERM/SIGINT):
/// otherwise Apache keeps the mount busy and a crash-like state is left
/// behind (the VIP held, Apache on a dead mount) that would make the peer's
/// claim of the VIP fail.
#[derive(Clone)]
pub struct PreUnmount {
    /// Set by SIGTERM/SIGINT.
    shutting_down: Arc<AtomicBool>,
    /// Set while the supervisor's own demotion runs (it ran on_demote already).
    demoting: Arc<AtomicBool>,
    tx: mpsc::Sender<mpsc::Sender<()>>,
    timeout: Duration,
}

impl PreUnmount {
    /// At shutdown, runs `on_demote` on the supervisor thread and waits for it
    /// (bounded by the hook timeout); otherwise does nothing.
    pub fn before_shutdown_unmount(&self) {
        if !self.shutting_down.load(Ordering::SeqCst) || self.demoting.load(Ordering::SeqCst) {
            return;
        }
        let (tx, rx) = mpsc::channel();
        if self.tx.send(tx).is_ok() {
            let _ = rx.recv_timeout(self.timeout);
        }
    }
}

impl Drop for SupervisorHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Why the supervisor did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Something the admin configured is wrong: the script, a certificate,
    /// an address (the message names the file, line or address).
    #[error("{0}")]
    Config(String),
    /// The system refused a thread or a signal handler.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Checks everything and starts the supervisor thread. Errors here (a broken
/// hook script, an unreadable certificate, a port in use) stop `twinfs run`
/// before the node starts, with the file, line or address in the message.
pub fn start(
    cfg: &SupervisorConfig,
    evidence: Arc<EvidenceBoard>,
    node: NodeHandle,
) -> Result<SupervisorHandle, StartError> {
    let bad = StartError::Config;
    let name = cfg.name.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();

    // The actions hooks may take, and the hooks.
    let system = Arc::new(System::new(SystemOptions {
        services: cfg.services.clone(),
        arp_probe: cfg.arp_probe,
        ..SystemOptions::default()
    }));
    let hooks = HookRuntime::load(
        &cfg.script,
        HookContext::new(name.clone(), cfg.hook_vars.clone()),
        system,
        HookLimits {
            time: cfg.hook_timeout,
            ..HookLimits::default()
        },
    )
    .map_err(|e| bad(format!("[failover] script: {e}")))?;

    // Signed datagrams: the beacon and the witness verify with pinned certificates.
    let needs_keys = cfg.beacon.is_some() || cfg.witness.is_some();
    let signer = if needs_keys {
        let key = SigningKey::from_pem_file(&cfg.key).map_err(|e| bad(e.to_string()))?;
        Some(Arc::new(
            Signer::new(&name, key).map_err(|e| bad(e.to_string()))?,
        ))
    } else {
        None
    };
    let beacon = match (&cfg.beacon, &signer) {
        (Some(b), Some(signer)) => {
            let Some(peer_cert) = &cfg.peer_cert else {
                return Err(bad(
                    "failover.public: the beacon verifies the peer's signatures with its \
                     certificate, so [replication] must pin the peer with peer_cert (a \
                     fingerprint alone carries no key)"
                        .into(),
                ));
            };
            let peer_key =
                PublicKey::from_cert_pem_file(peer_cert).map_err(|e| bad(e.to_string()))?;
            let peer_name = PublicKey::node_name_from_cert_pem_file(peer_cert)
                .map_err(|e| bad(e.to_string()))?;
            let socket = UdpSocket::bind(b.listen)
                .map_err(|e| bad(format!("failover.public: cannot bind {}: {e}", b.listen)))?;
            let beacon = Beacon::start(
                socket,
                signer.clone(),
                BeaconConfig::new(&peer_name, peer_key, b.peer, cfg.keepalive),
                Announce {
                    role: Role::Secondary,
                    disk: DiskState::Outdated,
                    generation: 0,
                    link_up: false,
                    handover: false,
                    takeover: false,
                },
            )
            .map_err(|e| bad(format!("failover.public {}: {e}", b.listen)))?;
            Some(beacon)
        }
        _ => None,
    };

    let probes = Arc::new(Mutex::new(Probes::default()));
    let mut threads = Vec::new();
    if !cfg.ping.is_empty() {
        threads.push(spawn_pinger(
            cfg.ping.clone(),
            cfg.keepalive,
            cfg.deadtime,
            t0,
            probes.clone(),
            evidence.clone(),
            stop.clone(),
        ));
    }
    let want_lease = Arc::new(AtomicBool::new(false));
    let witness_tx = match (&cfg.witness, &signer) {
        (Some(w), Some(signer)) => {
            let key = PublicKey::from_cert_pem_file(&w.cert).map_err(|e| bad(e.to_string()))?;
            let wname =
                PublicKey::node_name_from_cert_pem_file(&w.cert).map_err(|e| bad(e.to_string()))?;
            let client = WitnessClient::new(
                signer.clone(),
                WitnessClientConfig::new(w.addr, &wname, key),
            )
            .map_err(|e| bad(format!("failover.witness {}: {e}", w.addr)))?;
            let (tx, rx) = mpsc::channel();
            threads.push(spawn_witness(
                client,
                name.clone(),
                cfg.keepalive,
                cfg.deadtime,
                rx,
                want_lease.clone(),
                probes.clone(),
                evidence.clone(),
                stop.clone(),
            ));
            Some(tx)
        }
        _ => None,
    };

    // The admin socket.
    let socket = socket_path(&cfg.data_dir);
    let listener = twinfs_replicator::control::bind_private(&socket)
        .map_err(|e| bad(format!("cannot listen on {}: {e}", socket.display())))?;
    let (admin_rx, admin_thread) = admin_socket::serve(listener, stop.clone())?;
    threads.push(admin_thread);

    let machine_cfg = cfg.machine_config(hooks.defined().contains(&Hook::Fence));
    let mut machine = Machine::new(machine_cfg, 0).map_err(|e| bad(format!("[failover]: {e}")))?;
    if cfg.manual {
        machine.set_maintenance(0, true);
    }

    let mut driver = Driver::new(
        Box::new(NodeLink::new(node)),
        Box::new(SystemClock),
        machine,
        hooks,
        cfg.data_dir.clone(),
        cfg.peer_address.clone(),
    );
    // The probes count their times from the same start.
    driver.t0 = t0;
    driver.beacon = beacon;
    driver.probes = probes;
    driver.witness_tx = witness_tx;
    driver.want_lease = want_lease;
    driver.stop = stop.clone();
    driver.admin_rx = Some(admin_rx);
    driver.has_witness = cfg.witness.is_some();
    driver.standby_serves = cfg.standby_serves;
    driver.escalation_command = cfg.escalation_command.clone();
    let board = driver.board.clone();
    let shutting_down = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutting_down.clone())?;
    }
    let (pre_tx, pre_rx) = mpsc::channel();
    let pre_unmount = PreUnmount {
        shutting_down,
        demoting: driver.demoting.clone(),
        tx: pre_tx,
        timeout: cfg.hook_timeout + Duration::from_secs(5),
    };
    driver.pre_unmount_rx = Some(pre_rx);
    driver.reconcile();
    let thread = std::thread::Builder::new()
        .name("supervisor".into())
        .spawn(move || {
            driver.run();
            drop(threads);
        })?;
    Ok(SupervisorHandle {
        stop,
        thread: Some(thread),
        socket,
        pre_unmount,
        board,
    })
}
