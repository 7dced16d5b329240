//! Reading the store: the [`Store`] trait's lookups and the iterators that
//! offline verification uses.

use super::*; // a part of `disk`: its types, helpers and imports

impl DiskStore {
    /// Iterates over the block index: `(ino, idx, where)`, for offline verification.
    pub(crate) fn blocks(
        &self,
    ) -> impl Iterator<Item = Result<(Ino, u64, BlockRef), StoreError>> + '_ {
        self.db.scan_prefix([K_BLOCK]).map(|kv| {
            let (k, v) = kv?;
            let ino = Ino(u64::from_be_bytes(k[1..9].try_into().unwrap_or_default()));
            let idx = u64::from_be_bytes(k[9..17].try_into().unwrap_or_default());
            Ok((ino, idx, decode::<BlockRef>(&k, &v)?))
        })
    }

    /// Reads the raw bytes of a block reference and checks them against the digest.
    pub(crate) fn read_ref(&self, ino: Ino, idx: u64, r: &BlockRef) -> Result<Vec<u8>, StoreError> {
        let file = self.segment(r.segment)?;
        let mut buf = vec![0u8; r.len as usize];
        let corrupt = || StoreError::Corrupt {
            ino,
            idx,
            segment: self.segment_path(r.segment),
            offset: r.offset,
        };
        match file.read_exact_at(&mut buf, r.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Err(corrupt()),
            Err(e) => return Err(StoreError::io(self.segment_path(r.segment), e)),
        }
        if *blake3::hash(&buf).as_bytes() != r.digest {
            return Err(corrupt());
        }
        Ok(buf)
    }

    /// All directory entries, for building paths in reports: `(parent, name, child)`.
    pub(crate) fn all_dirents(
        &self,
    ) -> impl Iterator<Item = Result<(Ino, Vec<u8>, DirEntry), StoreError>> + '_ {
        self.db.scan_prefix([K_DIRENT]).map(|kv| {
            let (k, v) = kv?;
            let parent = Ino(u64::from_be_bytes(k[1..9].try_into().unwrap_or_default()));
            Ok((parent, k[9..].to_vec(), decode::<DirEntry>(&k, &v)?))
        })
    }
}

impl Store for DiskStore {
    fn apply(&self, m: &Mutation) -> Result<(), StoreError> {
        self.apply_returning_record(m).map(drop)
    }

    fn last_applied(&self) -> Seq {
        Seq(self.last.load(Ordering::SeqCst))
    }

    fn sync(&self) -> Result<(), StoreError> {
        let _s = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        let dirty: Vec<u32> = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            if w.dirty.contains(&w.segment) {
                // Before the fdatasync below, which then covers the zeros too.
                self.extend_tail(&mut w);
            }
            std::mem::take(&mut w.dirty).into_iter().collect()
        };
        for id in dirty {
            let f = self.segment(id)?;
            if let Err(e) = f.sync_data() {
                // Keep it dirty: a later sync must try again (and fail again, visibly).
                self.writer
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .dirty
                    .insert(id);
                return Err(StoreError::io(self.segment_path(id), e));
            }
        }
        Ok(())
    }

    fn inode(&self, ino: Ino) -> Result<Option<Inode>, StoreError> {
        let k = key(K_INODE, ino);
        self.db.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn dirent(&self, parent: Ino, name: &[u8]) -> Result<Option<DirEntry>, StoreError> {
        let k = key_name(K_DIRENT, parent, name);
        self.db.get(&k)?.map(|v| decode(&k, &v)).transpose()
    }

    fn read_dir(
        &self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, DirEntry)>, StoreError> {
        let lo = key2(K_COOKIE, parent, after.saturating_add(1));
        let hi = key(K_COOKIE, Ino(parent.0 + 1));
        let mut out = Vec::new();
        for kv in self.db.range(lo..hi) {
            if out.len() >= limit {
                break;
            }
            let (_, name) = kv?;
            // A cookie is written after its entry and removed before it, so a cookie
            // without an entry is a mutation in flight on another thread: skip it.
            if let Some(e) = self.dirent(parent, &name)? {
                out.push((name.to_vec(), e));
            }
        }
        Ok(out)
    }

    fn block(&self, ino: Ino, idx: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let k = key2(K_BLOCK, ino, idx);
        // Two tries: the cleaner may move the block and delete its old segment
        // between our index read and our segment open.
        for attempt in 0..2 {
            let Some(v) = self.db.get(&k)? else {
                return Ok(None);
            };
            let r: BlockRef = decode(&k, &v)?;
            match self.read_ref(ino, idx, &r) {
                Err(StoreError::Io { source, .. })
                    if attempt == 0 && source.kind() == ErrorKind::NotFound =>
                {
                    continue
                }
                other => return other.map(Some),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn xattr(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get(key_name(K_XATTR, ino, name))?
            .map(|v| v.to_vec()))
    }

    fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>, StoreError> {
        self.db
            .scan_prefix(key(K_XATTR, ino))
            .map(|kv| Ok(kv?.0[9..].to_vec()))
            .collect()
    }

    fn next_ino(&self) -> Result<u64, StoreError> {
        Ok(match self.db.get(META_NEXT_INO)? {
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0, 0, 0, 0, 0, 0, 0, 2]))
            }
            None => 2,
        })
    }

    fn orphans(&self) -> Result<Vec<Ino>, StoreError> {
        self.db
            .scan_prefix([K_ORPHAN])
            .map(|kv| {
                Ok(Ino(u64::from_be_bytes(
                    kv?.0[1..9].try_into().unwrap_or_default(),
                )))
            })
            .collect()
    }

    fn name_of(&self, ino: Ino) -> Result<Option<(Ino, Vec<u8>)>, StoreError> {
        for e in self.all_dirents() {
            let (parent, name, entry) = e?;
            if entry.ino == ino {
                return Ok(Some((parent, name)));
            }
        }
        Ok(None)
    }

    fn read_gate(&self) -> Option<std::sync::RwLockReadGuard<'_, ()>> {
        Some(self.gate.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn usage(&self) -> Result<Usage, StoreError> {
        let s = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|e| StoreError::io(&self.dir, std::io::Error::from_raw_os_error(e as i32)))?;
        Ok(Usage {
            frsize: s.fragment_size() as u32,
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
        })
    }
}
