//! Online verify, the store's side: the primary reads the digest of every
//! record (every data block read back from disk, every inode, entry and
//! attribute), sends range hashes, compares the secondary's answer and can
//! repair the differences. The range hashes and the comparison are pure
//! (`twinfs_replicator_proto::node::verify`).
//!
//! Both sides compute at the same point of the mutation stream: the request
//! travels on the replication stream after every mutation sent before it, and
//! the secondary computes on its applier thread, after applying them. A repair
//! ships the primary's current values of the differing records on the same
//! stream, so they land in order with the writes around them.

use super::{Input, Node, Reply};
use crate::control::Response;
use tracing::{info, warn};
use twinfs_fs::store::{store_key_of, DiskStore, KeySet, RecordDigest};
use twinfs_fs::{Mutation, StoreKey};
use twinfs_replicator_proto::node::verify::{compare, Difference, VerifyAnswer, VerifyRequest};
use twinfs_replicator_proto::Frame;

/// Most differences listed in a report.
const MAX_LISTED: usize = 200;

/// A verify this node started and is waiting on.
pub(super) struct Pending {
    id: u64,
    repair: bool,
    reply: Reply,
    local: Vec<RecordDigest>,
    boundaries: Vec<Vec<u8>>,
}

/// (Secondary, applier thread) answers a verify request.
pub(super) fn answer(disk: &DiskStore, payload: &[u8]) -> Input {
    let req = match VerifyRequest::parse(payload) {
        Ok(r) => r,
        Err(e) => return Input::ApplyFailed(e),
    };
    let leaves = match disk.content_digests() {
        Ok(l) => l,
        Err(e) => return Input::ApplyFailed(format!("verify: reading the store: {e}")),
    };
    Input::Frames(vec![Frame::VerifyResponse {
        payload: req.answer(&leaves).to_bytes(),
    }])
}

impl Node {
    /// `twinfs verify --online [--repair]`, on the primary.
    pub(super) fn start_verify(&mut self, repair: bool, reply: Reply) {
        let refuse = |why: &str| Response::Error(format!("cannot verify online: {why}"));
        let answer = match self.core.may_verify() {
            Err(why) => Some(refuse(why)),
            Ok(()) if self.verify.is_some() || self.verify_reply.is_some() => {
                Some(refuse("a verify is already running"))
            }
            Ok(()) => None,
        };
        if let Some(a) = answer {
            let _ = reply.send(a);
            return;
        }
        self.verify_seq += 1;
        let id = self.verify_seq;
        let disk = self.disk.clone();
        let tx = self.input_tx.clone();
        self.verify_reply = Some((id, repair, reply));
        tokio::task::spawn_blocking(move || {
            let msg = match disk.content_digests() {
                Ok(local) => Input::VerifyLocal { id, local },
                Err(e) => Input::VerifyFailed(format!("reading the local store: {e}")),
            };
            let _ = tx.send(msg);
        });
    }

    /// The primary's digests are ready: ask the peer.
    pub(super) fn verify_local(&mut self, id: u64, local: Vec<RecordDigest>) {
        let Some((rid, repair, reply)) = self.verify_reply.take() else {
            return;
        };
        if rid != id {
            return;
        }
        let req = VerifyRequest::new(id, &local);
        let boundaries = req.boundaries.clone();
        info!(
            records = local.len(),
            ranges = boundaries.len(),
            "online verify: range hashes sent to the peer"
        );
        self.send(Frame::VerifyRequest {
            payload: req.to_bytes(),
        });
        self.verify = Some(Pending {
            id,
            repair,
            reply,
            local,
            boundaries,
        });
    }

    pub(super) fn verify_failed(&mut self, why: String) {
        if let Some((_, _, reply)) = self.verify_reply.take() {
            let _ = reply.send(Response::Error(format!("verify failed: {why}")));
        }
        if let Some(p) = self.verify.take() {
            let _ = p
                .reply
                .send(Response::Error(format!("verify failed: {why}")));
        }
    }

    /// (Primary) the peer's answer: compare, report, repair.
    pub(super) fn verify_answered(&mut self, payload: &[u8]) {
        let answer = match VerifyAnswer::parse(payload) {
            Ok(a) => a,
            Err(e) => {
                self.verify_failed(e);
                return;
            }
        };
        let Some(p) = self.verify.take() else {
            return;
        };
        if p.id != answer.id {
            self.verify = Some(p);
            return;
        }
        let ranges = p.boundaries.len();
        let differing_ranges = answer.differing.len();
        let diffs = compare(&p.local, &p.boundaries, &answer);
        let resolve = twinfs_fs::verify::path_resolver(&self.disk).ok();
        let describe = |k: &[u8]| -> String {
            let path = |ino| {
                resolve
                    .as_ref()
                    .map_or(format!("inode {ino:?}"), |r| r(ino))
            };
            match store_key_of(k) {
                Some(StoreKey::Block(ino, idx)) => format!("{} (block {idx})", path(ino)),
                Some(StoreKey::Inode(ino)) => format!("{} (attributes)", path(ino)),
                Some(StoreKey::Dirent(dir, name)) => {
                    format!("{}/{} (entry)", path(dir), String::from_utf8_lossy(&name))
                }
                Some(StoreKey::Xattr(ino, name)) => {
                    format!("{} (xattr {})", path(ino), String::from_utf8_lossy(&name))
                }
                Some(StoreKey::Orphan(ino)) => format!("inode {} (orphan mark)", ino.0),
                Some(StoreKey::NextIno) => "next inode number".into(),
                _ => format!("record {k:?}"),
            }
        };
        let mut lines: Vec<String> = diffs
            .iter()
            .take(MAX_LISTED)
            .map(|(k, why)| format!("  {}: {why}", describe(k)))
            .collect();
        if diffs.len() > MAX_LISTED {
            lines.push(format!("  ... and {} more", diffs.len() - MAX_LISTED));
        }
        let head = format!(
            "online verify: {} records here, {} on the peer; {} of {ranges} range hashes differed; {} difference(s)",
            p.local.len(),
            answer.records,
            differing_ranges,
            diffs.len()
        );
        if diffs.is_empty() {
            self.note(head.clone());
            let _ = p.reply.send(Response::Done(head));
            return;
        }
        warn!("{head}:\n{}", lines.join("\n"));
        if !p.repair {
            let _ = p.reply.send(Response::Error(format!(
                "{head}:\n{}\nrepair with `twinfs verify --online --repair`",
                lines.join("\n")
            )));
            return;
        }
        // Repair: ship this node's current values; records damaged here are not
        // shipped (the peer's copy is the good one; a resync from it fixes them).
        let damaged_here = diffs
            .iter()
            .filter(|(_, how)| *how == Difference::DamagedHere)
            .count();
        let keys: KeySet = diffs
            .iter()
            .filter(|(_, how)| *how != Difference::DamagedHere)
            .filter_map(|(k, _)| store_key_of(k))
            .collect();
        let mut shipped = 0usize;
        let mut frames = Vec::new();
        let r = self.disk.resync_ops(&keys, false, 1 << 20, |ops| {
            let payload = Mutation {
                seq: twinfs_fs::Seq(0),
                ops,
            }
            .to_wire();
            shipped += payload.len();
            frames.push(Frame::Repair { payload });
            Ok(())
        });
        for f in frames {
            self.send(f);
        }
        let msg = match r {
            Ok(()) => format!(
                "{head}; repaired {} on the peer ({shipped} bytes sent){}:\n{}",
                keys.len(),
                if damaged_here > 0 {
                    format!("; {damaged_here} damaged here NOT repaired (resync from the peer)")
                } else {
                    String::new()
                },
                lines.join("\n")
            ),
            Err(e) => format!("{head}; repair failed: {e}"),
        };
        self.note(format!(
            "online verify: {} difference(s) repaired",
            keys.len()
        ));
        let _ = p.reply.send(Response::Done(msg));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_store_and_the_core_agree_on_the_damaged_digest() {
        assert_eq!(
            twinfs_fs::store::DAMAGED,
            twinfs_replicator_proto::node::verify::DAMAGED
        );
    }
}
