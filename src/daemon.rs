//! `twinfs run` (the replicated node), `keygen`, `fingerprint`, and the control
//! commands `status`, `promote`, `demote`.
//!
//! The node runtime lives in `twinfs-replicator`; this module wires it to the
//! config and to the FUSE mount: [`FuseMounter`] mounts the filesystem when the
//! node becomes primary and unmounts it when it stops being primary.

use crate::config::{
    Config, OnPeerLossName, PeerTrustConfig, ProtocolName, ReplicationConfig, SplitBrainName,
};
use crate::UsageError;
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use twinfs_fs::fuse::{FuseFs, FuseOptions};
use twinfs_fs::ops::Fs;
use twinfs_fs::store::{Checkpointer, DiskStore};
use twinfs_replicator::control::{self, Request, Response};
use twinfs_replicator::node::{self, MountReady, Mounter, NodeOptions};
use twinfs_replicator::store::ReplicatedStore;
use twinfs_replicator::tls::{self, Identity, PeerTrust};
use twinfs_replicator_proto::{OnPeerLoss, Protocol, ProtocolConfig, SplitBrainPolicy};

fn replication(cfg: &Config, path: Option<&Path>) -> anyhow::Result<ReplicationConfig> {
    cfg.replication.clone().ok_or_else(|| {
        UsageError(format!(
            "{}: no [replication] table: `twinfs run` needs the peer's address and certificate \
             (for a single node without replication, use `twinfs mount`)",
            path.map_or_else(|| "config".into(), |p| p.display().to_string())
        ))
        .into()
    })
}

/// `twinfs run`: the replicated node, in the foreground until SIGTERM/SIGINT.
pub(crate) fn run(cfg: &Config, config_path: Option<&Path>) -> anyhow::Result<()> {
    let r = replication(cfg, config_path)?;
    let data_dir = &cfg.node.data_dir;
    crate::mount::preflight_data_dir(data_dir)?;
    let identity = Identity::load(&r.cert, &r.key).map_err(|e| UsageError(e.to_string()))?;
    let trust = match &r.peer_trust {
        PeerTrustConfig::CertFile(p) => PeerTrust::from_cert_file(p),
        PeerTrustConfig::Fingerprint(f) => PeerTrust::from_fingerprint(f),
    }
    .map_err(|e| UsageError(e.to_string()))?;
    let protocol = ProtocolConfig {
        protocol: match r.protocol {
            ProtocolName::A => Protocol::A,
            ProtocolName::B => Protocol::B,
            ProtocolName::C => Protocol::C,
        },
        keepalive: r.keepalive,
        deadtime: r.deadtime,
        on_peer_loss: match r.on_peer_loss {
            OnPeerLossName::Continue => OnPeerLoss::Continue,
            OnPeerLossName::Suspend => OnPeerLoss::Suspend,
        },
        ..ProtocolConfig::default()
    };
    protocol
        .validate()
        .map_err(|e| UsageError(format!("[replication]: {e}")))?;
    let split_brain = match r.split_brain {
        SplitBrainName::Disconnect => SplitBrainPolicy::Manual,
        SplitBrainName::DiscardZeroChanges => SplitBrainPolicy::DiscardZeroChanges,
        SplitBrainName::DiscardYoungerPrimary => SplitBrainPolicy::DiscardYoungerPrimary,
        SplitBrainName::DiscardLeastChanges => SplitBrainPolicy::DiscardLeastChanges,
    };
    let disk = Arc::new(
        DiskStore::open(data_dir)
            .with_context(|| format!("opening store {}", data_dir.display()))?,
    );
    let checkpointer = Checkpointer::spawn(disk.clone(), cfg.fs.checkpoint_interval);
    let mounter = FuseMounter {
        mountpoint: cfg.node.mountpoint.clone(),
        opts: FuseOptions {
            attr_timeout: cfg.fs.attr_timeout,
            writeback_cache: cfg.fs.writeback_cache,
            threads: cfg.fs.threads,
        },
        session: None,
    };
    let opts = NodeOptions {
        name: cfg.node.name.to_string(),
        data_dir: data_dir.clone(),
        listen: r.listen,
        peer: r.peer,
        identity,
        trust,
        protocol,
        split_brain,
        resync_rate: r.resync_rate,
    };
    // The supervisor starts first: a broken hook script or a port in use stops
    // the node before it joins the pair.
    let supervisor = match &cfg.failover {
        Some(f) => Some(crate::supervisor::start(cfg, &r, f)?),
        None => None,
    };
    let result = node::run(opts, disk.clone(), Box::new(mounter));
    drop(supervisor);
    drop(checkpointer);
    result?;
    disk.checkpoint().context("final checkpoint")?;
    Ok(())
}

/// A running FUSE session: its thread and the handle that unmounts it.
struct Session {
    thread: std::thread::JoinHandle<()>,
    unmounter: Arc<Mutex<Option<fuser::SessionUnmounter>>>,
}

/// Mounts the filesystem on promotion and unmounts it on demotion.
struct FuseMounter {
    mountpoint: PathBuf,
    opts: FuseOptions,
    session: Option<Session>,
}

impl Mounter for FuseMounter {
    fn mount(&mut self, store: Arc<ReplicatedStore>, ready: MountReady) -> anyhow::Result<()> {
        crate::mount::preflight_mountpoint(&self.mountpoint)?;
        let unmounter = Arc::new(Mutex::new(None));
        let slot = unmounter.clone();
        let mountpoint = self.mountpoint.clone();
        let opts = self.opts;
        // Loading the filesystem may commit a mutation (a new store's root), which
        // waits for the node task: so it happens here, not in the caller.
        let thread = std::thread::Builder::new()
            .name("twinfs-fuse".into())
            .spawn(move || {
                let mut ready = Some(ready);
                let served = (|| -> anyhow::Result<()> {
                    let fs = Arc::new(Fs::new(store, 0, 0).context("loading the filesystem")?);
                    let fuse = FuseFs::new(fs, opts);
                    let cfg = fuse.mount_config();
                    let mut session = fuser::Session::new(fuse, &mountpoint, &cfg)
                        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(session.unmount_callable());
                    tracing::info!(mountpoint = %mountpoint.display(), "mounted read-write");
                    if let Some(r) = ready.take() {
                        r(Ok(()));
                    }
                    session.run().context("serving FUSE requests")
                })();
                if let (Some(r), Err(e)) = (ready.take(), &served) {
                    r(Err(format!("{e:#}")));
                }
                match served {
                    Ok(()) => tracing::info!(mountpoint = %mountpoint.display(), "unmounted"),
                    Err(e) => tracing::error!("the mount failed: {e:#}"),
                }
            })?;
        self.session = Some(Session { thread, unmounter });
        Ok(())
    }

    fn unmount(&mut self) -> anyhow::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // The mount may still be coming up (its thread loads the filesystem first).
        for _ in 0..100 {
            if session.thread.is_finished()
                || session
                    .unmounter
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let taken = session
            .unmounter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut u) = taken {
            if let Err(e) = u.unmount() {
                // Busy: keep serving, say why.
                self.session = Some(Session {
                    thread: session.thread,
                    unmounter: Arc::new(Mutex::new(None)),
                });
                bail!(
                    "{} is busy ({e}); stop what uses it (Apache?) first",
                    self.mountpoint.display()
                );
            }
        }
        let _ = session.thread.join();
        Ok(())
    }
}

/// `twinfs keygen`: writes a new key and self-signed certificate, prints the fingerprint.
pub(crate) fn keygen(name: &str, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let generated = tls::generate(name)?;
    tls::write_identity(&generated, cert, key).map_err(|e| UsageError(e.to_string()))?;
    println!("certificate: {}", cert.display());
    println!("key:         {} (mode 0600; never copy it)", key.display());
    println!("fingerprint: {}", generated.fingerprint);
    println!();
    println!("On the peer, pin this certificate in [replication]: either copy the");
    println!("certificate file and set peer_cert, or set");
    println!("  peer_fingerprint = \"{}\"", generated.fingerprint);
    Ok(())
}

/// `twinfs fingerprint CERT`.
pub(crate) fn fingerprint(cert: &Path) -> anyhow::Result<()> {
    let trust = PeerTrust::from_cert_file(cert).map_err(|e| UsageError(e.to_string()))?;
    println!("{}", trust.fingerprint());
    Ok(())
}

/// `twinfs status|promote|demote`: one request to the running daemon.
pub(crate) fn control(data_dir: &Path, req: Request, json: bool) -> anyhow::Result<ExitCode> {
    let timeout = match req {
        Request::Status => Duration::from_secs(5),
        // Demotion waits for the unmount; promotion for the mount to start.
        Request::Promote | Request::Demote | Request::DiscardMyData => Duration::from_secs(120),
        // Reads every block on both nodes.
        Request::Verify { .. } => Duration::from_secs(3600),
    };
    match control::call(data_dir, &req, timeout)? {
        Response::Status(s) => {
            let failover = crate::supervisor::read_status(data_dir);
            if json {
                let mut v = serde_json::to_value(&s)?;
                if let (Some(f), Some(obj)) = (&failover, v.as_object_mut()) {
                    obj.insert("failover".into(), serde_json::to_value(f)?);
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", s.human());
                if let Some(f) = &failover {
                    print!("{}", f.human());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Done(line) => {
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error(reason) => {
            eprintln!("twinfs: {reason}");
            Ok(ExitCode::from(1))
        }
    }
}
