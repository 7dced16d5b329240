//! The unit of replication: a numbered, atomic batch of block-level writes.
//!
//! Every change to the filesystem, whatever POSIX call caused it, becomes one
//! [`Mutation`]: a list of [`Op`]s that overwrite whole records (an inode, a
//! directory entry, one data block, one extended attribute) or delete them. Ops
//! are absolute, never relative ("set size to 42", not "add 10"), so applying
//! a mutation twice gives the same store as applying it once. That makes crash
//! replay and, later, replication retries idempotent.
//!
//! On disk a mutation is one log record (see `encode_record`): a fixed header,
//! the ops without their data (postcard), then the data blocks back to back. The
//! data bytes are stored verbatim, so a block can be read straight from the log
//! at the offset the block index records.

use crate::types::{DirEntry, Ino, Inode, Seq};
use serde::{Deserialize, Serialize};

/// One block-level write. `D` is a data block's payload: its bytes in a
/// [`Mutation`], its length and digest in the log's serialised ops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op<D = Vec<u8>> {
    /// Store the inode record (create or overwrite).
    PutInode(Ino, Inode),
    /// Delete the inode record, all its data blocks and all its extended attributes.
    DelInode(Ino),
    /// Store the directory entry `parent/name`.
    PutDirent {
        /// Directory.
        parent: Ino,
        /// Entry name.
        name: Vec<u8>,
        /// What it points to.
        entry: DirEntry,
    },
    /// Delete the directory entry `parent/name` (its cookie is needed to delete the readdir index).
    DelDirent {
        /// Directory.
        parent: Ino,
        /// Entry name.
        name: Vec<u8>,
        /// The cookie the entry had.
        cookie: u64,
    },
    /// Store data block `idx` of `ino` (at most [`crate::BLOCK_SIZE`] bytes; missing bytes read as zeros).
    PutBlock {
        /// File.
        ino: Ino,
        /// Block index.
        idx: u64,
        /// Contents.
        data: D,
    },
    /// Delete the data blocks of `ino` with index `>= from` (truncate).
    TruncBlocks {
        /// File.
        ino: Ino,
        /// First block index removed.
        from: u64,
    },
    /// Store an extended attribute.
    PutXattr {
        /// File.
        ino: Ino,
        /// Attribute name.
        name: Vec<u8>,
        /// Attribute value.
        value: Vec<u8>,
    },
    /// Delete an extended attribute.
    DelXattr {
        /// File.
        ino: Ino,
        /// Attribute name.
        name: Vec<u8>,
    },
    /// Record the next free inode number.
    NextIno(u64),
    /// Mark an unlinked inode that is still open (it is deleted on its last forget, or at the next mount).
    PutOrphan(Ino),
    /// Clear an orphan mark.
    DelOrphan(Ino),
    /// Delete data block `idx` of `ino` (a resync making a block a hole again).
    DelBlock {
        /// File.
        ino: Ino,
        /// Block index.
        idx: u64,
    },
    /// Delete every inode, entry, block, attribute and orphan mark: the first op
    /// of a full resync, which then rebuilds the store from the peer's.
    Wipe,
}

/// The store record an op writes; what a resync compares and ships.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StoreKey {
    /// An inode record (and, when it is deleted, its blocks and attributes).
    Inode(Ino),
    /// A directory entry.
    Dirent(Ino, Vec<u8>),
    /// A truncation: every block of the inode from this index on.
    Trunc(Ino, u64),
    /// One data block.
    Block(Ino, u64),
    /// An extended attribute.
    Xattr(Ino, Vec<u8>),
    /// An orphan mark.
    Orphan(Ino),
    /// The next free inode number.
    NextIno,
    /// Everything (a wipe).
    All,
}

impl StoreKey {
    /// The inode the key belongs to, if any.
    pub fn ino(&self) -> Option<Ino> {
        match self {
            StoreKey::Inode(i)
            | StoreKey::Trunc(i, _)
            | StoreKey::Block(i, _)
            | StoreKey::Xattr(i, _)
            | StoreKey::Orphan(i) => Some(*i),
            StoreKey::Dirent(_, _) | StoreKey::NextIno | StoreKey::All => None,
        }
    }
}

impl<D> Op<D> {
    /// The store record this op writes.
    pub fn key(&self) -> StoreKey {
        match self {
            Op::PutInode(i, _) | Op::DelInode(i) => StoreKey::Inode(*i),
            Op::PutDirent { parent, name, .. } | Op::DelDirent { parent, name, .. } => {
                StoreKey::Dirent(*parent, name.clone())
            }
            Op::PutBlock { ino, idx, .. } | Op::DelBlock { ino, idx } => {
                StoreKey::Block(*ino, *idx)
            }
            Op::TruncBlocks { ino, from } => StoreKey::Trunc(*ino, *from),
            Op::PutXattr { ino, name, .. } | Op::DelXattr { ino, name } => {
                StoreKey::Xattr(*ino, name.clone())
            }
            Op::NextIno(_) => StoreKey::NextIno,
            Op::PutOrphan(i) | Op::DelOrphan(i) => StoreKey::Orphan(*i),
            Op::Wipe => StoreKey::All,
        }
    }
}

/// A numbered batch of ops, applied atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    /// Position in the store's history.
    pub seq: Seq,
    /// The writes, applied in order.
    pub ops: Vec<Op>,
}

/// The bytes of file data `ops` write (what the store's space reserve is checked against).
pub(crate) fn data_bytes(ops: &[Op]) -> u64 {
    ops.iter()
        .map(|o| match o {
            Op::PutBlock { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum()
}

impl Mutation {
    /// The mutation as bytes for the replication link: exactly its log record,
    /// so the ops are covered by the header hash and the block bytes travel
    /// verbatim (no per-byte serialisation).
    pub fn to_wire(&self) -> Vec<u8> {
        encode_record(self, 0).0
    }

    /// Decodes [`Mutation::to_wire`] bytes. `None` if they are not one whole,
    /// replicable record (bad header or hash, trailing bytes, a local record,
    /// or a block whose bytes do not match the digest the ops carry).
    pub fn from_wire(bytes: &[u8]) -> Option<Mutation> {
        let hdr = RecordHeader::parse(bytes.get(..HEADER_LEN)?.try_into().ok()?)?;
        if hdr.flags != 0 || hdr.total_len() != bytes.len() as u64 {
            return None;
        }
        let meta = bytes.get(HEADER_LEN..HEADER_LEN + hdr.meta_len as usize)?;
        if !hdr.check_meta(meta) {
            return None;
        }
        let log_ops = decode_meta(meta)?;
        let mut off = HEADER_LEN + hdr.meta_len as usize;
        let mut ops = Vec::with_capacity(log_ops.len());
        for op in &log_ops {
            let mut bad = false;
            ops.push(op.map_block(|meta| {
                let data = bytes.get(off..off + meta.len as usize).unwrap_or_default();
                off += meta.len as usize;
                bad |= data.len() != meta.len as usize
                    || *blake3::hash(data).as_bytes() != meta.digest;
                data.to_vec()
            }));
            if bad {
                return None;
            }
        }
        (off == bytes.len()).then_some(Mutation { seq: hdr.seq, ops })
    }
}

/// The ops of a record in its wire form, without their block bytes (header
/// and op hash checked; the data is not read). `None` if they do not decode.
pub(crate) fn record_ops(bytes: &[u8]) -> Option<Vec<LogOp>> {
    let hdr = RecordHeader::parse(bytes.get(..HEADER_LEN)?.try_into().ok()?)?;
    let meta = bytes.get(HEADER_LEN..HEADER_LEN + hdr.meta_len as usize)?;
    if !hdr.check_meta(meta) {
        return None;
    }
    decode_meta(meta)
}

/// What the log's serialised ops keep of a data block; the bytes follow the ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlockMeta {
    pub(crate) len: u32,
    pub(crate) digest: [u8; 32],
}

/// The serialised form of an op.
pub(crate) type LogOp = Op<BlockMeta>;

impl<D> Op<D> {
    /// The same op with each block payload replaced by `f(payload)`.
    fn map_block<E>(&self, f: impl FnOnce(&D) -> E) -> Op<E> {
        match self {
            Op::PutInode(i, r) => Op::PutInode(*i, r.clone()),
            Op::DelInode(i) => Op::DelInode(*i),
            Op::PutDirent {
                parent,
                name,
                entry,
            } => Op::PutDirent {
                parent: *parent,
                name: name.clone(),
                entry: *entry,
            },
            Op::DelDirent {
                parent,
                name,
                cookie,
            } => Op::DelDirent {
                parent: *parent,
                name: name.clone(),
                cookie: *cookie,
            },
            Op::PutBlock { ino, idx, data } => Op::PutBlock {
                ino: *ino,
                idx: *idx,
                data: f(data),
            },
            Op::TruncBlocks { ino, from } => Op::TruncBlocks {
                ino: *ino,
                from: *from,
            },
            Op::PutXattr { ino, name, value } => Op::PutXattr {
                ino: *ino,
                name: name.clone(),
                value: value.clone(),
            },
            Op::DelXattr { ino, name } => Op::DelXattr {
                ino: *ino,
                name: name.clone(),
            },
            Op::NextIno(n) => Op::NextIno(*n),
            Op::PutOrphan(i) => Op::PutOrphan(*i),
            Op::DelBlock { ino, idx } => Op::DelBlock {
                ino: *ino,
                idx: *idx,
            },
            Op::Wipe => Op::Wipe,
            Op::DelOrphan(i) => Op::DelOrphan(*i),
        }
    }
}

/// Magic bytes at the start of every log record.
pub(crate) const RECORD_MAGIC: [u8; 4] = *b"TWLR";
/// Log record format version.
pub(crate) const RECORD_VERSION: u16 = 1;
/// Size of the fixed record header.
pub(crate) const HEADER_LEN: usize = 64;
/// Upper bound for the ops part of a record (a corrupt length must not make us allocate gigabytes).
pub(crate) const MAX_META_LEN: u32 = 64 << 20;
/// Upper bound for the data part of a record.
pub(crate) const MAX_PAYLOAD_LEN: u32 = 256 << 20;

/// A record's fixed header.
///
/// ```text
/// 0   magic "TWLR"     4   version u16 LE   6  flags u16 LE (RECORD_LOCAL)
/// 8   seq u64 LE       16  meta_len u32 LE  20 payload_len u32 LE
/// 24  blake3(header[0..24] ++ meta)  (32 bytes)
/// 56  reserved (8 bytes, zero)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) seq: Seq,
    pub(crate) flags: u16,
    pub(crate) meta_len: u32,
    pub(crate) payload_len: u32,
    pub(crate) hash: [u8; 32],
}

impl RecordHeader {
    pub(crate) fn total_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.meta_len) + u64::from(self.payload_len)
    }

    fn prefix(seq: Seq, flags: u16, meta_len: u32, payload_len: u32) -> [u8; 24] {
        let mut p = [0u8; 24];
        p[0..4].copy_from_slice(&RECORD_MAGIC);
        p[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        p[6..8].copy_from_slice(&flags.to_le_bytes());
        p[8..16].copy_from_slice(&seq.0.to_le_bytes());
        p[16..20].copy_from_slice(&meta_len.to_le_bytes());
        p[20..24].copy_from_slice(&payload_len.to_le_bytes());
        p
    }

    /// Parses a header. `None` means "not a valid record here" (end of log or a torn write).
    pub(crate) fn parse(b: &[u8; HEADER_LEN]) -> Option<RecordHeader> {
        if b[0..4] != RECORD_MAGIC || u16::from_le_bytes([b[4], b[5]]) != RECORD_VERSION {
            return None;
        }
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags & !(RECORD_LOCAL | RECORD_JUMP) != 0 {
            return None;
        }
        let seq = Seq(u64::from_le_bytes(b[8..16].try_into().ok()?));
        let meta_len = u32::from_le_bytes(b[16..20].try_into().ok()?);
        let payload_len = u32::from_le_bytes(b[20..24].try_into().ok()?);
        if meta_len > MAX_META_LEN || payload_len > MAX_PAYLOAD_LEN {
            return None;
        }
        let hash = b[24..56].try_into().ok()?;
        Some(RecordHeader {
            seq,
            flags,
            meta_len,
            payload_len,
            hash,
        })
    }

    /// Checks the header and ops against the stored hash.
    pub(crate) fn check_meta(&self, meta: &[u8]) -> bool {
        let mut h = blake3::Hasher::new();
        h.update(&Self::prefix(
            self.seq,
            self.flags,
            self.meta_len,
            self.payload_len,
        ));
        h.update(meta);
        *h.finalize().as_bytes() == self.hash
    }
}

/// Where each data block of an encoded record sits, relative to the record start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockPlacement {
    pub(crate) ino: Ino,
    pub(crate) idx: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) digest: [u8; 32],
}

/// Record flag: a local record (the segment cleaner moving blocks). It changes
/// where bytes live, not what the filesystem holds, so it does not take a new
/// sequence number and is never replicated; its `seq` is the last applied one.
pub(crate) const RECORD_LOCAL: u16 = 1;

/// Record flag: the store's position jumps to this record's `seq` (the end of a
/// resync, which brought the store to the peer's state at that seq). No ops.
pub(crate) const RECORD_JUMP: u16 = 2;

/// Encodes a mutation as one log record. Returns the bytes, the serialised ops and
/// where each data block lands inside the record.
pub(crate) fn encode_record(
    m: &Mutation,
    flags: u16,
) -> (Vec<u8>, Vec<LogOp>, Vec<BlockPlacement>) {
    let mut payload_len = 0usize;
    let mut log_ops = Vec::with_capacity(m.ops.len());
    let mut digests = Vec::new();
    for op in &m.ops {
        log_ops.push(op.map_block(|data| {
            let digest = *blake3::hash(data).as_bytes();
            digests.push(digest);
            payload_len += data.len();
            BlockMeta {
                len: data.len() as u32,
                digest,
            }
        }));
    }
    // postcard cannot fail for these plain types; a failure here is a programming error.
    let meta = postcard::to_stdvec(&log_ops).expect("log ops serialise");
    let meta_len = meta.len() as u32;
    let prefix = RecordHeader::prefix(m.seq, flags, meta_len, payload_len as u32);
    let mut h = blake3::Hasher::new();
    h.update(&prefix);
    h.update(&meta);
    let mut buf = Vec::with_capacity(HEADER_LEN + meta.len() + payload_len);
    buf.extend_from_slice(&prefix);
    buf.extend_from_slice(h.finalize().as_bytes());
    buf.resize(HEADER_LEN, 0);
    buf.extend_from_slice(&meta);
    let mut placements = Vec::with_capacity(digests.len());
    let mut d = digests.into_iter();
    for op in &m.ops {
        if let Op::PutBlock { ino, idx, data } = op {
            placements.push(BlockPlacement {
                ino: *ino,
                idx: *idx,
                offset: buf.len() as u64,
                len: data.len() as u32,
                digest: d.next().unwrap_or_default(),
            });
            buf.extend_from_slice(data);
        }
    }
    (buf, log_ops, placements)
}

/// Decodes the ops part of a record whose header and hash were checked.
pub(crate) fn decode_meta(meta: &[u8]) -> Option<Vec<LogOp>> {
    postcard::from_bytes(meta).ok()
}

/// Computes where the blocks of decoded ops sit inside their record.
pub(crate) fn placements(hdr: &RecordHeader, ops: &[LogOp]) -> Vec<BlockPlacement> {
    let mut off = HEADER_LEN as u64 + u64::from(hdr.meta_len);
    let mut out = Vec::new();
    for op in ops {
        if let LogOp::PutBlock {
            ino,
            idx,
            data: BlockMeta { len, digest },
        } = op
        {
            out.push(BlockPlacement {
                ino: *ino,
                idx: *idx,
                offset: off,
                len: *len,
                digest: *digest,
            });
            off += u64::from(*len);
        }
    }
    out
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FileKind, Timestamp};

    #[test]
    fn record_round_trip() {
        let m = Mutation {
            seq: Seq(7),
            ops: vec![
                Op::PutInode(
                    Ino(2),
                    Inode::new(FileKind::File, 0o644, 1, 1, Timestamp::default()),
                ),
                Op::PutBlock {
                    ino: Ino(2),
                    idx: 0,
                    data: vec![1, 2, 3],
                },
                Op::PutBlock {
                    ino: Ino(2),
                    idx: 5,
                    data: vec![9; 100],
                },
                Op::TruncBlocks {
                    ino: Ino(2),
                    from: 6,
                },
            ],
        };
        let (buf, ops, pl) = encode_record(&m, 0);
        let hdr = RecordHeader::parse(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(hdr.seq, Seq(7));
        assert_eq!(hdr.total_len(), buf.len() as u64);
        let meta = &buf[HEADER_LEN..HEADER_LEN + hdr.meta_len as usize];
        assert!(hdr.check_meta(meta));
        let decoded = decode_meta(meta).unwrap();
        assert_eq!(decoded, ops);
        assert_eq!(placements(&hdr, &decoded), pl);
        assert_eq!(&buf[pl[1].offset as usize..][..100], &[9u8; 100][..]);
        // A flipped byte in the ops is detected.
        let mut bad = buf.clone();
        bad[HEADER_LEN] ^= 1;
        assert!(!hdr.check_meta(&bad[HEADER_LEN..HEADER_LEN + hdr.meta_len as usize]));
    }

    #[test]
    fn wire_round_trip_and_damage() {
        let m = Mutation {
            seq: Seq(9),
            ops: vec![
                Op::NextIno(5),
                Op::PutBlock {
                    ino: Ino(3),
                    idx: 1,
                    data: vec![7; 1000],
                },
                Op::TruncBlocks {
                    ino: Ino(3),
                    from: 4,
                },
                Op::PutBlock {
                    ino: Ino(4),
                    idx: 0,
                    data: b"hello".to_vec(),
                },
            ],
        };
        let wire = m.to_wire();
        assert_eq!(Mutation::from_wire(&wire), Some(m.clone()));
        for cut in [0, 10, HEADER_LEN, wire.len() - 1] {
            assert_eq!(Mutation::from_wire(&wire[..cut]), None, "cut at {cut}");
        }
        let mut longer = wire.clone();
        longer.push(0);
        assert_eq!(Mutation::from_wire(&longer), None);
        let mut flipped = wire.clone();
        *flipped.last_mut().unwrap() ^= 1; // block bytes no longer match their digest
        assert_eq!(Mutation::from_wire(&flipped), None);
        let local = encode_record(&m, RECORD_LOCAL).0;
        assert_eq!(
            Mutation::from_wire(&local),
            None,
            "local records never travel"
        );
    }

    #[test]
    fn garbage_header_is_not_a_record() {
        assert!(RecordHeader::parse(&[0u8; HEADER_LEN]).is_none());
        let mut b = [0xffu8; HEADER_LEN];
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        b[4..6].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        assert!(
            RecordHeader::parse(&b).is_none(),
            "absurd lengths are rejected"
        );
    }
}
