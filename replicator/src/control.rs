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

/// Sends `req` to the daemon of `data_dir` and waits up to `timeout` for the answer.
pub fn call(data_dir: &Path, req: &Request, timeout: Duration) -> anyhow::Result<Response> {
    let path = socket_path(data_dir);
    let mut s = UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the twinfs daemon at {}: {e} (is `twinfs run` running for this data dir?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| anyhow::anyhow!("{}: no answer from the daemon: {e}", path.display()))?;
    serde_json::from_str(&answer).map_err(|e| {
        anyhow::anyhow!(
            "{}: the daemon's answer is not understood ({e}): {answer:?}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
