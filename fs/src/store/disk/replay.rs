//! Opening a store after a crash: reading records back, re-applying those
//! after the position the index recovered, cutting a torn tail, and counting
//! the live bytes of each segment.

use super::*; // a part of `disk`: its types, helpers and imports

impl DiskStore {
    /// Reads one complete, valid record at `off`, or `None` if there is none (end of log or torn).
    pub(super) fn read_record(
        file: &File,
        off: u64,
        len: u64,
    ) -> Option<(RecordHeader, Vec<LogOp>, Vec<u8>)> {
        if off + HEADER_LEN as u64 > len {
            return None;
        }
        let mut hb = [0u8; HEADER_LEN];
        file.read_exact_at(&mut hb, off).ok()?;
        let hdr = RecordHeader::parse(&hb)?;
        if off + hdr.total_len() > len {
            return None;
        }
        let mut rest = vec![0u8; (hdr.total_len() - HEADER_LEN as u64) as usize];
        file.read_exact_at(&mut rest, off + HEADER_LEN as u64)
            .ok()?;
        let meta = &rest[..hdr.meta_len as usize];
        if !hdr.check_meta(meta) {
            return None;
        }
        let ops = decode_meta(meta)?;
        Some((hdr, ops, rest))
    }

    /// Whether bytes `from..to` of `file` are all zero (the pre-written tail).
    pub(super) fn all_zero(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
        let mut buf = vec![0u8; (TAIL_CHUNK as usize).min(to.saturating_sub(from) as usize)];
        let mut off = from;
        while off < to {
            let n = buf.len().min((to - off) as usize);
            file.read_exact_at(&mut buf[..n], off)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            off += n as u64;
        }
        Ok(true)
    }

    /// Re-applies the records after `applied` (the position sled recovered) and cuts a torn tail.
    pub(super) fn replay(&mut self, applied: Applied) -> Result<(), StoreError> {
        let ids = self.segment_ids()?;
        let (mut seg, mut off, mut last) = (applied.segment, applied.end, applied.seq);
        let mut replayed = 0u64;
        for &id in ids.iter().filter(|&&id| id >= applied.segment) {
            if id != seg {
                // Records continue in the next segment only if the previous one ended cleanly.
                seg = id;
                off = 0;
            }
            let path = self.segment_path(id);
            let file = Self::open_segment_file(&self.log_dir, id, false)?;
            let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
            if off > len {
                return Err(StoreError::BadRecord {
                    key: path.display().to_string(),
                    reason: format!(
                        "the index references the log up to offset {off} but the segment ends at {len}: \
                         log data was lost (a disk that ignored flushes?); run `twinfs verify`"
                    ),
                });
            }
            let mut torn = false;
            let mut padded = false;
            while off < len {
                let Some((hdr, ops, rest)) = Self::read_record(&file, off, len) else {
                    torn = true;
                    break;
                };
                // A jump may go back: a resync target that had written on its
                // own takes the peer's (lower) position.
                let in_order = if hdr.flags & RECORD_JUMP != 0 {
                    true
                } else if hdr.flags & RECORD_LOCAL != 0 {
                    hdr.seq.0 == last
                } else {
                    hdr.seq.0 == last + 1
                };
                if !in_order {
                    torn = true;
                    break;
                }
                let pl = placements(&hdr, &ops);
                let intact = pl.iter().all(|p| {
                    let start = p.offset as usize - HEADER_LEN;
                    rest.get(start..start + p.len as usize)
                        .is_some_and(|d| *blake3::hash(d).as_bytes() == p.digest)
                });
                if !intact {
                    torn = true;
                    break;
                }
                let end = off + hdr.total_len();
                self.index(&ops, &pl, hdr.seq, id, off, end)?;
                last = hdr.seq.0;
                off = end;
                replayed += 1;
            }
            if torn && Self::all_zero(&file, off, len).map_err(|e| StoreError::io(&path, e))? {
                // The pre-written zeros past the last record (see the module docs): a
                // clean end, whether this is the active segment or one sealed just
                // before a crash. Cut them so the file ends at its records.
                torn = false;
                padded = true;
            }
            if padded {
                tracing::debug!(segment = %path.display(), offset = off, padding = len - off, "cutting zero padding after the last log record");
                file.set_len(off).map_err(|e| StoreError::io(&path, e))?;
                file.sync_all().map_err(|e| StoreError::io(&path, e))?;
            }
            if torn {
                tracing::warn!(segment = %path.display(), offset = off, "cutting torn log tail after a crash");
                file.set_len(off).map_err(|e| StoreError::io(&path, e))?;
                file.sync_all().map_err(|e| StoreError::io(&path, e))?;
                for &later in ids.iter().filter(|&&l| l > id) {
                    let p = self.segment_path(later);
                    tracing::warn!(segment = %p.display(), "removing log segment after a torn tail");
                    std::fs::remove_file(&p).map_err(|e| StoreError::io(&p, e))?;
                }
                break;
            }
        }
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                last_seq = last,
                "replayed the log after an unclean shutdown"
            );
        }
        let w = self.writer.get_mut().unwrap_or_else(|p| p.into_inner());
        if w.segment != seg {
            w.segment = seg;
            w.file = Arc::new(Self::open_segment_file(&self.log_dir, seg, true)?);
        }
        w.end = off;
        // Every byte past `off` was cut above (torn tail or padding), so the file ends here.
        w.written = off;
        w.synced_end = off;
        self.last.store(last, Ordering::SeqCst);
        if replayed > 0 {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Recomputes the live bytes of every segment from the block index.
    pub(super) fn recount_live(&self) -> Result<(), StoreError> {
        let mut live = HashMap::new();
        for b in self.blocks() {
            let (_, _, r) = b?;
            *live.entry(r.segment).or_insert(0u64) += u64::from(r.len);
        }
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
        Ok(())
    }

    /// Test hook: makes pre-writing the log tail fail as on a full disk.
    #[cfg(test)]
    pub(crate) fn fail_zeroing(&self, on: bool) {
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail_zeroing = on;
    }

    /// The active segment and the end of its records (where the next one goes).
    pub(crate) fn records_end(&self) -> (u32, u64) {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        (w.segment, w.end)
    }
}
