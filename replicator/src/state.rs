//! What a node keeps about replication next to its data: role, disk state and
//! generations, in `DATA/replication.toml`.
//!
//! The file is small and changes only on transitions (promote, demote, peer lost,
//! resync done), so it is rewritten whole: written to a temporary file, fsynced,
//! renamed over the old one, and the directory fsynced. After a crash it holds
//! either the old or the new state, never a mix.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The file name inside the data dir.
pub const STATE_FILE: &str = "replication.toml";

pub use twinfs_replicator_proto::node::NodeState;

/// A state file that cannot be read or written: the path and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct StateError {
    /// The file (or directory) concerned.
    pub path: PathBuf,
    /// What the OS or the parser said.
    pub message: String,
}

impl StateError {
    fn new(path: &Path, message: impl std::fmt::Display) -> StateError {
        StateError {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }
}

/// Reads the state of the node whose data dir is `dir`; a missing file is a new node.
pub fn load(dir: &Path) -> Result<NodeState, StateError> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NodeState::default()),
        Err(e) => return Err(StateError::new(&path, e)),
    };
    toml::from_str(&text).map_err(|e| StateError::new(&path, e.message()))
}

/// Writes the state durably (temporary file, fsync, rename, fsync of the directory).
pub fn save(state: &NodeState, dir: &Path) -> Result<(), StateError> {
    let path = dir.join(STATE_FILE);
    let tmp: PathBuf = dir.join(format!("{STATE_FILE}.tmp"));
    let text = toml::to_string(state).expect("the node state serialises");
    let io = |e: std::io::Error| StateError::new(&tmp, e);
    // Private like every file of the data dir (0600; issue 13).
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(b"# twinfs replication state: written by twinfs, do not edit\n")
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(|e| StateError::new(&path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateError::new(dir, e))?;
    Ok(())
}

/// Writes a node's state file in the order the states were made, whether from
/// the node task or from a background thread.
///
/// Each state to save carries a version (the node numbers them as it makes
/// them); a save whose version is not newer than the last one written is
/// skipped, so a slow background save of an older state never overwrites a
/// newer one (a role change saved meanwhile, say).
#[derive(Debug, Default)]
pub struct StateWriter {
    /// The version of the state the file holds (0: none written by this writer).
    written: std::sync::Mutex<u64>,
}

impl StateWriter {
    /// Saves `state` (version `version`) into `dir` unless a newer one is
    /// there already; returns whether it wrote. Blocks while another save runs.
    pub fn save(&self, dir: &Path, state: &NodeState, version: u64) -> Result<bool, StateError> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if *written >= version {
            return Ok(false);
        }
        save(state, dir)?;
        *written = version;
        Ok(true)
    }
}

/// A fresh generation identifier: random, never 0.
pub fn new_generation() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source works");
    u64::from_be_bytes(b).max(1)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinfs_replicator_proto::{DiskState, Role};

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), NodeState::default());
        let s = NodeState {
            role: Role::Primary,
            disk: DiskState::Outdated,
            generation: u64::MAX - 5,
            shared: 7,
            primary_since_ms: now_ms(),
            floor: 12,
            generation_start: 10,
        };
        save(&s, dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), s);
        // Private to root, like the store (issue 13).
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(dir.path().join(STATE_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn an_older_state_never_overwrites_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let w = StateWriter::default();
        let old = NodeState {
            floor: 5,
            ..NodeState::default()
        };
        let new = NodeState {
            role: Role::Primary,
            floor: 6,
            ..NodeState::default()
        };
        assert!(w.save(dir.path(), &new, 2).unwrap());
        // A background save of the older state finishing late is skipped.
        assert!(!w.save(dir.path(), &old, 1).unwrap());
        assert_eq!(load(dir.path()).unwrap(), new);
        let newer = NodeState { floor: 7, ..new };
        assert!(w.save(dir.path(), &newer, 3).unwrap());
        assert_eq!(load(dir.path()).unwrap(), newer);
    }

    #[test]
    fn a_damaged_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "role = 'boss'\n").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(STATE_FILE) && e.contains("boss"), "{e}");
    }
}
