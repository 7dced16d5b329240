//! Admin requests on `failover.sock` (`twinfs switchover`, `twinfs
//! maintenance`, `twinfs takeover`), and the mounter's request to take the
//! site down before a shutdown unmount.

use super::{Driver, HANDOVER_ANNOUNCE};
use crate::hooks::Hook;
use crate::machine::{Action, Role};
use serde::{Deserialize, Serialize};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use twinfs_replicator::status::{ConnectionState, DiskState};

/// The socket `twinfs switchover` talks to.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("failover.sock")
}

/// An admin request on `failover.sock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRequest {
    /// Demote here, then let the peer promote.
    Switchover,
    /// Stop (or resume) automatic action.
    Maintenance(bool),
    /// Resume after a failed demotion was fixed by hand.
    Clear,
    /// On the secondary: ask the primary to switch over to this node.
    TakeOver,
}

/// The answer on `failover.sock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminResponse {
    /// Done, with a line for the admin.
    Done(String),
    /// Refused or failed, with the reason.
    Error(String),
}

/// Why [`admin_call`] got no answer; each names the socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminCallError {
    /// Nobody listens on the socket.
    #[error("connecting to {} (is `twinfs run` with a [failover] table running?)", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What `connect` said.
        #[source]
        source: std::io::Error,
    },
    /// Sending the request or reading the answer failed.
    #[error("reading the answer from {}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not an [`AdminResponse`].
    #[error("bad answer {line:?}")]
    BadAnswer {
        /// The line received.
        line: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// Sends one admin request to the running daemon.
pub fn admin_call(
    data_dir: &Path,
    req: &AdminRequest,
    timeout: Duration,
) -> Result<AdminResponse, AdminCallError> {
    let path = socket_path(data_dir);
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(source) => return Err(AdminCallError::Connect { path, source }),
    };
    let mut line = String::new();
    let exchange = s
        .set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .and_then(|()| {
            let req = serde_json::to_string(req).map_err(std::io::Error::other)?;
            writeln!(s, "{req}")
        })
        .and_then(|()| BufReader::new(&s).read_line(&mut line));
    if let Err(source) = exchange {
        return Err(AdminCallError::Io { path, source });
    }
    serde_json::from_str(&line).map_err(|source| AdminCallError::BadAnswer { line, source })
}

impl Driver {
    /// The node is shutting down and about to unmount: take the site down
    /// here first (on_demote), then let it go on.
    pub(super) fn serve_pre_unmount(&mut self) {
        let Some(rx) = &self.pre_unmount_rx else {
            return;
        };
        let Ok(reply) = rx.try_recv() else {
            return;
        };
        self.note(
            "shutting down as primary: stopping the service and releasing the VIP before \
             the unmount (on_demote)"
                .into(),
        );
        let status = self.last_status.clone().unwrap_or_default();
        if let Err(e) = self.run_hook(Hook::Demote, &status, Role::Secondary) {
            self.note(format!("on_demote at shutdown failed: {e}"));
        }
        self.write_status(true);
        let _ = reply.send(());
    }

    pub(super) fn serve_admin(&mut self) {
        // Bounded: at most a few requests per tick.
        for _ in 0..4 {
            let Some(Ok((req, reply))) = self.admin_rx.as_ref().map(|rx| rx.try_recv()) else {
                return;
            };
            let answer = self.admin(req);
            let _ = reply.send(answer);
        }
    }

    pub(super) fn admin(&mut self, req: AdminRequest) -> AdminResponse {
        let now = self.now_ms();
        match req {
            AdminRequest::Switchover => {
                // Decide on a fresh look: a promotion may have finished
                // since the last tick.
                self.tick();
                let now = self.now_ms();
                let role = self.last_status.as_ref().map(|s| s.role);
                if role != Some(Role::Primary) {
                    return AdminResponse::Error(format!(
                        "this node is {}, not Primary: run `twinfs switchover` on the primary",
                        role.map_or_else(|| "not answering".into(), |r| format!("{r:?}"))
                    ));
                }
                let ds = self.machine.request_switchover(now);
                let refused = ds
                    .iter()
                    .find(|d| d.action == Action::NoAction)
                    .map(|d| d.reason.clone());
                self.process(ds);
                match refused {
                    Some(r) => AdminResponse::Error(format!("switchover refused: {r}")),
                    None => {
                        let now = self.now_ms();
                        AdminResponse::Done(format!(
                            "demoted here; the peer was told to take over ({})",
                            self.machine.why(now)
                        ))
                    }
                }
            }
            AdminRequest::Maintenance(on) => {
                let mut ds = self.machine.set_maintenance(now, on);
                if !on {
                    // Leaving maintenance also resumes after a failed
                    // demotion that the admin has fixed by hand.
                    ds.extend(self.machine.clear_failure(now));
                }
                self.process(ds);
                AdminResponse::Done(format!(
                    "maintenance mode {}",
                    if on { "on" } else { "off" }
                ))
            }
            AdminRequest::TakeOver => {
                let st = self.last_status.clone().unwrap_or_default();
                if st.role != Role::Secondary
                    || st.disk != DiskState::UpToDate
                    || st.connection != ConnectionState::Connected
                {
                    return AdminResponse::Error(format!(
                        "this node is {:?} with disk {} and link {}: only a connected, UpToDate \
                         secondary can take over",
                        st.role, st.disk, st.connection
                    ));
                }
                if self.beacon.is_none() {
                    return AdminResponse::Error(
                        "no beacon (failover.public) to ask the peer through; run `twinfs \
                         switchover` on the primary instead"
                            .into(),
                    );
                }
                self.takeover_until = Some(self.clock.now() + HANDOVER_ANNOUNCE);
                self.note("asking the peer to hand the primary role over".into());
                AdminResponse::Done("asked the peer to hand over".into())
            }
            AdminRequest::Clear => {
                let ds = self.machine.clear_failure(now);
                self.process(ds);
                AdminResponse::Done(self.machine.why(self.now_ms()))
            }
        }
    }
}
