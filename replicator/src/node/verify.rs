//! Online verify: the primary compares the digest of every record (every data
//! block read back from disk, every inode, entry and attribute) with the
//! secondary's, and can repair the differences.
//!
//! Range hashes keep the exchange small: the primary sorts its records by key,
//! cuts them into buckets of [`BUCKET`] records and sends each bucket's first
//! key and the hash of its (key, digest) pairs. The secondary hashes its own
//! records over the same key ranges and answers only for the buckets that
//! differ, with its record digests in them; the primary compares those record
//! by record. Equal ranges cost one hash each.
//!
//! Both sides compute at the same point of the mutation stream: the request
//! travels on the replication stream after every mutation sent before it, and
//! the secondary computes on its applier thread, after applying them. A repair
//! ships the primary's current values of the differing records on the same
//! stream, so they land in order with the writes around them.

use super::{Input, Node, Reply};
use crate::control::Response;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tracing::{info, warn};
use twinfs_fs::store::{store_key_of, DiskStore, KeySet, RecordDigest, DAMAGED};
use twinfs_fs::{Mutation, StoreKey};
use twinfs_replicator_proto::Frame;

/// Records per range hash.
const BUCKET: usize = 256;
/// Most differences listed in a report.
const MAX_LISTED: usize = 200;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Request {
    pub(super) id: u64,
    /// The first key of each bucket; the first is empty (the start of the key space).
    pub(super) boundaries: Vec<Vec<u8>>,
    pub(super) hashes: Vec<[u8; 32]>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Answer {
    pub(super) id: u64,
    pub(super) records: u64,
    /// For each differing bucket: its index and the secondary's records in it.
    pub(super) differing: Vec<(u32, Vec<RecordDigest>)>,
}

/// Decodes a verify request from the peer and checks its shape: ranges
/// start with the empty key, are strictly increasing and have one hash each.
pub(super) fn parse_request(payload: &[u8]) -> Result<Request, String> {
    let req: Request =
        postcard::from_bytes(payload).map_err(|e| format!("undecodable verify request: {e}"))?;
    if req.boundaries.first().is_none_or(|b| !b.is_empty())
        || req.boundaries.len() != req.hashes.len()
        || req.boundaries.windows(2).any(|w| w[0] >= w[1])
    {
        return Err("malformed verify request".into());
    }
    Ok(req)
}

/// Decodes the peer's answer to a verify request.
pub(super) fn parse_answer(payload: &[u8]) -> Result<Answer, String> {
    postcard::from_bytes(payload).map_err(|e| format!("undecodable answer from the peer: {e}"))
}

/// A verify this node started and is waiting on.
pub(super) struct Pending {
    id: u64,
    repair: bool,
    reply: Reply,
    local: Vec<RecordDigest>,
    boundaries: Vec<Vec<u8>>,
}

fn boundaries(leaves: &[RecordDigest]) -> Vec<Vec<u8>> {
    let mut b = vec![Vec::new()];
    b.extend(
        leaves
            .iter()
            .step_by(BUCKET)
            .skip(1)
            .map(|(k, _)| k.clone()),
    );
    b
}

/// The bucket of `key`: the last boundary not above it.
fn bucket_of(boundaries: &[Vec<u8>], key: &[u8]) -> usize {
    boundaries.partition_point(|b| b.as_slice() <= key) - 1
}

fn bucket_hashes(leaves: &[RecordDigest], boundaries: &[Vec<u8>]) -> Vec<[u8; 32]> {
    let mut hashers: Vec<blake3::Hasher> =
        boundaries.iter().map(|_| blake3::Hasher::new()).collect();
    for (k, d) in leaves {
        let h = &mut hashers[bucket_of(boundaries, k)];
        h.update(&(k.len() as u32).to_be_bytes());
        h.update(k);
        h.update(d);
    }
    hashers
        .into_iter()
        .map(|h| *h.finalize().as_bytes())
        .collect()
}

/// (Secondary, applier thread) answers a verify request.
pub(super) fn answer(disk: &DiskStore, payload: &[u8]) -> Input {
    let req = match parse_request(payload) {
        Ok(r) => r,
        Err(e) => return Input::ApplyFailed(e),
    };
    let leaves = match disk.content_digests() {
        Ok(l) => l,
        Err(e) => return Input::ApplyFailed(format!("verify: reading the store: {e}")),
    };
    let mine = bucket_hashes(&leaves, &req.boundaries);
    let mut differing: BTreeMap<u32, Vec<RecordDigest>> = BTreeMap::new();
    for (i, (a, b)) in mine.iter().zip(&req.hashes).enumerate() {
        if a != b {
            differing.insert(i as u32, Vec::new());
        }
    }
    for (k, d) in &leaves {
        let i = bucket_of(&req.boundaries, k) as u32;
        if let Some(v) = differing.get_mut(&i) {
            v.push((k.clone(), *d));
        }
    }
    let answer = Answer {
        id: req.id,
        records: leaves.len() as u64,
        differing: differing.into_iter().collect(),
    };
    Input::Frames(vec![Frame::VerifyResponse {
        payload: postcard::to_allocvec(&answer).expect("answers serialise"),
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
        let boundaries = boundaries(&local);
        let hashes = bucket_hashes(&local, &boundaries);
        let req = Request {
            id,
            boundaries: boundaries.clone(),
            hashes,
        };
        info!(
            records = local.len(),
            ranges = boundaries.len(),
            "online verify: range hashes sent to the peer"
        );
        self.send(Frame::VerifyRequest {
            payload: postcard::to_allocvec(&req).expect("requests serialise"),
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
        let answer = match parse_answer(payload) {
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
        let mut diffs: Vec<(Vec<u8>, &'static str)> = Vec::new();
        for (i, theirs) in &answer.differing {
            let i = *i as usize;
            let lo = p.boundaries.get(i).cloned().unwrap_or_default();
            let hi = p.boundaries.get(i + 1);
            let ours: BTreeMap<&[u8], [u8; 32]> = p
                .local
                .iter()
                .filter(|(k, _)| *k >= lo && hi.is_none_or(|h| k < h))
                .map(|(k, d)| (k.as_slice(), *d))
                .collect();
            let theirs: BTreeMap<&[u8], [u8; 32]> =
                theirs.iter().map(|(k, d)| (k.as_slice(), *d)).collect();
            for (k, d) in &ours {
                match theirs.get(k) {
                    Some(t) if t == d => {}
                    Some(t) if *t == DAMAGED => diffs.push((k.to_vec(), "damaged on the peer")),
                    Some(_) if *d == DAMAGED => diffs.push((k.to_vec(), "damaged here")),
                    Some(_) => diffs.push((k.to_vec(), "differs")),
                    None => diffs.push((k.to_vec(), "missing on the peer")),
                }
            }
            for k in theirs.keys() {
                if !ours.contains_key(k) {
                    diffs.push((k.to_vec(), "only on the peer"));
                }
            }
        }
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
            .filter(|(_, why)| *why == "damaged here")
            .count();
        let keys: KeySet = diffs
            .iter()
            .filter(|(_, why)| *why != "damaged here")
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
