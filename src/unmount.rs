//! Unmounting that a busy mount cannot block: Pacemaker's Filesystem agent
//! with `force_unmount`, for a demotion or a shutdown.
//!
//! A demotion first runs `on_demote` (Apache stops); what still uses the
//! mount then (a shell's working directory, a cron job, a writer blocked on a
//! suspended write) is asked to stop with SIGTERM, killed with SIGKILL after
//! the grace period, and the unmount is tried again. Users are found by
//! reading `/proc/PID/{cwd,root,exe,fd/*}` links and `/proc/PID/maps`, which
//! name paths without calling into the filesystem (a FUSE mount that does not
//! answer cannot hang the search).
//!
//! A writer blocked inside a FUSE request the daemon has not answered cannot
//! be killed (the kernel waits for the answer): the node fails such writes
//! first (a demoting node's suspended writes were never acknowledged).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often a busy unmount is tried again while its users stop.
const RETRY: Duration = Duration::from_millis(100);
/// How long killed processes get to disappear.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// What a busy unmount may do to the mount's users.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForceUnmount {
    /// Signal the users at all (`fs.force_unmount`).
    pub enabled: bool,
    /// Between SIGTERM and SIGKILL (`fs.force_unmount_grace`).
    pub grace: Duration,
}

/// A process that uses the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`).
    pub comm: String,
}

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.comm, self.pid)
    }
}

/// Unmounts `mountpoint` (plain `umount`, no lazy detach). While it is busy
/// and `force` allows, stops the users as the module docs say, retrying the
/// unmount every 100 ms. Returns the lines to log (who was signalled), or
/// the error of the last attempt with the users still there.
pub(crate) fn unmount(mountpoint: &Path, force: ForceUnmount) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let first = match try_umount(mountpoint) {
        Ok(()) => return Ok(notes),
        Err(e) => e,
    };
    if first != Errno::EBUSY || !force.enabled {
        return Err(busy_message(mountpoint, first));
    }
    for (signal, wait) in [
        (Signal::SIGTERM, force.grace),
        (Signal::SIGKILL, AFTER_KILL),
    ] {
        let users = users(mountpoint);
        if !users.is_empty() {
            notes.push(format!(
                "{} is busy: sending {signal} to {}",
                mountpoint.display(),
                list(&users)
            ));
            for u in &users {
                // Gone already (ESRCH) is what we want.
                let _ = kill(Pid::from_raw(u.pid), signal);
            }
        }
        let deadline = Instant::now() + wait;
        loop {
            match try_umount(mountpoint) {
                Ok(()) => return Ok(notes),
                Err(Errno::EBUSY) if Instant::now() < deadline => std::thread::sleep(RETRY),
                Err(Errno::EBUSY) => break,
                Err(e) => return Err(busy_message(mountpoint, e)),
            }
        }
    }
    let left = users(mountpoint);
    Err(format!(
        "{} is still busy after SIGTERM and SIGKILL{}",
        mountpoint.display(),
        if left.is_empty() {
            " (no process found using it: a bind mount or a mount below it?)".to_string()
        } else {
            format!(": {}", list(&left))
        }
    ))
}

fn busy_message(mountpoint: &Path, e: Errno) -> String {
    let users = users(mountpoint);
    if users.is_empty() {
        format!("unmounting {}: {e}", mountpoint.display())
    } else {
        format!(
            "unmounting {}: {e}; used by {}",
            mountpoint.display(),
            list(&users)
        )
    }
}

fn list(users: &[User]) -> String {
    const SHOWN: usize = 8;
    let mut s = users
        .iter()
        .take(SHOWN)
        .map(User::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if users.len() > SHOWN {
        s.push_str(&format!(" and {} more", users.len() - SHOWN));
    }
    s
}

fn try_umount(mountpoint: &Path) -> Result<(), Errno> {
    match nix::mount::umount(mountpoint) {
        // Not mounted (any more): done.
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        r => r,
    }
}

/// The processes (other than this one) whose working directory, root,
/// executable, open files or mapped files are on `mountpoint`.
pub(crate) fn users(mountpoint: &Path) -> Vec<User> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<User> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| uses(pid, mountpoint))
        .map(|pid| User {
            pid: pid as i32,
            comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_owned())
                .unwrap_or_else(|_| "?".into()),
        })
        .collect();
    found.sort_by_key(|u| u.pid);
    found
}

fn uses(pid: u32, mountpoint: &Path) -> bool {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let under = |p: &Path| p.starts_with(mountpoint);
    let link = |name: &str| std::fs::read_link(base.join(name)).ok();
    if ["cwd", "root", "exe"]
        .iter()
        .filter_map(|n| link(n))
        .any(|p| under(&p))
    {
        return true;
    }
    if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
        if fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|p| under(&p))
        {
            return true;
        }
    }
    std::fs::read_to_string(base.join("maps")).is_ok_and(|maps| {
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .any(|p| under(Path::new(p)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_whose_working_directory_is_inside() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("sub");
        std::fs::create_dir(&inner).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&inner)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let found = users(dir.path());
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found.iter().any(|u| u.pid == pid && u.comm == "sleep"),
            "{found:?}"
        );
        // A sibling path that merely shares the prefix is not inside.
        let sibling = PathBuf::from(format!("{}x", dir.path().display()));
        assert!(users(&sibling).iter().all(|u| u.pid != pid));
    }

    #[test]
    fn unmounting_what_is_not_mounted_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let force = ForceUnmount {
            enabled: false,
            grace: Duration::ZERO,
        };
        assert_eq!(unmount(dir.path(), force), Ok(Vec::new()));
    }
}
