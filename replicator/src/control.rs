//! The control socket: how `twinfs status`, `promote` and `demote` talk to the
//! running daemon.
//!
//! A Unix stream socket in the data dir (`DATA/control.sock`, mode 0600: root
//! only). One request per connection, one JSON line each way.

use crate::status::Status;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket's file name inside the data dir.
pub const SOCKET_FILE: &str = "control.sock";

/// The socket path for a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Report the status.
    Status,
    /// Become primary (mount read-write).
    Promote,
    /// Become secondary (unmount).
    Demote,
    /// Resolve a split brain by giving up this node's own changes: the next
    /// connection resyncs them from the peer.
    DiscardMyData,
    /// Compare every record's digest with the peer (on the primary); with
    /// `repair`, ship the primary's values of the records that differ.
    Verify {
        /// Repair the differences on the peer.
        repair: bool,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The status.
    Status(Box<Status>),
    /// Done, with a line for the admin.
    Done(String),
    /// Refused or failed, with the reason.
    Error(String),
}

/// Why [`call`] got no answer; each names the socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Nothing listens at the socket.
    #[error("cannot reach the twinfs daemon at {}: {error} (is `twinfs run` running for this data dir?)", path.display())]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The request could not be sent or the answer read in time.
    #[error("{}: no answer from the daemon: {error}", path.display())]
    NoAnswer {
        /// The socket.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The answer is not one this build understands.
    #[error("{}: the daemon's answer is not understood ({error}): {answer:?}", path.display())]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// The parser's message.
        error: serde_json::Error,
        /// The line received.
        answer: String,
    },
}

/// Sends `req` to the daemon of `data_dir` and waits up to `timeout` for the answer.
pub fn call(data_dir: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let path = socket_path(data_dir);
    let no_answer = |error| ControlError::NoAnswer {
        path: path.clone(),
        error,
    };
    let mut s = UnixStream::connect(&path).map_err(|error| ControlError::Unreachable {
        path: path.clone(),
        error,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(no_answer)?;
    s.set_write_timeout(Some(timeout)).map_err(no_answer)?;
    let mut line = serde_json::to_string(req).expect("a request serialises");
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(no_answer)?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(no_answer)?;
    serde_json::from_str(&answer).map_err(|error| ControlError::BadAnswer {
        path: path.clone(),
        error,
        answer,
    })
}

/// Binds a Unix socket at `path` that only root (the owner) can connect to,
/// replacing a stale one, with no moment at which others could.
///
/// The socket is bound inside a fresh 0700 directory next to `path`, made
/// 0600 there, then renamed into place (atomically replacing a socket a
/// killed daemon left); the directory is removed. Binding at `path` and
/// chmod-ing afterwards would leave a window with the umask's mode.
pub fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let staging = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let result = (|| {
        let inner = staging.join(SOCKET_FILE);
        let listener = std::os::unix::net::UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_socket_is_0600_replaces_a_stale_one_and_leaves_nothing_else() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        std::fs::write(&path, b"stale").unwrap();
        let listener = bind_private(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.sock"]);
        let _client = UnixStream::connect(&path).unwrap();
        assert!(listener.accept().is_ok());
    }

    #[test]
    fn wire_forms() {
        assert_eq!(
            serde_json::to_string(&Request::Promote).unwrap(),
            r#"{"cmd":"promote"}"#
        );
        let r = Response::Error("disk is Outdated".into());
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&s).unwrap(), r);
    }
}
