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
use twinfs_fs::fuse::{FuseFs, FuseOptions, KernelCache};
use twinfs_fs::ops::Fs;
use twinfs_fs::store::{Checkpointer, DiskStore};
use twinfs_fs::view::{Access, View};
use twinfs_replicator::control::{self, Request, Response};
use twinfs_replicator::evidence::{EvidenceBoard, EvidenceSource};
use twinfs_replicator::node::{self, MountError, MountReady, Mounter, NodeOptions, StandbyView};
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
    let cfg = &with_default_ping(cfg);
    let r = replication(cfg, config_path)?;
    let data_dir = &cfg.node.data_dir;
    crate::mount::preflight_data_dir(data_dir)?;
    // A crashed daemon (or SIGKILL) leaves its FUSE mount dead; systemd's
    // restart would then fail at the next promotion.
    if crate::mount::clear_dead_mount(&cfg.node.mountpoint)? {
        tracing::warn!(
            "removed the dead twinfs mount a crashed daemon left at {}",
            cfg.node.mountpoint.display()
        );
    }
    let identity = Identity::load(&r.cert, &r.key).map_err(|e| UsageError(e.to_string()))?;
    let trust = match &r.peer_trust {
        PeerTrustConfig::CertFile(p) => PeerTrust::from_cert_file(p),
        PeerTrustConfig::Fingerprint(f) => PeerTrust::from_fingerprint(f),
    }
    .map_err(|e| UsageError(e.to_string()))?;
    // The right to acknowledge alone: which evidence counts (DURABILITY.md).
    let evidence_source = match &cfg.failover {
        Some(f) if f.witness.is_some() => EvidenceSource::Witness(
            f.witness
                .as_ref()
                .map(|w| w.addr.to_string())
                .unwrap_or_default(),
        ),
        Some(f) if !f.ping.is_empty() => EvidenceSource::Ping(
            f.ping
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => EvidenceSource::Unguarded,
    };
    if evidence_source == EvidenceSource::Unguarded && r.on_peer_loss == OnPeerLossName::Continue {
        tracing::warn!(
            "no witness and no ping target ([failover] witness or ping): a primary that loses \
             its peer continues alone, so a cut cable can cause a split brain"
        );
    }
    let evidence = Arc::new(EvidenceBoard::new(evidence_source.clone()));
    let protocol = ProtocolConfig {
        protocol: match r.protocol {
            ProtocolName::A => Protocol::A,
            ProtocolName::B => Protocol::B,
            ProtocolName::C => Protocol::C,
        },
        keepalive: r.keepalive,
        deadtime: r.deadtime,
        on_peer_loss: match r.on_peer_loss {
            OnPeerLossName::Continue if evidence_source == EvidenceSource::Unguarded => {
                OnPeerLoss::Continue
            }
            OnPeerLossName::Continue => OnPeerLoss::WithEvidence,
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
    // The supervisor starts first: a broken hook script or a port in use stops
    // the node before it joins the pair.
    let (node_handle, inbox) = node::channel();
    let supervisor = match &cfg.failover {
        Some(f) => Some(crate::supervisor::start(
            cfg,
            &r,
            f,
            evidence.clone(),
            node_handle.clone(),
        )?),
        None => None,
    };
    let view = View::new(Access::ReadWrite);
    let mounter = FuseMounter {
        pre_unmount: supervisor.as_ref().map(|s| s.pre_unmount()),
        mountpoint: cfg.node.mountpoint.clone(),
        opts: FuseOptions {
            attr_timeout: cfg.fs.attr_timeout,
            writeback_cache: cfg.fs.writeback_cache,
            threads: cfg.fs.threads,
            suid_dev: cfg.fs.suid_dev,
        },
        force: crate::unmount::ForceUnmount {
            enabled: cfg.fs.force_unmount,
            grace: cfg.fs.force_unmount_grace,
        },
        session: None,
        view: view.clone(),
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
        evidence,
        standby: cfg.standby.serve.then_some(cfg.standby.max_lag),
        view,
    };
    let metrics = cfg.metrics.listen.and_then(|addr| {
        let failover = supervisor.as_ref().map(|s| s.status_board());
        crate::metrics::start(addr, node_handle, failover)
    });
    let result = node::run(opts, disk.clone(), Box::new(mounter), inbox);
    drop(metrics);
    drop(supervisor);
    drop(checkpointer);
    result?;
    disk.checkpoint().context("final checkpoint")?;
    Ok(())
}

/// A `[failover]` table without a `ping` key and without a witness gets the
/// default gateway as its ping target (`ping = []` says "none"): without one,
/// a primary that loses its peer cannot tell a dead peer from its own
/// isolation (DURABILITY.md, "The right to acknowledge alone").
fn with_default_ping(cfg: &Config) -> Config {
    let mut cfg = cfg.clone();
    if let Some(f) = &mut cfg.failover {
        if f.ping_unset && f.ping.is_empty() && f.witness.is_none() {
            if let Some(gw) = crate::init::default_gateway() {
                tracing::info!(
                    "failover.ping is not set: using the default gateway {gw} as the ping target \
                     (ping = [] for none)"
                );
                f.ping = vec![gw.into()];
            }
        }
    }
    cfg
}

/// A running FUSE session: its thread, the handle that unmounts it, and the
/// filesystem it serves (once loaded).
struct Session {
    thread: std::thread::JoinHandle<()>,
    unmounter: Arc<Mutex<Option<fuser::SessionUnmounter>>>,
    fs: Arc<Mutex<Option<Arc<Fs<ReplicatedStore>>>>>,
}

/// Mounts the filesystem on promotion and unmounts it on demotion; with
/// `[standby] serve`, mounts it read-only while secondary and switches the
/// same mount between read-only and read-write in place.
struct FuseMounter {
    /// With a supervisor: at shutdown, stop Apache and release the VIP
    /// (`on_demote`) before unmounting, so that the mount is not busy.
    pre_unmount: Option<crate::supervisor::PreUnmount>,
    mountpoint: PathBuf,
    opts: FuseOptions,
    /// What a busy unmount may do to the mount's users.
    force: crate::unmount::ForceUnmount,
    session: Option<Session>,
    /// The mount's access, shared with the node's applier.
    view: Arc<View>,
}

impl Mounter for FuseMounter {
    fn mount(&mut self, store: Arc<ReplicatedStore>, ready: MountReady) -> Result<(), MountError> {
        match &self.session {
            Some(s) if !s.thread.is_finished() => {
                self.writable_in_place(s.fs.clone(), ready);
                Ok(())
            }
            _ => self
                .mount_fuse(store, ready, Access::ReadWrite)
                .map_err(whole),
        }
    }

    fn unmount(&mut self) -> Result<(), MountError> {
        self.unmount_fuse().map_err(whole)
    }

    fn read_only(&mut self) -> Result<(), MountError> {
        if self.session.is_none() {
            return self.unmount();
        }
        if !self.view.make_read_only() {
            tracing::warn!(
                "writes still running 10 s after the demotion turned the mount read-only"
            );
        }
        tracing::info!(mountpoint = %self.mountpoint.display(), "the mount is read-only now (standby view)");
        Ok(())
    }

    fn standby(
        &mut self,
        store: Arc<ReplicatedStore>,
        view: StandbyView,
    ) -> Result<(), MountError> {
        match view {
            StandbyView::Serving if self.session.is_none() => self
                .mount_fuse(store, Box::new(|_| {}), Access::ReadOnly)
                .map_err(whole),
            StandbyView::Serving => {
                self.view.set_access(Access::ReadOnly);
                Ok(())
            }
            StandbyView::Hidden => {
                self.view.set_access(Access::Hidden);
                Ok(())
            }
            StandbyView::Off => self.unmount(),
        }
    }
}

/// An error with its causes on one line, for the node's log and status.
fn whole(e: anyhow::Error) -> MountError {
    format!("{e:#}").into()
}

impl FuseMounter {
    /// A promotion of a node whose standby view is mounted: the same mount
    /// becomes read-write (Apache keeps its open files). Loading for writing
    /// may commit (a new store's root, orphans), which waits for the node
    /// task: so it runs on its own thread.
    fn writable_in_place(
        &self,
        fs: Arc<Mutex<Option<Arc<Fs<ReplicatedStore>>>>>,
        ready: MountReady,
    ) {
        let mountpoint = self.mountpoint.clone();
        let spawned = std::thread::Builder::new()
            .name("twinfs-rw".into())
            .spawn(move || {
                // The session may still be loading its filesystem (bounded: 5 s).
                let mut loaded = None;
                for _ in 0..100 {
                    loaded = fs.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if loaded.is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let r = match loaded {
                    None => Err("the standby mount never finished loading".to_string()),
                    Some(fs) => fs.become_writable(0, 0).map_err(|e| e.to_string()),
                };
                if r.is_ok() {
                    tracing::info!(mountpoint = %mountpoint.display(), "the standby view is read-write now");
                }
                ready(r);
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the thread that makes the mount writable: {e}");
        }
    }

    fn mount_fuse(
        &mut self,
        store: Arc<ReplicatedStore>,
        ready: MountReady,
        access: Access,
    ) -> anyhow::Result<()> {
        crate::mount::preflight_mountpoint(&self.mountpoint)?;
        let unmounter = Arc::new(Mutex::new(None));
        let slot = unmounter.clone();
        let loaded = Arc::new(Mutex::new(None));
        let fs_slot = loaded.clone();
        let mountpoint = self.mountpoint.clone();
        let opts = self.opts;
        let view = self.view.clone();
        view.set_access(access);
        // Loading the filesystem may commit a mutation (a new store's root), which
        // waits for the node task: so it happens here, not in the caller.
        let thread = std::thread::Builder::new()
            .name("twinfs-fuse".into())
            .spawn(move || {
                let mut ready = Some(ready);
                let served = (|| -> anyhow::Result<()> {
                    let fs = Arc::new(
                        Fs::with_view(store, 0, 0, view.clone()).context("loading the filesystem")?,
                    );
                    let fuse = FuseFs::new(fs.clone(), opts);
                    let cfg = fuse.mount_config();
                    let mut session = fuser::Session::new(fuse, &mountpoint, &cfg)
                        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(session.unmount_callable());
                    view.attach(KernelCache::new(session.notifier(), fs.clone()));
                    *fs_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(fs);
                    tracing::info!(
                        mountpoint = %mountpoint.display(),
                        "mounted {}",
                        if access == Access::ReadWrite { "read-write" } else { "read-only (standby view)" }
                    );
                    if let Some(r) = ready.take() {
                        r(Ok(()));
                    }
                    session.run().context("serving FUSE requests")
                })();
                view.detach();
                if let (Some(r), Err(e)) = (ready.take(), &served) {
                    r(Err(format!("{e:#}")));
                }
                match served {
                    Ok(()) => tracing::info!(mountpoint = %mountpoint.display(), "unmounted"),
                    Err(e) => tracing::error!("the mount failed: {e:#}"),
                }
            })?;
        self.session = Some(Session {
            thread,
            unmounter,
            fs: loaded,
        });
        Ok(())
    }

    fn unmount_fuse(&mut self) -> anyhow::Result<()> {
        if self.session.is_none() {
            return Ok(());
        }
        if let Some(p) = &self.pre_unmount {
            p.before_shutdown_unmount();
        }
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
            match crate::unmount::unmount(&self.mountpoint, self.force) {
                Ok(notes) => {
                    for n in notes {
                        tracing::warn!("{n}");
                    }
                    // Unmounted already; this lets fuser's session end cleanly.
                    let _ = u.unmount();
                }
                Err(e) => {
                    // Still busy: keep serving (the node refuses the writes),
                    // and keep the unmounter for another try.
                    self.session = Some(Session {
                        thread: session.thread,
                        unmounter: Arc::new(Mutex::new(Some(u))),
                        fs: session.fs,
                    });
                    bail!("{e}");
                }
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

/// `twinfs status --watch`: the status, refreshed every `every`, with a
/// progress bar while a resync runs; until Ctrl-C, or `count` refreshes.
pub(crate) fn watch(
    data_dir: &Path,
    every: Duration,
    count: Option<u64>,
) -> anyhow::Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) && count.is_none_or(|c| n < c) {
        n += 1;
        let mut screen = String::new();
        if tty {
            screen.push_str("\x1b[2J\x1b[H");
        }
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        screen.push_str(&format!(
            "twinfs status --watch, every {} ({now})\n",
            humantime::format_duration(every)
        ));
        match control::call(data_dir, &Request::Status, Duration::from_secs(5)) {
            Ok(Response::Status(s)) => {
                screen.push_str(&s.human());
                if let Some(r) = &s.resync {
                    screen.push_str(&resync_bar(r));
                    screen.push('\n');
                }
                if let Some(f) = crate::supervisor::read_status(data_dir) {
                    screen.push_str(&f.human());
                }
            }
            Ok(other) => screen.push_str(&format!("unexpected answer: {other:?}\n")),
            Err(e) => screen.push_str(&format!("the node does not answer: {e:#}\n")),
        }
        print!("{screen}");
        if !tty {
            println!();
        }
        std::io::Write::flush(&mut std::io::stdout())?;
        // Sleep in small steps so that Ctrl-C is prompt.
        let until = std::time::Instant::now() + every;
        while std::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
            if count.is_some_and(|c| n >= c) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50).min(every));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The resync progress bar (indicatif), as one line of text.
fn resync_bar(r: &twinfs_replicator::status::Resync) -> String {
    let capture = Capture::default();
    let line = capture.0.clone();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(r.total_bytes.max(1)),
        indicatif::ProgressDrawTarget::term_like(Box::new(capture)),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "  resync ({prefix}) [{bar:40}] {percent:>3}% {bytes}/{total_bytes} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(r.direction.clone());
    bar.set_position(r.done_bytes.min(r.total_bytes));
    bar.set_message(match r.eta_seconds {
        Some(s) => format!("eta {}", humantime::format_duration(Duration::from_secs(s))),
        None => "eta unknown".into(),
    });
    bar.abandon();
    let text = line.lock().unwrap_or_else(|e| e.into_inner()).clone();
    text
}

/// A terminal that keeps the last line indicatif drew.
#[derive(Debug, Default)]
struct Capture(Arc<Mutex<String>>);

impl indicatif::TermLike for Capture {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        if !s.trim().is_empty() {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = s.trim_end().to_string();
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn resync_bar_shows_progress_and_eta() {
        let line = super::resync_bar(&twinfs_replicator::status::Resync {
            direction: "source".into(),
            done_bytes: 42 << 20,
            total_bytes: 100 << 20,
            eta_seconds: Some(12),
        });
        assert!(line.contains("resync (source) ["), "{line}");
        assert!(line.contains(" 42%"), "{line}");
        assert!(line.contains("42.00 MiB/100.00 MiB"), "{line}");
        assert!(line.contains("eta 12s"), "{line}");
        assert!(line.contains("===="), "{line}");
    }
}
