//! The on-disk store: an append-only mutation log plus a sled index.
//!
//! ```text
//! DIR/store.toml              format marker (refuse what we cannot read)
//! DIR/LOCK                    flock'ed while a process has the store open
//! DIR/log/seg-00000001.log    mutation records, appended; file data lives here
//! DIR/meta/                   sled: inodes, dirents, block index, xattrs, "applied"
//! ```
//!
//! Write path ([`Store::apply`]): the mutation is encoded as one record and
//! appended to the active segment with a single `pwrite`, then the index changes
//! go into sled key by key, the new "applied" position last (see `index`).
//! [`Store::sync`] is one `fdatasync` per segment written since the last sync, so
//! an application's fsync costs what a native fsync costs. sled itself is flushed
//! and its files fsynced only at checkpoints ([`DiskStore::checkpoint`]): after a
//! crash, the index is whatever sled recovered, and every log record after the
//! recovered "applied" position is replayed. Records are self-checking (blake3 over
//! header and ops, plus each block's digest), so a torn tail is recognised and cut.
//!
//! Pre-written tail: a small sync that finds the append position near the end
//! of what the active segment file holds first writes 1 to 8 MiB of zeros past
//! it (sized so that about one sync in 256 does this), in the same `fdatasync`. The small appends that follow then overwrite
//! bytes inside the file, and their `fdatasync` flushes data only instead of
//! also journalling a new file size (about half the latency on ext4). The zeros
//! are only padding: the log's logical end is always the end of its records
//! (`LogWriter::end`), a sealed segment is cut back to its records, and at open
//! an all-zero rest of a segment is a clean end (cut silently), not a torn tail.

mod resync;

use super::{Store, Usage};
use crate::error::StoreError;
use crate::mutation::{
    data_bytes, decode_meta, encode_record, placements, BlockPlacement, LogOp, Mutation, Op,
    RecordHeader, HEADER_LEN, RECORD_JUMP, RECORD_LOCAL,
};
use crate::types::{DirEntry, Ino, Inode, Seq};
pub use resync::{store_key_of, KeySet, RecordDigest, DAMAGED};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The store format this build reads and writes.
pub const STORE_FORMAT: u32 = 1;

/// A segment is closed and a new one started once it would grow past this size.
pub const SEGMENT_MAX: u64 = 256 << 20;

/// The cleaner writes relocated blocks in records of about this size.
const CLEAN_RECORD_BYTES: usize = 4 << 20;

/// Zeros are pre-written in whole multiples of this (see the module docs).
const TAIL_CHUNK: u64 = 1 << 20;

/// At most this many zeros are pre-written at once.
const TAIL_CHUNK_MAX: u64 = 8 << 20;

/// A sync that follows more appended bytes than this pre-writes no zeros (a bulk write).
const TAIL_LOW: u64 = 256 << 10;

/// Syncs per zero-writing sync that the chunk size aims at: the sync that also
/// writes zeros is slower, and it must stay out of the 99th latency percentile.
const TAIL_SYNCS_PER_CHUNK: u64 = 256;

/// The zeros of one [`TAIL_CHUNK`] (in zero-initialised memory, not in the binary).
static ZEROS: [u8; TAIL_CHUNK as usize] = [0; TAIL_CHUNK as usize];

/// Tunables of a [`DiskStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Size at which a log segment is sealed and a new one started.
    pub segment_max: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_max: SEGMENT_MAX,
        }
    }
}

/// What one run of the segment cleaner did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Segments deleted.
    pub segments_removed: u64,
    /// Bytes of live blocks copied to the head of the log.
    pub bytes_moved: u64,
    /// Bytes of disk space given back.
    pub bytes_freed: u64,
}

/// Space used by the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogUsage {
    /// Number of segment files.
    pub segments: u64,
    /// Bytes in all segments.
    pub total_bytes: u64,
    /// Bytes of block data the index still references.
    pub live_bytes: u64,
}

const K_INODE: u8 = b'I';
const K_DIRENT: u8 = b'D';
const K_COOKIE: u8 = b'C';
const K_BLOCK: u8 = b'B';
const K_XATTR: u8 = b'X';
const K_ORPHAN: u8 = b'O';
const K_META: u8 = b'M';
const META_APPLIED: &[u8] = b"Mapplied";
const META_NEXT_INO: &[u8] = b"Mnext_ino";

/// Where a data block lives in the log, and its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlockRef {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) digest: [u8; 32],
}

/// The last applied mutation and where the log continues after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
struct Applied {
    seq: u64,
    segment: u32,
    end: u64,
}

/// Opens the sled index. The caller holds the store's `LOCK`, so no other
/// store has this index open; sled's own file lock can only still be held by a
/// store of this process that was just dropped (sled's IO threads let go of it
/// a moment after the drop), so a busy lock is waited for, up to 2 s.
fn open_index(path: &Path) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(path)
        .mode(sled::Mode::HighThroughput)
        .cache_capacity(256 << 20)
        // We flush sled at our own checkpoints, after the log is durable; see the module docs.
        .flush_every_ms(None);
    for _ in 0..200 {
        match config.open() {
            // sled reports it as an `Other` error naming the lock.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return Ok(r?),
        }
    }
    Ok(config.open()?)
}

fn key(tag: u8, ino: Ino) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag);
    k.extend_from_slice(&ino.0.to_be_bytes());
    k
}

fn key2(tag: u8, ino: Ino, n: u64) -> Vec<u8> {
    let mut k = key(tag, ino);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn key_name(tag: u8, ino: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = key(tag, ino);
    k.extend_from_slice(name);
    k
}

fn decode<T: for<'a> Deserialize<'a>>(k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(v).map_err(|e| StoreError::BadRecord {
        key: format!("{k:?}"),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // postcard cannot fail on our plain record types.
    postcard::to_stdvec(v).expect("record serialises")
}

pub(crate) fn segment_name(id: u32) -> String {
    format!("seg-{id:08}.log")
}

/// The append position of the log.
struct LogWriter {
    segment: u32,
    file: Arc<File>,
    /// The end of the records: where the next one is appended. Never the file length.
    end: u64,
    /// How far the active segment file is known to be written (records, then zeros):
    /// at least `end`. Appends below it overwrite bytes and change no file size.
    written: u64,
    /// `end` at the last sync (0 after a seal): what a sync finds appended since.
    synced_end: u64,
    /// Test hook: makes pre-writing zeros fail as on a full disk.
    #[cfg(test)]
    fail_zeroing: bool,
    /// Segments written since the last sync.
    dirty: BTreeSet<u32>,
    /// The last free-space reading, so that not every write pays a statvfs.
    space: Option<SpaceReading>,
}

/// A mutation checked and encoded by [`DiskStore::prepare`], waiting to be
/// appended by [`DiskStore::append_prepared`].
#[derive(Debug)]
pub struct PreparedRecord {
    seq: Seq,
    ops: Vec<LogOp>,
    pl: Vec<BlockPlacement>,
}

impl PreparedRecord {
    /// The mutation's sequence number.
    pub fn seq(&self) -> Seq {
        self.seq
    }
}

/// Free space as last read, and what was written since.
#[derive(Clone, Copy, Debug)]
struct SpaceReading {
    at: std::time::Instant,
    free: u64,
    reserve: u64,
    spent: u64,
}

/// The store used by a mount: see the module docs for the layout.
pub struct DiskStore {
    dir: PathBuf,
    log_dir: PathBuf,
    db: sled::Db,
    writer: Mutex<LogWriter>,
    segments: RwLock<HashMap<u32, Arc<File>>>,
    last: AtomicU64,
    sync_lock: Mutex<()>,
    /// Live (referenced) block bytes per segment; drives the cleaner.
    live: Mutex<HashMap<u32, u64>>,
    clean_lock: Mutex<()>,
    /// Set when an index write failed after its record reached the log.
    poisoned: std::sync::atomic::AtomicBool,
    /// Records with a seq above this are kept by the cleaner (a resync may need
    /// to know what they changed); `u64::MAX` keeps none back.
    pub(crate) retain_floor: AtomicU64,
    opts: StoreOptions,
    _lock: nix::fcntl::Flock<File>,
}

impl std::fmt::Debug for DiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStore")
            .field("dir", &self.dir)
            .field("last", &self.last)
            .finish()
    }
}

/// Reads `DIR/store.toml` (if present) and checks the format number.
fn check_format(dir: &Path) -> Result<bool, StoreError> {
    let path = dir.join("store.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let format = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("format")
                .map(|r| r.trim_start().trim_start_matches('=').trim())
        })
        .unwrap_or("<missing>");
    if format != STORE_FORMAT.to_string() {
        return Err(StoreError::IncompatibleFormat {
            path,
            found: format.to_string(),
            supported: STORE_FORMAT,
        });
    }
    Ok(true)
}

/// Mode of every file the store creates: the store holds every file's data,
/// whatever the files' own modes on the mount say (issue 13: private to root).
pub(crate) const FILE_MODE: u32 = 0o600;
/// Mode of every directory the store creates.
pub(crate) const DIR_MODE: u32 = 0o700;

/// `OpenOptions` for a store file: created [`FILE_MODE`] (before the umask,
/// which can only take bits away).
fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Creates `path` (and missing parents) [`DIR_MODE`].
fn private_dir(path: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|e| StoreError::io(path, e))
}

/// Takes group and other bits off `path` and everything under it. For sled's
/// index directory: sled creates its files with the default mode (0644 under a
/// umask of 022), and it is not told otherwise.
fn restrict_tree(path: &Path) -> Result<(), StoreError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| StoreError::io(path, e))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))
            .map_err(|e| StoreError::io(path, e))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| StoreError::io(path, e))? {
            let entry = entry.map_err(|e| StoreError::io(path, e))?;
            restrict_tree(&entry.path())?;
        }
    }
    Ok(())
}

fn fsync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(path, e))
}

impl DiskStore {
    /// Opens the store in `dir`, creating a new one if `dir` is empty.
    ///
    /// `dir` must exist. A directory that is neither empty nor a store is refused, as
    /// is a store of another format; in both cases nothing is written. After an
    /// unclean shutdown, the log records the index has not yet absorbed are replayed.
    pub fn open(dir: &Path) -> Result<DiskStore, StoreError> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// [`DiskStore::open`] with explicit tunables.
    pub fn open_with(dir: &Path, opts: StoreOptions) -> Result<DiskStore, StoreError> {
        let meta = std::fs::metadata(dir).map_err(|e| StoreError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(StoreError::io(
                dir,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let exists = check_format(dir)?;
        if !exists {
            let mut entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
            if entries.next().is_some() {
                return Err(StoreError::NotAStore {
                    path: dir.to_path_buf(),
                });
            }
        }
        // Take the lock before creating anything, so two processes never initialise together.
        let lock_path = dir.join("LOCK");
        let lock_file = private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked {
                path: lock_path.clone(),
            })?;
        let log_dir = dir.join("log");
        if !exists {
            private_dir(&log_dir)?;
            let marker = dir.join("store.toml");
            let text = format!(
                "# twinfs store marker: do not edit\nformat = {STORE_FORMAT}\nblock_size = {}\n",
                crate::BLOCK_SIZE
            );
            let tmp = dir.join("store.toml.tmp");
            private_file()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, text.as_bytes())?;
                    f.sync_all()
                })
                .map_err(|e| StoreError::io(&tmp, e))?;
            std::fs::rename(&tmp, &marker).map_err(|e| StoreError::io(&marker, e))?;
            fsync_dir(dir)?;
        }
        // sled creates its directory with the default mode: make it first, private.
        let index_dir = dir.join("meta");
        private_dir(&index_dir)?;
        let db = open_index(&index_dir)?;
        restrict_tree(&index_dir)?;
        let applied: Applied = match db.get(META_APPLIED)? {
            Some(v) => decode(META_APPLIED, &v)?,
            None => Applied {
                seq: 0,
                segment: 1,
                end: 0,
            },
        };
        let mut store = DiskStore {
            dir: dir.to_path_buf(),
            log_dir: log_dir.clone(),
            db,
            writer: Mutex::new(LogWriter {
                segment: applied.segment,
                file: Arc::new(Self::open_segment_file(&log_dir, applied.segment, true)?),
                end: applied.end,
                written: applied.end,
                synced_end: applied.end,
                #[cfg(test)]
                fail_zeroing: false,
                dirty: BTreeSet::new(),
                space: None,
            }),
            segments: RwLock::new(HashMap::new()),
            last: AtomicU64::new(applied.seq),
            sync_lock: Mutex::new(()),
            live: Mutex::new(HashMap::new()),
            clean_lock: Mutex::new(()),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            retain_floor: AtomicU64::new(u64::MAX),
            opts,
            _lock: lock,
        };
        store.replay(applied)?;
        store.recount_live()?;
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_segment_file(log_dir: &Path, id: u32, create: bool) -> Result<File, StoreError> {
        let path = log_dir.join(segment_name(id));
        let f = private_file()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        if create {
            fsync_dir(log_dir)?;
        }
        Ok(f)
    }

    /// The path of segment `id`.
    pub fn segment_path(&self, id: u32) -> PathBuf {
        self.log_dir.join(segment_name(id))
    }

    fn segment(&self, id: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(f.clone());
        }
        let f = Arc::new(Self::open_segment_file(&self.log_dir, id, false)?);
        self.segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, f.clone());
        Ok(f)
    }

    /// Segment ids present in the log directory, ascending.
    fn segment_ids(&self) -> Result<Vec<u32>, StoreError> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir(&self.log_dir).map_err(|e| StoreError::io(&self.log_dir, e))? {
            let e = e.map_err(|e| StoreError::io(&self.log_dir, e))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_prefix("seg-")
                .and_then(|r| r.strip_suffix(".log"))
            {
                if let Ok(id) = id.parse() {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads one complete, valid record at `off`, or `None` if there is none (end of log or torn).
    fn read_record(file: &File, off: u64, len: u64) -> Option<(RecordHeader, Vec<LogOp>, Vec<u8>)> {
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
    fn all_zero(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
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
    fn replay(&mut self, applied: Applied) -> Result<(), StoreError> {
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

    /// Writes the index changes of one record into sled ("applied" last).
    fn index(
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
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for (seg, d) in deltas {
            let e = live.entry(seg).or_insert(0);
            *e = e.saturating_add_signed(d);
        }
        Ok(())
    }

    /// Recomputes the live bytes of every segment from the block index.
    fn recount_live(&self) -> Result<(), StoreError> {
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

    /// Space used by the log.
    ///
    /// The active segment counts up to the end of its records, not its pre-written zeros.
    pub fn log_usage(&self) -> Result<LogUsage, StoreError> {
        let mut u = LogUsage::default();
        let active = self.records_end();
        for id in self.segment_ids()? {
            let p = self.segment_path(id);
            u.segments += 1;
            u.total_bytes += match active {
                (seg, end) if seg == id => end,
                _ => std::fs::metadata(&p)
                    .map_err(|e| StoreError::io(&p, e))?
                    .len(),
            };
        }
        u.live_bytes = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum();
        Ok(u)
    }

    /// The segment cleaner: gives back the space of overwritten and deleted data.
    ///
    /// Sealed segments whose live blocks fill at most half of them are emptied: their
    /// live blocks are appended again at the head of the log (as local records, which
    /// take no sequence number and are never replicated), a checkpoint makes the new
    /// index durable, and only then are the old segment files deleted. At most about
    /// `budget` bytes are copied per call. A segment holding a damaged block is kept,
    /// so that `twinfs verify` still reports it.
    pub fn clean(&self, budget: u64) -> Result<CleanStats, StoreError> {
        let _c = self.clean_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.poisoned.load(Ordering::SeqCst) {
            return Ok(CleanStats::default());
        }
        let (stats, victims) = self.relocate(budget)?;
        self.drop_segments(stats, victims)
    }

    /// First half of [`DiskStore::clean`]: copies the live blocks of the chosen
    /// segments to the head of the log and returns the segments that are now empty.
    pub(crate) fn relocate(
        &self,
        budget: u64,
    ) -> Result<(CleanStats, Vec<(u32, u64)>), StoreError> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let active = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            // Seal a mostly dead active segment early, so that a small store whose
            // files were rewritten or deleted gets its space back too.
            let l = live.get(&w.segment).copied().unwrap_or(0);
            if w.end >= (self.opts.segment_max / 16).max(64 << 10) && l.saturating_mul(2) <= w.end {
                self.seal(&mut w)?;
            }
            w.segment
        };
        let mut candidates = Vec::new();
        let ids = self.segment_ids()?;
        for (i, id) in ids
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, id)| id < active)
        {
            // Records a resync may still need to list stay (see `set_retain_floor`).
            let next = ids.get(i + 1).copied().filter(|&n| n != active);
            if !self.may_drop(next.and_then(|n| self.first_seq(n))) {
                continue;
            }
            let p = self.segment_path(id);
            let size = std::fs::metadata(&p)
                .map_err(|e| StoreError::io(&p, e))?
                .len();
            let l = live.get(&id).copied().unwrap_or(0);
            if l.saturating_mul(2) <= size {
                candidates.push((l, id, size));
            }
        }
        candidates.sort_unstable();
        let mut stats = CleanStats::default();
        let mut victims = Vec::new();
        for (l, id, size) in candidates {
            if stats.bytes_moved + l > budget && !victims.is_empty() {
                break;
            }
            // Scan without the writer lock: writers only ever add references into the
            // active segment, so a reference into `id` found now stays valid until we
            // move it (re-checked under the lock below).
            let refs: Vec<(Ino, u64, BlockRef)> = self
                .blocks()
                .filter(|b| !matches!(b, Ok((_, _, r)) if r.segment != id))
                .collect::<Result<_, _>>()?;
            let mut intact = true;
            for chunk in refs.chunks(64) {
                let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                let mut ops = Vec::new();
                for (ino, idx, r) in chunk {
                    let k = key2(K_BLOCK, *ino, *idx);
                    if self
                        .db
                        .get(&k)?
                        .map(|v| decode::<BlockRef>(&k, &v))
                        .transpose()?
                        != Some(*r)
                    {
                        continue;
                    }
                    match self.read_ref(*ino, *idx, r) {
                        Ok(data) => {
                            stats.bytes_moved += data.len() as u64;
                            ops.push(Op::PutBlock {
                                ino: *ino,
                                idx: *idx,
                                data,
                            });
                        }
                        Err(e @ StoreError::Corrupt { .. }) => {
                            tracing::error!(error = %e, "keeping a log segment that holds a damaged block");
                            intact = false;
                        }
                        Err(e) => return Err(e),
                    }
                    if ops
                        .iter()
                        .map(|o| {
                            if let Op::PutBlock { data, .. } = o {
                                data.len()
                            } else {
                                0
                            }
                        })
                        .sum::<usize>()
                        >= CLEAN_RECORD_BYTES
                    {
                        let seq = Seq(self.last.load(Ordering::SeqCst));
                        self.append(
                            &mut w,
                            &Mutation {
                                seq,
                                ops: std::mem::take(&mut ops),
                            },
                            RECORD_LOCAL,
                        )?;
                    }
                }
                if !ops.is_empty() {
                    let seq = Seq(self.last.load(Ordering::SeqCst));
                    self.append(&mut w, &Mutation { seq, ops }, RECORD_LOCAL)?;
                }
            }
            if intact {
                victims.push((id, size));
            }
        }
        Ok((stats, victims))
    }

    /// Second half of [`DiskStore::clean`]: checkpoint, then delete the emptied segments.
    pub(crate) fn drop_segments(
        &self,
        mut stats: CleanStats,
        victims: Vec<(u32, u64)>,
    ) -> Result<CleanStats, StoreError> {
        if victims.is_empty() {
            return Ok(stats);
        }
        // The index must no longer need the victims, durably, before they go.
        self.checkpoint()?;
        for (id, size) in victims {
            let p = self.segment_path(id);
            self.segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            std::fs::remove_file(&p).map_err(|e| StoreError::io(&p, e))?;
            self.live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            stats.segments_removed += 1;
            stats.bytes_freed += size;
        }
        fsync_dir(&self.log_dir)?;
        tracing::info!(
            segments = stats.segments_removed,
            moved = stats.bytes_moved,
            freed = stats.bytes_freed,
            "log cleaned"
        );
        Ok(stats)
    }

    /// Closes the active segment and starts the next one. The closed segment is
    /// cut back to the end of its records (its pre-written zeros go): sealed
    /// segments end where their records end. The next sync makes that durable.
    fn seal(&self, w: &mut LogWriter) -> Result<(), StoreError> {
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
    fn extend_tail(&self, w: &mut LogWriter) {
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
    fn write_zeros(w: &LogWriter, from: u64, n: u64) -> std::io::Result<()> {
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
    fn check_reserve(&self, w: &mut LogWriter, bytes: u64) -> Result<(), StoreError> {
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
    fn append(&self, w: &mut LogWriter, m: &Mutation, flags: u16) -> Result<(), StoreError> {
        let (buf, ops, pl) = encode_record(m, flags);
        self.append_encoded(w, &buf, &ops, &pl, m.seq)?;
        Ok(())
    }

    /// Appends an encoded record and indexes it. The caller holds the writer lock.
    fn append_encoded(
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
    fn append_encoded_then(
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
    fn append_next(
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
    fn check_next(&self, _w: &LogWriter, seq: Seq) -> Result<(), StoreError> {
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

/// The order in which one mutation's index writes reach sled (see `index`).
fn write_rank(key: &[u8], put: bool) -> u8 {
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

fn fsync_tree(path: &Path) -> Result<(), StoreError> {
    let rd = std::fs::read_dir(path).map_err(|e| StoreError::io(path, e))?;
    for e in rd {
        let e = e.map_err(|e| StoreError::io(path, e))?;
        let p = e.path();
        let ft = e.file_type().map_err(|e| StoreError::io(&p, e))?;
        if ft.is_dir() {
            fsync_tree(&p)?;
        } else if ft.is_file() {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::io(&p, e))?;
        }
    }
    fsync_dir(path)
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

impl Drop for DiskStore {
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "final checkpoint failed; the log will be replayed at the next open");
        }
    }
}

/// Bytes the background cleaner copies per round at most.
const CLEAN_BUDGET: u64 = 256 << 20;

/// Runs [`DiskStore::checkpoint`] and the segment cleaner every `interval` until dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the background checkpoint thread.
    pub fn spawn(store: Arc<DiskStore>, interval: Duration) -> Checkpointer {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("twinfs-checkpoint".into())
            .spawn(move || {
                let mut done = store.last_applied();
                // Ends when the sender is dropped (or sends).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(interval)
                {
                    let now = store.last_applied();
                    if now != done {
                        match store.checkpoint() {
                            Ok(()) => done = now,
                            Err(e) => tracing::error!(error = %e, "checkpoint failed"),
                        }
                    }
                    if let Err(e) = store.clean(CLEAN_BUDGET) {
                        tracing::error!(error = %e, "log cleaning failed; will retry");
                    }
                }
            })
            .ok();
        Checkpointer {
            stop: Some(tx),
            thread,
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
