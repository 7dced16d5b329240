//! `twinfs mount` and `twinfs verify`: opening a store, serving it, shutting down.
//!
//! Shutdown order on SIGTERM/SIGINT: unmount (the kernel first writes back its
//! dirty pages and we apply them), the FUSE session ends, the checkpointer stops,
//! then the store takes its final checkpoint (log fdatasync, sled flush, fsync).

use crate::config::Config;
use crate::UsageError;
use anyhow::{bail, Context as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use twinfs_fs::fuse::{FuseFs, FuseOptions};
use twinfs_fs::ops::Fs;
use twinfs_fs::store::{Checkpointer, DiskStore};

/// Is `path` a mount point right now? (Reads /proc/self/mountinfo.)
fn mounted_at(path: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let mp = f.get(4)?.replace("\\040", " ");
        let sep = f.iter().position(|x| *x == "-")?;
        (Path::new(&mp) == canon).then(|| {
            format!(
                "{} {}",
                f.get(sep + 1).unwrap_or(&"?"),
                f.get(sep + 2).unwrap_or(&"?")
            )
        })
    })
}

/// Removes a dead twinfs mount at `mountpoint`: the FUSE mount a killed
/// `twinfs run` leaves behind ("Transport endpoint is not connected"), which
/// would make the next promotion fail. Only a `fuse.twinfs` mount that no
/// longer answers is touched (lazily detached); anything else is left alone.
/// Returns whether one was removed.
pub(crate) fn clear_dead_mount(mountpoint: &Path) -> anyhow::Result<bool> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
        _ => return Ok(false),
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let ours = info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let mp = f.get(4).map(|m| m.replace("\\040", " "));
        let sep = f.iter().position(|x| *x == "-");
        let fstype = sep.and_then(|i| f.get(i + 1)).copied();
        mp.as_deref().map(Path::new) == Some(mountpoint) && fstype == Some("fuse.twinfs")
    });
    if !ours {
        return Ok(false);
    }
    nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).with_context(|| {
        format!(
            "removing the dead twinfs mount at {} (umount -l it by hand)",
            mountpoint.display()
        )
    })?;
    Ok(true)
}

/// Checks the inputs before anything on disk is touched.
fn preflight(data_dir: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    preflight_data_dir(data_dir)?;
    preflight_mountpoint(mountpoint)
}

/// The data dir exists, is a directory, and is writable.
pub(crate) fn preflight_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(data_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!(UsageError(format!(
            "data dir {} is not a directory",
            data_dir.display()
        ))),
        Err(e) => bail!(UsageError(format!(
            "data dir {}: {e} (create it first; an empty directory becomes a new store)",
            data_dir.display()
        ))),
    }
    // The store holds every file's data, whatever the files' modes on the mount.
    crate::perms::check_data_dir(data_dir).map_err(|e| UsageError(e.to_string()))?;
    if let Err(e) = nix::unistd::access(data_dir, nix::unistd::AccessFlags::W_OK) {
        bail!(UsageError(format!(
            "data dir {} is not writable: {}",
            data_dir.display(),
            e.desc()
        )));
    }
    Ok(())
}

/// The mountpoint exists, is a directory, and nothing is mounted there.
pub(crate) fn preflight_mountpoint(mountpoint: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!(UsageError(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        ))),
        Err(e) => bail!(UsageError(format!(
            "mountpoint {}: {e}",
            mountpoint.display()
        ))),
    }
    if let Some(what) = mounted_at(mountpoint) {
        bail!(UsageError(format!(
            "mountpoint {} is busy: already mounted ({what})",
            mountpoint.display()
        )));
    }
    Ok(())
}

/// Mounts and serves until unmounted or signalled.
pub(crate) fn run(cfg: &Config, data_dir: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    preflight(data_dir, mountpoint)?;
    let store = Arc::new(
        DiskStore::open(data_dir)
            .with_context(|| format!("opening store {}", data_dir.display()))?,
    );
    let fs = Arc::new(Fs::new(store.clone(), 0, 0).context("loading the filesystem")?);
    let checkpointer = Checkpointer::spawn(store.clone(), cfg.fs.checkpoint_interval);
    let opts = FuseOptions {
        attr_timeout: cfg.fs.attr_timeout,
        writeback_cache: cfg.fs.writeback_cache,
        threads: cfg.fs.threads,
        suid_dev: cfg.fs.suid_dev,
    };
    let fuse = FuseFs::new(fs.clone(), opts);
    let mount_cfg = fuse.mount_config();
    let mut session = fuser::Session::new(fuse, mountpoint, &mount_cfg)
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    let mut unmounter = session.unmount_callable();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    let handle = signals.handle();
    let mnt = mountpoint.to_path_buf();
    let signal_thread = std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "shutting down: unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::warn!(error = %e, mountpoint = %mnt.display(), "unmount failed (busy?); detaching lazily");
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&mnt)
                    .status();
            }
        }
    });
    tracing::info!(mountpoint = %mountpoint.display(), data_dir = %data_dir.display(), last_seq = %store_last(&store), "mounted");
    let served = session.run();
    handle.close();
    let _ = signal_thread.join();
    drop(checkpointer);
    served.context("serving FUSE requests")?;
    drop(fs);
    store.checkpoint().context("final checkpoint")?;
    tracing::info!("unmounted cleanly");
    Ok(())
}

fn store_last(s: &DiskStore) -> u64 {
    use twinfs_fs::Store as _;
    s.last_applied().0
}

/// Checks a whole store offline.
pub(crate) fn verify(data_dir: &Path) -> anyhow::Result<ExitCode> {
    if !data_dir.join("store.toml").exists() {
        bail!(UsageError(format!(
            "{} holds no twinfs store (store.toml missing)",
            data_dir.display()
        )));
    }
    let store = DiskStore::open(data_dir)
        .with_context(|| format!("opening store {}", data_dir.display()))?;
    let report = twinfs_fs::verify::verify(&store).context("verifying")?;
    for d in &report.damaged {
        println!(
            "damaged: {} (block {} at {} offset {})",
            d.path,
            d.idx,
            d.segment
                .strip_prefix(data_dir)
                .unwrap_or(&d.segment)
                .display(),
            d.offset
        );
    }
    if report.damaged.is_empty() {
        println!(
            "clean: {} blocks, {} bytes checked",
            report.blocks, report.bytes
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} damaged block(s) in {} file(s)",
            report.damaged.len(),
            report.damaged_files().len()
        );
        Ok(ExitCode::from(1))
    }
}
