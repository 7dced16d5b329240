//! The index write of one record: its changes go into sled key by key, in an
//! order that keeps every crash point consistent, the "applied" position last.

use super::*; // a part of `disk`: its types, helpers and imports

impl DiskStore {
    /// Writes the index changes of one record into sled ("applied" last).
    pub(super) fn index(
        &self,
        ops: &[LogOp],
        pl: &[BlockPlacement],
        seq: Seq,
        segment: u32,
        rec_off: u64,
        end: u64,
    ) -> Result<(), StoreError> {
        // Ops are applied in order to an overlay first, so that a range delete in
        // the same batch also removes keys that an earlier op of the batch inserted.
        let mut overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut blocks = pl.iter();
        let range_delete =
            |overlay: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>, lo: Vec<u8>, hi: Vec<u8>| {
                for kv in self.db.range(lo.clone()..hi.clone()) {
                    let (k, _) = kv?;
                    overlay.insert(k.to_vec(), None);
                }
                for (_, v) in overlay.range_mut(lo..hi) {
                    *v = None;
                }
                Ok::<(), StoreError>(())
            };
        for op in ops {
            match op {
                LogOp::PutInode(ino, rec) => {
                    overlay.insert(key(K_INODE, *ino), Some(encode(rec)));
                }
                LogOp::DelInode(ino) => {
                    overlay.insert(key(K_INODE, *ino), None);
                    range_delete(
                        &mut overlay,
                        key(K_BLOCK, *ino),
                        key(K_BLOCK, Ino(ino.0 + 1)),
                    )?;
                    range_delete(
                        &mut overlay,
                        key(K_XATTR, *ino),
                        key(K_XATTR, Ino(ino.0 + 1)),
                    )?;
                }
                LogOp::PutDirent {
                    parent,
                    name,
                    entry,
                } => {
                    overlay.insert(key_name(K_DIRENT, *parent, name), Some(encode(entry)));
                    overlay.insert(key2(K_COOKIE, *parent, entry.cookie), Some(name.clone()));
                }
                LogOp::DelDirent {
                    parent,
                    name,
                    cookie,
                } => {
                    overlay.insert(key_name(K_DIRENT, *parent, name), None);
                    // The readdir slot goes only if it still names this entry: a
                    // resync may already have given the cookie to another name.
                    let ck = key2(K_COOKIE, *parent, *cookie);
                    let slot = match overlay.get(&ck) {
                        Some(v) => v.clone(),
                        None => self.db.get(&ck)?.map(|v| v.to_vec()),
                    };
                    if slot.as_deref() == Some(name.as_slice()) {
                        overlay.insert(ck, None);
                    }
                }
                LogOp::PutBlock { .. } => {
                    let p = blocks.next().ok_or_else(|| StoreError::BadRecord {
                        key: format!("seq {seq}"),
                        reason: "block placement missing".into(),
                    })?;
                    let r = BlockRef {
                        segment,
                        offset: rec_off + p.offset,
                        len: p.len,
                        digest: p.digest,
                    };
                    overlay.insert(key2(K_BLOCK, p.ino, p.idx), Some(encode(&r)));
                }
                LogOp::TruncBlocks { ino, from } => {
                    range_delete(
                        &mut overlay,
                        key2(K_BLOCK, *ino, *from),
                        key(K_BLOCK, Ino(ino.0 + 1)),
                    )?;
                }
                LogOp::PutXattr { ino, name, value } => {
                    overlay.insert(key_name(K_XATTR, *ino, name), Some(value.clone()));
                }
                LogOp::DelXattr { ino, name } => {
                    overlay.insert(key_name(K_XATTR, *ino, name), None);
                }
                LogOp::NextIno(n) => {
                    overlay.insert(META_NEXT_INO.to_vec(), Some(n.to_be_bytes().to_vec()));
                }
                LogOp::PutOrphan(ino) => {
                    overlay.insert(key(K_ORPHAN, *ino), Some(Vec::new()));
                }
                LogOp::DelOrphan(ino) => {
                    overlay.insert(key(K_ORPHAN, *ino), None);
                }
                LogOp::DelBlock { ino, idx } => {
                    overlay.insert(key2(K_BLOCK, *ino, *idx), None);
                }
                LogOp::Wipe => {
                    for prefix in [K_INODE, K_DIRENT, K_COOKIE, K_BLOCK, K_XATTR, K_ORPHAN] {
                        range_delete(&mut overlay, vec![prefix], vec![prefix + 1])?;
                    }
                }
            }
        }
        let applied = Applied {
            seq: seq.0,
            segment,
            end,
        };
        overlay.insert(META_APPLIED.to_vec(), Some(encode(&applied)));
        // Not a sled::Batch: sled 0.34 rolls and writes its IO buffer (with a waiting
        // sync_file_range) for every batch, which put ~0.8 ms of disk wait into every
        // write. Atomicity comes from our log instead: sled recovers a prefix of its
        // operations, "applied" is written last, and replay re-applies the whole record
        // of any mutation whose "applied" sled did not keep. The order below also keeps
        // concurrent readers from seeing a name before its inode, or an inode deleted
        // before its name.
        let mut ordered: Vec<(u8, Vec<u8>, Option<Vec<u8>>)> = overlay
            .into_iter()
            .map(|(k, v)| (write_rank(&k, v.is_some()), k, v))
            .collect();
        ordered.sort_by_key(|(rank, _, _)| *rank);
        // Live-byte accounting for the cleaner, from the values each write replaces.
        let mut deltas: Vec<(u32, i64)> = Vec::new();
        // Readers of a standby's mount wait here: they see all of it or none.
        let gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        for (_, k, v) in ordered {
            let is_block = k.first() == Some(&K_BLOCK);
            if let (true, Some(v)) = (is_block, &v) {
                let r: BlockRef = decode(&k, v)?;
                deltas.push((r.segment, i64::from(r.len)));
            }
            let old = match v {
                Some(v) => self.db.insert(&k, v)?,
                None => self.db.remove(&k)?,
            };
            if let (true, Some(old)) = (is_block, old) {
                let r: BlockRef = decode(&k, &old)?;
                deltas.push((r.segment, -i64::from(r.len)));
            }
        }
        drop(gate);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for (seg, d) in deltas {
            let e = live.entry(seg).or_insert(0);
            *e = e.saturating_add_signed(d);
        }
        Ok(())
    }
}

/// The order in which one mutation's index writes reach sled (see `index`).
pub(super) fn write_rank(key: &[u8], put: bool) -> u8 {
    match (key.first().copied(), put) {
        (Some(K_COOKIE), false) => 0,
        (Some(K_DIRENT), false) => 1,
        (Some(K_META), _) if key == META_APPLIED => 7,
        (Some(K_META), _) => 6,
        (Some(K_DIRENT), true) => 3,
        (Some(K_COOKIE), true) => 4,
        (_, true) => 2,
        (_, false) => 5,
    }
}
