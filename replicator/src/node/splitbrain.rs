//! Split brain: both nodes wrote on their own since they last shared a
//! generation. Data is never merged: unless a configured policy picks the
//! survivor, the nodes refuse to connect and say what each side changed —
//! twinfs knows which inode owns every block, so the report lists files, not
//! block numbers. The admin resolves it with `twinfs discard-my-data` on the
//! node whose changes are to go.

use super::Node;
use crate::control::Response;
use crate::status::SplitBrain;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use tracing::{error, warn};
use twinfs_replicator_proto::{Frame, Hello};

/// Most file names a report carries.
const MAX_FILES: usize = 1000;

/// What a node tells its peer about its own changes.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Report {
    pub(super) node: String,
    pub(super) changed_files: Vec<String>,
}

/// Decodes the peer's report of its own changes.
pub(super) fn parse_report(payload: &[u8]) -> Result<Report, serde_json::Error> {
    serde_json::from_slice(payload)
}

impl Node {
    /// The files this node changed on its own in its current generation (paths
    /// as they are now; deleted files as `<inode N, unlinked>`).
    pub(super) fn changed_files(&self) -> Vec<String> {
        let state = self.core.state();
        if !state.diverged() {
            return Vec::new();
        }
        let keys = match self
            .disk
            .changed_keys_since(twinfs_fs::Seq(state.generation_start))
        {
            Ok(Some(k)) => k,
            Ok(None) => return vec!["(unknown: the log no longer holds these changes)".into()],
            Err(e) => return vec![format!("(cannot list the changes: {e})")],
        };
        let inos: BTreeSet<_> = keys
            .iter()
            .filter_map(|k| match k {
                twinfs_fs::StoreKey::Dirent(parent, _) => Some(*parent),
                k => k.ino(),
            })
            .collect();
        let resolve = match twinfs_fs::verify::path_resolver(&self.disk) {
            Ok(r) => r,
            Err(e) => return vec![format!("(cannot resolve paths: {e})")],
        };
        let mut files: Vec<String> = inos.into_iter().map(&resolve).collect();
        files.sort();
        files.dedup();
        if files.len() > MAX_FILES {
            let more = files.len() - MAX_FILES;
            files.truncate(MAX_FILES);
            files.push(format!("... and {more} more"));
        }
        files
    }

    /// Both sides wrote: report (the core refuses next), and wait for the admin.
    pub(super) fn split_brain(&mut self, reason: String, peer: &Hello) {
        let local_files = self.changed_files();
        let report = Report {
            node: self.opts.name.clone(),
            changed_files: local_files.clone(),
        };
        if let Some(c) = &self.conn {
            let payload = serde_json::to_vec(&report).unwrap_or_default();
            let _ = c.tx.send(Frame::Report { payload });
        }
        let first = self
            .split_brain
            .as_ref()
            .is_none_or(|sb| sb.reason != reason);
        if first {
            error!(
                peer = %peer.node,
                "SPLIT BRAIN: {reason}; files changed here since the split: {}; \
                 nothing is resynced until the admin decides (`twinfs discard-my-data` on the node whose changes go)",
                if local_files.is_empty() { "none".to_string() } else { local_files.join(", ") }
            );
        }
        let peer_files = self
            .split_brain
            .as_ref()
            .filter(|sb| sb.peer == peer.node)
            .and_then(|sb| sb.peer_files.clone());
        self.split_brain = Some(SplitBrain {
            reason,
            peer: peer.node.clone(),
            local_files,
            peer_files,
        });
    }

    /// The peer's report of its own changes.
    pub(super) fn peer_report(&mut self, payload: &[u8]) {
        match parse_report(payload) {
            Ok(r) => {
                if let Some(sb) = &mut self.split_brain {
                    if sb.peer_files.is_none() {
                        error!(
                            peer = %r.node,
                            "SPLIT BRAIN: files changed on {} since the split: {}",
                            r.node,
                            if r.changed_files.is_empty() { "none".to_string() } else { r.changed_files.join(", ") }
                        );
                    }
                    sb.peer = r.node;
                    sb.peer_files = Some(r.changed_files);
                } else {
                    self.split_brain = Some(SplitBrain {
                        reason: "reported by the peer".into(),
                        peer: r.node,
                        local_files: Vec::new(),
                        peer_files: Some(r.changed_files),
                    });
                }
            }
            Err(e) => warn!("undecodable report from the peer: {e}"),
        }
    }

    /// `twinfs discard-my-data`: this node gives up what it wrote on its own;
    /// at the next connection it is resynced from the peer.
    pub(super) fn discard_my_data(&mut self) -> Response {
        let discarded = self.changed_files();
        if let Err(e) = self.core.discard_my_data(&mut self.local) {
            return Response::Error(e);
        }
        self.note(format!(
            "discarding this node's own changes at the next connection ({} files: {})",
            discarded.len(),
            discarded.join(", ")
        ));
        Response::Done(format!(
            "{}: own changes will be overwritten from the peer at the next connection ({} files)",
            self.opts.name,
            discarded.len()
        ))
    }
}
