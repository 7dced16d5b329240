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
//!
//! This file holds the layout, the types and opening; the rest is split by concern:
//! `append` (the write path), `index` (the sled write of one record), `replay`
//! (recovery at open), `read` (lookups), `clean` (the cleaner and the
//! checkpointer) and `resync` (what a resync reads and writes).

mod append;
mod clean;
mod index;
mod read;
mod replay;
mod resync;

use super::{Store, Usage};
use crate::error::StoreError;
use crate::mutation::{
    data_bytes, decode_meta, encode_record, placements, BlockPlacement, LogOp, Mutation, Op,
    RecordHeader, HEADER_LEN, RECORD_JUMP, RECORD_LOCAL,
};
use crate::types::{DirEntry, Ino, Inode, Seq};
pub use clean::Checkpointer;
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
    /// Held for writing while one record's index changes go into sled; a
    /// standby's mount holds it for reading during each request, so that
    /// its readers see a mutation whole or not at all (`crate::view`).
    gate: RwLock<()>,
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
            gate: RwLock::new(()),
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

impl Drop for DiskStore {
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "final checkpoint failed; the log will be replayed at the next open");
        }
    }
}
