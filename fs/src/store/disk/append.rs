//! The append path: sealing segments, pre-writing the tail, the free-space
//! reserve, appending records (replicated, prepared or local), checkpoints.

use super::*; // a part of `disk`: its types, helpers and imports

impl DiskStore {
    /// Closes the active segment and starts the next one. The closed segment is
    /// cut back to the end of its records (its pre-written zeros go): sealed
    /// segments end where their records end. The next sync makes that durable.
    pub(super) fn seal(&self, w: &mut LogWriter) -> Result<(), StoreError> {
        if w.written > w.end {
            let path = self.segment_path(w.segment);
            match w.file.set_len(w.end) {
                Ok(()) => {
                    w.dirty.insert(w.segment);
                }
                // Only padding stays: a reopen cuts it, and nothing reads past the records.
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "could not cut the zero padding of a sealed log segment")
                }
            }
        }
        let next = w.segment + 1;
        w.file = Arc::new(Self::open_segment_file(&self.log_dir, next, true)?);
        w.segment = next;
        w.end = 0;
        w.written = 0;
        w.synced_end = 0;
        Ok(())
    }

    /// Pre-writes zeros past the active segment's records when the append position
    /// is near the end of what the file holds (see the module docs), so that the
    /// next small appends and their syncs change no file size. The caller holds the
    /// writer lock and syncs the segment afterwards.
    ///
    /// Only for small syncs: when more than `TAIL_LOW` was appended since the last
    /// sync (a bulk write, the cleaner's relocations), this sync pays for a new file
    /// size anyway and zeros would only double the disk writes. Only an
    /// optimisation: on a full disk (or near the space reserve) it is skipped.
    pub(super) fn extend_tail(&self, w: &mut LogWriter) {
        let appended = w.end.saturating_sub(w.synced_end);
        w.synced_end = w.end;
        if appended > TAIL_LOW {
            return;
        }
        // Sized so that about one sync in TAIL_SYNCS_PER_CHUNK writes zeros, and
        // renewed when a quarter is left.
        let chunk = (appended * TAIL_SYNCS_PER_CHUNK)
            .div_ceil(TAIL_CHUNK)
            .clamp(1, TAIL_CHUNK_MAX / TAIL_CHUNK)
            * TAIL_CHUNK;
        if w.written.saturating_sub(w.end) >= chunk / 4 {
            return;
        }
        let from = w.written.max(w.end);
        let to = (from + chunk).min(self.opts.segment_max);
        if to <= from {
            return;
        }
        let n = to - from;
        // Zeros must not eat into the reserve kept for what frees space.
        if let Some(r) = &mut w.space {
            if r.free.saturating_sub(r.spent + n) < 2 * r.reserve {
                return;
            }
            r.spent += n;
        }
        match Self::write_zeros(w, from, n) {
            Ok(()) => w.written = to,
            Err(e) => {
                // Whatever part was written is zeros past the records: harmless padding.
                tracing::debug!(segment = %self.segment_path(w.segment).display(), error = %e, "skipping the pre-written log tail");
            }
        }
    }

    /// Writes `n` zero bytes at `from` into the active segment.
    pub(super) fn write_zeros(w: &LogWriter, from: u64, n: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if w.fail_zeroing {
            // As a full disk would: part of the zeros written, then ENOSPC.
            let half = (n / 2).min(TAIL_CHUNK) as usize;
            w.file.write_all_at(&ZEROS[..half], from)?;
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let mut off = from;
        while off < from + n {
            let k = (from + n - off).min(TAIL_CHUNK);
            w.file.write_all_at(&ZEROS[..k as usize], off)?;
            off += k;
        }
        Ok(())
    }

    /// Fails with [`StoreError::NoSpace`] when the free space of the store's disk
    /// has fallen into the reserve.
    ///
    /// The disk is asked at most once a second while the last reading, minus
    /// what was written since, stays well above the reserve (`bytes` is about to
    /// be written); near the reserve it is asked every time.
    pub(super) fn check_reserve(&self, w: &mut LogWriter, bytes: u64) -> Result<(), StoreError> {
        if let Some(r) = &mut w.space {
            let left = r.free.saturating_sub(r.spent + bytes);
            if r.at.elapsed() < Duration::from_secs(1) && left >= 2 * r.reserve {
                r.spent += bytes;
                return Ok(());
            }
        }
        let s = nix::sys::statvfs::statvfs(&self.log_dir).map_err(|e| {
            StoreError::io(&self.log_dir, std::io::Error::from_raw_os_error(e as i32))
        })?;
        let frsize = s.fragment_size() as u64;
        let total = s.blocks() as u64 * frsize;
        let free = s.blocks_available() as u64 * frsize;
        // 2% of the disk, at least 8 MiB, at most 256 MiB.
        let reserve = (total / 50).clamp(8 << 20, 256 << 20);
        w.space = Some(SpaceReading {
            at: std::time::Instant::now(),
            free,
            reserve,
            spent: bytes,
        });
        if free < reserve + bytes.min(reserve) {
            tracing::warn!(free, reserve, "no space left for data on the store's disk");
            return Err(StoreError::NoSpace {
                path: self.segment_path(w.segment),
            });
        }
        Ok(())
    }

    /// Appends one record and indexes it. The caller holds the writer lock.
    pub(super) fn append(
        &self,
        w: &mut LogWriter,
        m: &Mutation,
        flags: u16,
    ) -> Result<(), StoreError> {
        let (buf, ops, pl) = encode_record(m, flags);
        self.append_encoded(w, &buf, &ops, &pl, m.seq)?;
        Ok(())
    }

    /// Appends an encoded record and indexes it. The caller holds the writer lock.
    pub(super) fn append_encoded(
        &self,
        w: &mut LogWriter,
        buf: &[u8],
        ops: &[LogOp],
        pl: &[BlockPlacement],
        seq: Seq,
    ) -> Result<(), StoreError> {
        self.append_encoded_then(w, buf, ops, pl, seq, || {})
    }

    /// [`DiskStore::append_encoded`], calling `logged` once the record is in the
    /// log (written, counted for the next sync) and before it is indexed.
    pub(super) fn append_encoded_then(
        &self,
        w: &mut LogWriter,
        buf: &[u8],
        ops: &[LogOp],
        pl: &[BlockPlacement],
        seq: Seq,
        logged: impl FnOnce(),
    ) -> Result<(), StoreError> {
        if w.end > 0 && w.end + buf.len() as u64 > self.opts.segment_max {
            self.seal(w)?;
        }
        let path = self.segment_path(w.segment);
        if let Err(e) = w.file.write_all_at(buf, w.end) {
            // Nothing references the partial bytes; cut them (and any zeros past
            // them) so the next record starts clean.
            let _ = w.file.set_len(w.end);
            w.written = w.end;
            return Err(StoreError::io(path, e));
        }
        let (seg, off) = (w.segment, w.end);
        let end = off + buf.len() as u64;
        w.written = w.written.max(end);
        // From here on the record is in the log: the next sync covers it, and a
        // restart replays it if the index below does not get it. If indexing it
        // fails half way (sled writes are not one batch), the index must not be
        // trusted or extended: the store refuses further mutations, and the next
        // open replays this record whole.
        w.end = end;
        w.dirty.insert(seg);
        self.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(seg)
            .or_insert_with(|| w.file.clone());
        logged();
        let indexed = self.index(ops, pl, seq, seg, off, end);
        if let Err(e) = indexed {
            self.poisoned.store(true, Ordering::SeqCst);
            tracing::error!(error = %e, seq = seq.0, "index write failed; refusing further changes until restart");
            return Err(e);
        }
        Ok(())
    }

    /// [`Store::apply`], also returning the mutation's log record, which is
    /// exactly its wire form ([`Mutation::to_wire`]): a primary ships it without
    /// encoding (and hashing) the data a second time.
    pub fn apply_returning_record(&self, m: &Mutation) -> Result<Vec<u8>, StoreError> {
        let (record, prepared) = self.prepare(m)?;
        self.append_prepared(prepared, &record)?;
        Ok(record)
    }

    /// The first half of [`Store::apply`]: checks that `m` follows the last
    /// applied mutation and that the disk has room, and encodes its log record
    /// (which is also its wire form). Nothing is written. The caller holds the
    /// filesystem's writer lock until [`DiskStore::append_prepared`] is done.
    ///
    /// A primary ships the record to its peer between the two calls, so that
    /// both stores write it at the same time (DRBD's order).
    pub fn prepare(&self, m: &Mutation) -> Result<(Vec<u8>, PreparedRecord), StoreError> {
        {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            self.check_next(&w, m.seq)?;
            // Keep a reserve for what frees space: unlinks, truncates and the
            // cleaner's relocations must still fit on a disk that data writes
            // have filled.
            let data = data_bytes(&m.ops);
            if data > 0 {
                self.check_reserve(&mut w, data)?;
            }
        }
        let (buf, ops, pl) = encode_record(m, 0);
        Ok((
            buf,
            PreparedRecord {
                seq: m.seq,
                ops,
                pl,
            },
        ))
    }

    /// The second half of [`Store::apply`]: appends the record that
    /// [`DiskStore::prepare`] returned (`record`, unchanged) and indexes it.
    pub fn append_prepared(&self, p: PreparedRecord, record: &[u8]) -> Result<(), StoreError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.check_next(&w, p.seq)?;
        self.append_next(&mut w, record, &p.ops, &p.pl, p.seq, || {})
    }

    /// Appends the record of the next mutation `seq` (checked by the caller)
    /// and indexes it, calling `logged` in between; the store's position
    /// moves to `seq`. The caller holds the writer lock.
    pub(super) fn append_next(
        &self,
        w: &mut LogWriter,
        record: &[u8],
        ops: &[LogOp],
        pl: &[BlockPlacement],
        seq: Seq,
        logged: impl FnOnce(),
    ) -> Result<(), StoreError> {
        let r = self.append_encoded_then(w, record, ops, pl, seq, logged);
        if r.is_ok() || self.poisoned.load(Ordering::SeqCst) {
            // Poisoned: the record is in the log and will be replayed, so its seq is used.
            self.last.store(seq.0, Ordering::SeqCst);
        }
        r
    }

    /// Refuses every later change until the store is reopened
    /// ([`StoreError::Poisoned`]); reads go on. A primary calls this when its
    /// own write of a mutation it already shipped failed: the two stores must
    /// not go on with different contents under the same numbers.
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Applies a mutation received in its wire form (its log record) by writing
    /// the record as it is: one pass over the data to check the block digests,
    /// no re-encoding. Returns its seq.
    pub fn apply_wire(&self, bytes: &[u8]) -> Result<Seq, StoreError> {
        self.apply_wire_then(bytes, |_| {})
    }

    /// [`DiskStore::apply_wire`], calling `logged` with the record's seq as soon
    /// as the record is in the log, before its index entries are written (the
    /// larger part of the work for a big record). A secondary acknowledges the
    /// mutation there: what the acknowledgement promises (the record reached
    /// this store; a later sync makes it durable) already holds, because a
    /// restart replays every logged record the index does not have. Reads and
    /// the next mutation still wait for the index (the writer lock is held).
    /// If indexing then fails, the store is poisoned as in `apply_wire`.
    pub fn apply_wire_then(
        &self,
        bytes: &[u8],
        logged: impl FnOnce(Seq),
    ) -> Result<Seq, StoreError> {
        let bad = |reason: &str| StoreError::BadRecord {
            key: "mutation from the peer".into(),
            reason: reason.into(),
        };
        let hb: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("shorter than a record header"))?;
        let hdr = RecordHeader::parse(hb).ok_or_else(|| bad("not a record header"))?;
        if hdr.flags != 0 || hdr.total_len() != bytes.len() as u64 {
            return Err(bad("flags or length do not match"));
        }
        let meta = &bytes[HEADER_LEN..HEADER_LEN + hdr.meta_len as usize];
        if !hdr.check_meta(meta) {
            return Err(bad("header hash mismatch"));
        }
        let ops = decode_meta(meta).ok_or_else(|| bad("undecodable ops"))?;
        let pl = placements(&hdr, &ops);
        let intact = pl.iter().all(|p| {
            bytes
                .get(p.offset as usize..p.offset as usize + p.len as usize)
                .is_some_and(|d| *blake3::hash(d).as_bytes() == p.digest)
        });
        if !intact
            || pl
                .last()
                .is_some_and(|p| p.offset + u64::from(p.len) != hdr.total_len())
        {
            return Err(bad("block bytes do not match their digests"));
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.check_next(&w, hdr.seq)?;
        if pl.iter().any(|p| p.len > 0) {
            self.check_reserve(&mut w, bytes.len() as u64)?;
        }
        self.append_next(&mut w, bytes, &ops, &pl, hdr.seq, || logged(hdr.seq))
            .map(|()| hdr.seq)
    }

    /// Refuses a mutation that does not follow the last applied one, or any
    /// mutation once the store is poisoned.
    pub(super) fn check_next(&self, _w: &LogWriter, seq: Seq) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Poisoned);
        }
        let last = self.last.load(Ordering::SeqCst);
        if seq.0 != last + 1 {
            return Err(StoreError::OutOfOrder { last, got: seq.0 });
        }
        Ok(())
    }

    /// Makes the log durable, then flushes sled and fsyncs its files, so that a
    /// restart replays nothing. Runs periodically and at unmount.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.sync()?;
        self.db.flush()?;
        // sled's flush uses sync_file_range, which does not flush the disk's write
        // cache (sled issue #1452): fsync its files ourselves.
        let meta = self.dir.join("meta");
        fsync_tree(&meta)?;
        Ok(())
    }
}
