//! What a resync needs from the store: which records changed since a point in
//! the history, their current values as ops, and a way to apply a peer's values
//! without taking sequence numbers.
//!
//! The log is the persistent record of changes: every mutation is one record,
//! in seq order, and its ops name the store keys it wrote. So "what changed
//! since seq F" is the set of keys named by the records after F, read from the
//! log (headers and ops only, not the data). The cleaner keeps every record
//! above the retain floor the node sets, so that this set survives restarts and
//! crashes. A resync ships the *current* value of each key once, however often
//! it was written.

use super::{
    decode, key, key2, BlockRef, DiskStore, K_BLOCK, K_DIRENT, K_INODE, K_ORPHAN, K_XATTR,
};
use crate::error::StoreError;
use crate::mutation::{
    decode_meta, LogOp, Mutation, Op, RecordHeader, StoreKey, HEADER_LEN, RECORD_JUMP, RECORD_LOCAL,
};
use crate::store::Store;
use crate::types::{Ino, Seq};
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

/// The keys a resync must ship.
pub type KeySet = BTreeSet<StoreKey>;

impl DiskStore {
    /// Keeps the log records with a seq above `floor` from the cleaner.
    pub fn set_retain_floor(&self, floor: Seq) {
        self.retain_floor.store(floor.0, Ordering::SeqCst);
    }

    /// Whether the cleaner may delete sealed segment `id`, whose successor in
    /// the log is `next` (`None`: the active segment follows, empty or not).
    pub(crate) fn may_drop(&self, next_first_seq: Option<u64>) -> bool {
        let floor = self.retain_floor.load(Ordering::SeqCst);
        // Every record of a segment has a seq at most the first seq of the next one.
        let bound = next_first_seq.unwrap_or_else(|| self.last.load(Ordering::SeqCst));
        bound <= floor
    }

    /// The seq of the first record of segment `id`, if it has one.
    pub(crate) fn first_seq(&self, id: u32) -> Option<u64> {
        let file = self.segment(id).ok()?;
        let mut hb = [0u8; HEADER_LEN];
        file.read_exact_at(&mut hb, 0).ok()?;
        RecordHeader::parse(&hb).map(|h| h.seq.0)
    }

    /// The keys written by the mutations after `floor`, from the log.
    ///
    /// `None` when the log cannot tell: records after `floor` were cleaned away,
    /// or the store jumped over them in a resync. The caller then does a full resync.
    pub fn changed_keys_since(&self, floor: Seq) -> Result<Option<KeySet>, StoreError> {
        // The last seq and the end of the records that hold it, read together: the
        // scan stops there, not at the file's length (zeros are pre-written past it).
        let (last, active, records_end) = {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            (self.last.load(Ordering::SeqCst), w.segment, w.end)
        };
        let mut keys = KeySet::new();
        if last <= floor.0 {
            return Ok(Some(keys));
        }
        let mut next_expected = None::<u64>;
        for id in self.segment_ids()?.into_iter().filter(|&id| id <= active) {
            let path = self.segment_path(id);
            let file = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
            let len = if id == active {
                records_end
            } else {
                file.metadata().map_err(|e| StoreError::io(&path, e))?.len()
            };
            let mut off = 0u64;
            while off + HEADER_LEN as u64 <= len {
                let mut hb = [0u8; HEADER_LEN];
                if file.read_exact_at(&mut hb, off).is_err() {
                    break;
                }
                let Some(hdr) = RecordHeader::parse(&hb) else {
                    break;
                };
                let seq = hdr.seq.0;
                if hdr.flags & RECORD_JUMP != 0 {
                    if seq > floor.0 {
                        // What came in through that resync is not in this log.
                        return Ok(None);
                    }
                    // The history restarts at `seq`: what came before is superseded.
                    keys.clear();
                    next_expected = None;
                }
                if hdr.flags & (RECORD_LOCAL | RECORD_JUMP) == 0 && seq > floor.0 {
                    if next_expected.is_none() && seq != floor.0 + 1 {
                        // The first record after the floor is gone (cleaned).
                        return Ok(None);
                    }
                    next_expected = Some(seq + 1);
                    let mut meta = vec![0u8; hdr.meta_len as usize];
                    file.read_exact_at(&mut meta, off + HEADER_LEN as u64)
                        .map_err(|e| StoreError::io(&path, e))?;
                    if !hdr.check_meta(&meta) {
                        return Err(StoreError::BadRecord {
                            key: format!("{} offset {off}", path.display()),
                            reason: "record hash mismatch while listing changes".into(),
                        });
                    }
                    let ops: Vec<LogOp> =
                        decode_meta(&meta).ok_or_else(|| StoreError::BadRecord {
                            key: format!("{} offset {off}", path.display()),
                            reason: "undecodable ops while listing changes".into(),
                        })?;
                    keys.extend(ops.iter().map(LogOp::key));
                }
                off += hdr.total_len();
            }
        }
        if next_expected != Some(last + 1) {
            return Ok(None);
        }
        Ok(Some(keys))
    }

    /// The current values of `keys` as ops, in chunks of about `chunk_bytes` of
    /// block data, handed to `emit` in order. A key whose record is absent
    /// becomes a delete. With `full`, the first chunk starts with [`Op::Wipe`]
    /// and every record of the store is shipped, whatever `keys` says.
    pub fn resync_ops(
        &self,
        keys: &KeySet,
        full: bool,
        chunk_bytes: usize,
        mut emit: impl FnMut(Vec<Op>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        let mut push = |op: Op, chunk: &mut Vec<Op>, bytes: &mut usize| -> Result<(), StoreError> {
            if let Op::PutBlock { data, .. } = &op {
                *bytes += data.len();
            }
            *bytes += 64;
            chunk.push(op);
            if *bytes >= chunk_bytes {
                *bytes = 0;
                emit(std::mem::take(chunk))?;
            }
            Ok(())
        };
        let keys: KeySet = if full || keys.contains(&StoreKey::All) {
            push(Op::Wipe, &mut chunk, &mut bytes)?;
            self.all_keys()?
        } else {
            keys.clone()
        };
        for k in &keys {
            match k {
                StoreKey::Inode(ino) => match self.inode(*ino)? {
                    Some(i) => push(Op::PutInode(*ino, i), &mut chunk, &mut bytes)?,
                    None => push(Op::DelInode(*ino), &mut chunk, &mut bytes)?,
                },
                StoreKey::Dirent(parent, name) => match self.dirent(*parent, name)? {
                    Some(entry) => push(
                        Op::PutDirent {
                            parent: *parent,
                            name: name.clone(),
                            entry,
                        },
                        &mut chunk,
                        &mut bytes,
                    )?,
                    None => push(
                        Op::DelDirent {
                            parent: *parent,
                            name: name.clone(),
                            cookie: 0, // the target deletes its own cookie
                        },
                        &mut chunk,
                        &mut bytes,
                    )?,
                },
                StoreKey::Trunc(ino, from) => {
                    push(
                        Op::TruncBlocks {
                            ino: *ino,
                            from: *from,
                        },
                        &mut chunk,
                        &mut bytes,
                    )?;
                    for idx in self.block_indexes(*ino, *from)? {
                        if let Some(data) = self.block(*ino, idx)? {
                            push(
                                Op::PutBlock {
                                    ino: *ino,
                                    idx,
                                    data,
                                },
                                &mut chunk,
                                &mut bytes,
                            )?;
                        }
                    }
                }
                StoreKey::Block(ino, idx) => match self.block(*ino, *idx)? {
                    Some(data) => push(
                        Op::PutBlock {
                            ino: *ino,
                            idx: *idx,
                            data,
                        },
                        &mut chunk,
                        &mut bytes,
                    )?,
                    None => push(
                        Op::DelBlock {
                            ino: *ino,
                            idx: *idx,
                        },
                        &mut chunk,
                        &mut bytes,
                    )?,
                },
                StoreKey::Xattr(ino, name) => match self.xattr(*ino, name)? {
                    Some(value) => push(
                        Op::PutXattr {
                            ino: *ino,
                            name: name.clone(),
                            value,
                        },
                        &mut chunk,
                        &mut bytes,
                    )?,
                    None => push(
                        Op::DelXattr {
                            ino: *ino,
                            name: name.clone(),
                        },
                        &mut chunk,
                        &mut bytes,
                    )?,
                },
                StoreKey::Orphan(ino) => {
                    let op = if self.orphans()?.contains(ino) {
                        Op::PutOrphan(*ino)
                    } else {
                        Op::DelOrphan(*ino)
                    };
                    push(op, &mut chunk, &mut bytes)?;
                }
                StoreKey::NextIno => push(Op::NextIno(self.next_ino()?), &mut chunk, &mut bytes)?,
                StoreKey::All => {}
            }
        }
        if !chunk.is_empty() {
            emit(chunk)?;
        }
        Ok(())
    }

    /// Every record of the store as keys (for a full resync).
    fn all_keys(&self) -> Result<KeySet, StoreError> {
        let mut keys = KeySet::new();
        let ino_of = |k: &[u8]| Ino(u64::from_be_bytes(k[1..9].try_into().unwrap_or_default()));
        for kv in self.db.scan_prefix([K_INODE]) {
            let (k, _) = kv?;
            keys.insert(StoreKey::Inode(ino_of(&k)));
        }
        for kv in self.db.scan_prefix([K_DIRENT]) {
            let (k, _) = kv?;
            keys.insert(StoreKey::Dirent(ino_of(&k), k[9..].to_vec()));
        }
        for b in self.blocks() {
            let (ino, idx, _) = b?;
            keys.insert(StoreKey::Block(ino, idx));
        }
        for kv in self.db.scan_prefix([K_XATTR]) {
            let (k, _) = kv?;
            keys.insert(StoreKey::Xattr(ino_of(&k), k[9..].to_vec()));
        }
        for kv in self.db.scan_prefix([K_ORPHAN]) {
            let (k, _) = kv?;
            keys.insert(StoreKey::Orphan(ino_of(&k)));
        }
        keys.insert(StoreKey::NextIno);
        Ok(keys)
    }

    /// The indexes of the blocks of `ino` from `from` on.
    fn block_indexes(&self, ino: Ino, from: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .db
            .range(key2(K_BLOCK, ino, from)..key(K_BLOCK, Ino(ino.0 + 1)))
        {
            let (k, v) = kv?;
            let _: BlockRef = decode(&k, &v)?;
            out.push(u64::from_be_bytes(k[9..17].try_into().unwrap_or_default()));
        }
        Ok(out)
    }

    /// The total length of the data blocks `keys` would ship (for progress).
    pub fn resync_size(&self, keys: &KeySet, full: bool) -> Result<u64, StoreError> {
        if full || keys.contains(&StoreKey::All) {
            let mut total = 0;
            for b in self.blocks() {
                total += u64::from(b?.2.len);
            }
            return Ok(total);
        }
        let mut total = 0u64;
        for k in keys {
            match k {
                StoreKey::Block(ino, idx) => {
                    let kk = key2(K_BLOCK, *ino, *idx);
                    if let Some(v) = self.db.get(&kk)? {
                        total += u64::from(decode::<BlockRef>(&kk, &v)?.len);
                    }
                }
                StoreKey::Trunc(ino, from) => {
                    for kv in self
                        .db
                        .range(key2(K_BLOCK, *ino, *from)..key(K_BLOCK, Ino(ino.0 + 1)))
                    {
                        let (k, v) = kv?;
                        total += u64::from(decode::<BlockRef>(&k, &v)?.len);
                    }
                }
                _ => total += 64,
            }
        }
        Ok(total)
    }

    /// Applies a peer's values (a resync chunk) as a local record: the store's
    /// position does not move; [`DiskStore::jump_to`] sets it at the end.
    ///
    /// Directory entries are reconciled with this store's readdir index: a
    /// deleted or replaced name also loses the cookie this store gave it.
    pub fn apply_local(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Poisoned);
        }
        let mut fixed = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::DelDirent { parent, name, .. } => {
                    if let Some(mine) = self.dirent(parent, &name)? {
                        fixed.push(Op::DelDirent {
                            parent,
                            name,
                            cookie: mine.cookie,
                        });
                    }
                }
                Op::PutDirent {
                    parent,
                    name,
                    entry,
                } => {
                    if let Some(mine) = self.dirent(parent, &name)? {
                        if mine.cookie != entry.cookie {
                            fixed.push(Op::DelDirent {
                                parent,
                                name: name.clone(),
                                cookie: mine.cookie,
                            });
                        }
                    }
                    fixed.push(Op::PutDirent {
                        parent,
                        name,
                        entry,
                    });
                }
                other => fixed.push(other),
            }
        }
        let data = crate::mutation::data_bytes(&fixed);
        if data > 0 {
            self.check_reserve(&mut w, data)?;
        }
        let seq = Seq(self.last.load(Ordering::SeqCst));
        self.append(&mut w, &Mutation { seq, ops: fixed }, RECORD_LOCAL)
    }

    /// Sets the store's position to `seq` (the end of a resync), durably after
    /// the next sync. It may go back: a node whose own changes a resync
    /// discarded takes the peer's position, and its own later seqs are void.
    pub fn jump_to(&self, seq: Seq) -> Result<(), StoreError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Poisoned);
        }
        self.append(
            &mut w,
            &Mutation {
                seq,
                ops: Vec::new(),
            },
            RECORD_JUMP,
        )?;
        self.last.store(seq.0, Ordering::SeqCst);
        Ok(())
    }
}

/// A record's digest as an online verify compares it: the sled key of the
/// record and blake3 of what it holds *now* (for a block, of the bytes read
/// back from the log, so damage on disk shows).
pub type RecordDigest = (Vec<u8>, [u8; 32]);

/// The digest given to a block that cannot be read back intact.
pub const DAMAGED: [u8; 32] = [0xff; 32];

impl DiskStore {
    /// Every record that defines the filesystem (inodes, entries, blocks,
    /// attributes, orphan marks, the next inode number), sorted by key, each
    /// with the digest of its current content. Reads every data block.
    pub fn content_digests(&self) -> Result<Vec<RecordDigest>, StoreError> {
        let mut out = Vec::new();
        for kv in self.db.iter() {
            let (k, v) = kv?;
            match k.first().copied() {
                Some(K_BLOCK) => {
                    let r: BlockRef = decode(&k, &v)?;
                    let ino = Ino(u64::from_be_bytes(k[1..9].try_into().unwrap_or_default()));
                    let idx = u64::from_be_bytes(k[9..17].try_into().unwrap_or_default());
                    let d = match self.read_ref(ino, idx, &r) {
                        Ok(data) => *blake3::hash(&data).as_bytes(),
                        Err(StoreError::Corrupt { .. }) => DAMAGED,
                        Err(StoreError::Io { source, .. })
                            if source.kind() == std::io::ErrorKind::NotFound =>
                        {
                            DAMAGED
                        }
                        Err(e) => return Err(e),
                    };
                    out.push((k.to_vec(), d));
                }
                Some(K_INODE | K_DIRENT | K_XATTR | K_ORPHAN) => {
                    out.push((k.to_vec(), *blake3::hash(&v).as_bytes()));
                }
                Some(super::K_META) if &*k == super::META_NEXT_INO => {
                    out.push((k.to_vec(), *blake3::hash(&v).as_bytes()));
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// The store key a record key from [`DiskStore::content_digests`] stands for.
pub fn store_key_of(k: &[u8]) -> Option<StoreKey> {
    let ino = || {
        k.get(1..9)
            .map(|b| Ino(u64::from_be_bytes(b.try_into().unwrap_or_default())))
    };
    match k.first().copied()? {
        K_BLOCK => Some(StoreKey::Block(
            ino()?,
            u64::from_be_bytes(k.get(9..17)?.try_into().ok()?),
        )),
        K_INODE => Some(StoreKey::Inode(ino()?)),
        K_DIRENT => Some(StoreKey::Dirent(ino()?, k.get(9..)?.to_vec())),
        K_XATTR => Some(StoreKey::Xattr(ino()?, k.get(9..)?.to_vec())),
        K_ORPHAN => Some(StoreKey::Orphan(ino()?)),
        _ if k == super::META_NEXT_INO => Some(StoreKey::NextIno),
        _ => None,
    }
}
