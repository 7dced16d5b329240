//! Online verify, the pure part: the primary compares the digest of every
//! record with the secondary's, by range hashes, and lists the differences.
//!
//! The primary sorts its records by key, cuts them into buckets of
//! [`BUCKET`] records and sends each bucket's first key and the hash of its
//! (key, digest) pairs ([`VerifyRequest`]). The secondary hashes its own
//! records over the same key ranges and answers only for the buckets that
//! differ, with its record digests in them ([`VerifyAnswer`]); the primary
//! compares those record by record ([`compare`]). Equal ranges cost one hash
//! each. Which records exist and what their digests are is the store's
//! business; the core only ever sees (key, digest) pairs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A record's key (as the store encodes it) and the digest of its content.
pub type RecordDigest = (Vec<u8>, [u8; 32]);

/// The digest of a record that cannot be read back (damaged on disk).
pub const DAMAGED: [u8; 32] = [0xff; 32];

/// Records per range hash.
pub const BUCKET: usize = 256;

/// The primary's range hashes.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// Which verify this is.
    pub id: u64,
    /// The first key of each bucket; the first is empty (the start of the key space).
    pub boundaries: Vec<Vec<u8>>,
    /// One hash per bucket.
    pub hashes: Vec<[u8; 32]>,
}

/// The secondary's answer.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyAnswer {
    /// The request's id.
    pub id: u64,
    /// Records the secondary holds.
    pub records: u64,
    /// For each differing bucket: its index and the secondary's records in it.
    pub differing: Vec<(u32, Vec<RecordDigest>)>,
}

/// How a record differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Difference {
    /// Its digest differs.
    Differs,
    /// The peer cannot read it back.
    DamagedOnPeer,
    /// This node cannot read it back (a repair must not ship it).
    DamagedHere,
    /// The peer does not have it.
    MissingOnPeer,
    /// Only the peer has it.
    OnlyOnPeer,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Difference::Differs => "differs",
            Difference::DamagedOnPeer => "damaged on the peer",
            Difference::DamagedHere => "damaged here",
            Difference::MissingOnPeer => "missing on the peer",
            Difference::OnlyOnPeer => "only on the peer",
        })
    }
}

impl VerifyRequest {
    /// The request for `local`, this node's digests sorted by key.
    pub fn new(id: u64, local: &[RecordDigest]) -> VerifyRequest {
        let mut boundaries = vec![Vec::new()];
        boundaries.extend(local.iter().step_by(BUCKET).skip(1).map(|(k, _)| k.clone()));
        let hashes = bucket_hashes(local, &boundaries);
        VerifyRequest {
            id,
            boundaries,
            hashes,
        }
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("requests serialise")
    }

    /// Decodes a request from the peer and checks its shape: ranges start
    /// with the empty key, are strictly increasing and have one hash each.
    pub fn parse(payload: &[u8]) -> Result<VerifyRequest, String> {
        let req: VerifyRequest = postcard::from_bytes(payload)
            .map_err(|e| format!("undecodable verify request: {e}"))?;
        if req.boundaries.first().is_none_or(|b| !b.is_empty())
            || req.boundaries.len() != req.hashes.len()
            || req.boundaries.windows(2).any(|w| w[0] >= w[1])
        {
            return Err("malformed verify request".into());
        }
        Ok(req)
    }

    /// (Secondary) the answer for `leaves`, this node's digests sorted by key.
    pub fn answer(&self, leaves: &[RecordDigest]) -> VerifyAnswer {
        let mine = bucket_hashes(leaves, &self.boundaries);
        let mut differing: BTreeMap<u32, Vec<RecordDigest>> = BTreeMap::new();
        for (i, (a, b)) in mine.iter().zip(&self.hashes).enumerate() {
            if a != b {
                differing.insert(i as u32, Vec::new());
            }
        }
        for (k, d) in leaves {
            let i = bucket_of(&self.boundaries, k) as u32;
            if let Some(v) = differing.get_mut(&i) {
                v.push((k.clone(), *d));
            }
        }
        VerifyAnswer {
            id: self.id,
            records: leaves.len() as u64,
            differing: differing.into_iter().collect(),
        }
    }
}

impl VerifyAnswer {
    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("answers serialise")
    }

    /// Decodes the peer's answer.
    pub fn parse(payload: &[u8]) -> Result<VerifyAnswer, String> {
        postcard::from_bytes(payload).map_err(|e| format!("undecodable answer from the peer: {e}"))
    }
}

/// (Primary) the records that differ between `local` (this node's digests,
/// sorted by key, cut at `boundaries`) and the peer's `answer`, in key order
/// within each differing range.
pub fn compare(
    local: &[RecordDigest],
    boundaries: &[Vec<u8>],
    answer: &VerifyAnswer,
) -> Vec<(Vec<u8>, Difference)> {
    let mut diffs = Vec::new();
    for (i, theirs) in &answer.differing {
        let i = *i as usize;
        let lo = boundaries.get(i).cloned().unwrap_or_default();
        let hi = boundaries.get(i + 1);
        let ours: BTreeMap<&[u8], [u8; 32]> = local
            .iter()
            .filter(|(k, _)| *k >= lo && hi.is_none_or(|h| k < h))
            .map(|(k, d)| (k.as_slice(), *d))
            .collect();
        let theirs: BTreeMap<&[u8], [u8; 32]> =
            theirs.iter().map(|(k, d)| (k.as_slice(), *d)).collect();
        for (k, d) in &ours {
            let how = match theirs.get(k) {
                Some(t) if t == d => continue,
                Some(t) if *t == DAMAGED => Difference::DamagedOnPeer,
                Some(_) if *d == DAMAGED => Difference::DamagedHere,
                Some(_) => Difference::Differs,
                None => Difference::MissingOnPeer,
            };
            diffs.push((k.to_vec(), how));
        }
        for k in theirs.keys() {
            if !ours.contains_key(k) {
                diffs.push((k.to_vec(), Difference::OnlyOnPeer));
            }
        }
    }
    diffs
}

/// The bucket of `key`: the last boundary not above it.
fn bucket_of(boundaries: &[Vec<u8>], key: &[u8]) -> usize {
    boundaries
        .partition_point(|b| b.as_slice() <= key)
        .saturating_sub(1)
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
