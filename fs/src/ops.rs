//! POSIX semantics on top of a [`Store`]: every operation that changes
//! something builds exactly one [`Mutation`] and applies it.
//!
//! Permission checks are the kernel's (the mount uses `default_permissions`),
//! so these functions check only what the kernel leaves to the filesystem:
//! existence, types, emptiness, name length, xattr flags, and the ownership
//! rules for new inodes (setgid directories).
//!
//! Mutations are serialised by one writer lock; reads never take it.

use crate::error::{FsError, StoreError};
use crate::mutation::{Mutation, Op};
use crate::store::{Store, Usage};
use crate::types::{DirEntry, FileKind, Ino, Inode, Seq, Timestamp, BLOCK_SIZE};
use crate::view::{Access, View};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Longest file name accepted (as ext4).
pub const NAME_MAX: usize = 255;
/// Largest file size accepted (as ext4 with 4 KiB blocks: 16 TiB).
pub const MAX_FILE_SIZE: u64 = 16 << 40;
/// Largest extended attribute value.
pub const XATTR_SIZE_MAX: usize = 64 * 1024;
/// Most links to one inode.
pub const LINK_MAX: u32 = 65_000;

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// Effective (fs) uid of the caller.
    pub uid: u32,
    /// Effective (fs) gid of the caller.
    pub gid: u32,
}

impl Ctx {
    /// The superuser.
    pub const ROOT: Ctx = Ctx { uid: 0, gid: 0 };
}

/// A time to set: a given value or "now".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// This time.
    At(Timestamp),
    /// The current time.
    Now,
}

/// The attributes a `setattr` changes; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (`mode & 0o7777` is used).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// New change time.
    pub ctime: Option<Timestamp>,
    /// Drop setuid, and setgid if the group may execute, as the kernel's own
    /// filesystems do on a chown, or on a truncate by a caller without
    /// CAP_FSETID (see [`Fs::write_as`]). Ignored when `mode` is given.
    pub kill_suidgid: bool,
}

/// The file capability attribute that a write, truncate or chown removes.
const XATTR_CAPS: &[u8] = b"security.capability";

/// `rename` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with EEXIST if the target exists.
    pub noreplace: bool,
    /// Atomically swap source and target (both must exist).
    pub exchange: bool,
}

/// One `readdir` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaddirEntry {
    /// The offset of this entry: pass it back to continue after it.
    pub offset: u64,
    /// The inode.
    pub ino: Ino,
    /// Its type.
    pub kind: FileKind,
    /// Its name.
    pub name: Vec<u8>,
}

/// Inodes read and changed while building one mutation.
struct Txn<'a, S: Store> {
    store: &'a S,
    inodes: BTreeMap<Ino, Inode>,
    dirty: BTreeMap<Ino, bool>,
    ops: Vec<Op>,
    now: Timestamp,
}

impl<'a, S: Store> Txn<'a, S> {
    fn new(store: &'a S) -> Self {
        Txn {
            store,
            inodes: BTreeMap::new(),
            dirty: BTreeMap::new(),
            ops: Vec::new(),
            now: Timestamp::now(),
        }
    }

    fn get(&mut self, ino: Ino) -> Result<Inode, FsError> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i.clone());
        }
        let i = self.store.inode(ino)?.ok_or(FsError::NotFound)?;
        self.inodes.insert(ino, i.clone());
        Ok(i)
    }

    fn dir(&mut self, ino: Ino) -> Result<Inode, FsError> {
        let d = self.get(ino)?;
        if d.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(d)
    }

    fn put(&mut self, ino: Ino, inode: Inode) {
        self.inodes.insert(ino, inode);
        self.dirty.insert(ino, true);
    }

    fn delete(&mut self, ino: Ino) {
        self.inodes.remove(&ino);
        self.dirty.insert(ino, false);
        self.ops.push(Op::DelInode(ino));
    }

    /// Adds `parent/name -> ino`, taking the next cookie of `parent`.
    fn link_entry(
        &mut self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        kind: FileKind,
    ) -> Result<(), FsError> {
        let mut p = self.dir(parent)?;
        let cookie = p.next_cookie;
        p.next_cookie += 1;
        p.mtime = self.now;
        p.ctime = self.now;
        self.put(parent, p);
        self.ops.push(Op::PutDirent {
            parent,
            name: name.to_vec(),
            entry: DirEntry { ino, kind, cookie },
        });
        Ok(())
    }

    fn unlink_entry(&mut self, parent: Ino, name: &[u8], entry: &DirEntry) -> Result<(), FsError> {
        let mut p = self.dir(parent)?;
        p.mtime = self.now;
        p.ctime = self.now;
        self.put(parent, p);
        self.ops.push(Op::DelDirent {
            parent,
            name: name.to_vec(),
            cookie: entry.cookie,
        });
        Ok(())
    }

    fn finish(mut self) -> Vec<Op> {
        for (ino, live) in std::mem::take(&mut self.dirty) {
            if live {
                if let Some(i) = self.inodes.remove(&ino) {
                    self.ops.push(Op::PutInode(ino, i));
                }
            }
        }
        self.ops
    }
}

/// The filesystem: POSIX operations over a store.
pub struct Fs<S: Store> {
    store: Arc<S>,
    /// Serialises mutations; holds the next inode number.
    writer: Mutex<u64>,
    /// Inodes the kernel holds: how many references, and (a few of) the
    /// names it looked them up by (entries the kernel may still use after
    /// an unlink, and what to invalidate when a resync replaces everything).
    lookups: Mutex<HashMap<Ino, Known>>,
    /// Read-write, or a standby's read-only view (see [`crate::view`]).
    view: Arc<View>,
}

/// A name the kernel found an inode by: (directory, name).
pub type KnownName = (Ino, Box<[u8]>);

/// An inode the kernel holds.
#[derive(Debug, Default)]
struct Known {
    count: u64,
    names: Vec<KnownName>,
}

/// The most names kept per known inode (hard links beyond are rare).
const NAMES_KEPT: usize = 4;

impl<S: Store> std::fmt::Debug for Fs<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs").finish_non_exhaustive()
    }
}

fn check_name(name: &[u8]) -> Result<(), FsError> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(FsError::Invalid);
    }
    Ok(())
}

impl<S: Store> Fs<S> {
    /// Opens the filesystem on `store`: creates the root directory of a new store
    /// and deletes inodes left unlinked-but-open by the previous mount.
    pub fn new(store: Arc<S>, root_uid: u32, root_gid: u32) -> Result<Fs<S>, FsError> {
        Fs::with_view(store, root_uid, root_gid, View::new(Access::ReadWrite))
    }

    /// [`Fs::new`] for a mount whose access `view` controls. A read-only
    /// view changes nothing at load (the root and the orphans wait for
    /// [`Fs::become_writable`]).
    pub fn with_view(
        store: Arc<S>,
        root_uid: u32,
        root_gid: u32,
        view: Arc<View>,
    ) -> Result<Fs<S>, FsError> {
        let next = store.next_ino()?;
        let fs = Fs {
            store,
            writer: Mutex::new(next),
            lookups: Mutex::new(HashMap::new()),
            view,
        };
        if fs.view.access() == Access::ReadWrite {
            fs.load_for_writing(root_uid, root_gid)?;
        }
        Ok(fs)
    }

    /// The mount's access.
    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    /// A standby's view becomes the primary's mount, in place: the writer
    /// takes the store's current next inode number (the peer's mutations
    /// moved it), a new store gets its root, and the orphans the kernel
    /// does not hold are deleted. Commits, so it must not run on the thread
    /// that acknowledges writes.
    pub fn become_writable(&self, root_uid: u32, root_gid: u32) -> Result<(), FsError> {
        {
            let mut w = self.lock();
            *w = self.store.next_ino()?;
        }
        self.view.set_access(Access::ReadWrite);
        self.load_for_writing(root_uid, root_gid)
    }

    /// Creates the root of a new store and deletes the orphans no kernel
    /// reference holds.
    fn load_for_writing(&self, root_uid: u32, root_gid: u32) -> Result<(), FsError> {
        let fs = self;
        if fs.store.inode(Ino::ROOT)?.is_none() {
            let mut root = Inode::new(FileKind::Dir, 0o755, root_uid, root_gid, Timestamp::now());
            root.parent = Ino::ROOT;
            let w = fs.lock();
            fs.commit(w, vec![Op::PutInode(Ino::ROOT, root), Op::NextIno(2)])?;
        }
        let held: Vec<Ino> = fs
            .lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let orphans: Vec<Ino> = fs
            .store
            .orphans()?
            .into_iter()
            .filter(|i| !held.contains(i))
            .collect();
        if !orphans.is_empty() {
            let w = fs.lock();
            let ops = orphans
                .iter()
                .flat_map(|&i| [Op::DelInode(i), Op::DelOrphan(i)])
                .collect();
            fs.commit(w, ops)?;
            tracing::info!(
                count = orphans.len(),
                "removed files that were unlinked while open"
            );
        }
        Ok(())
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `ops` as the next mutation, releases the writer lock, then waits
    /// until the mutation may be acknowledged (the replicated store waits for the
    /// peer there, so other writers are not held up by the round trip).
    fn commit(&self, w: MutexGuard<'_, u64>, ops: Vec<Op>) -> Result<Seq, FsError> {
        let seq = Seq(self.store.last_applied().0 + 1);
        self.store.apply(&Mutation { seq, ops })?;
        drop(w);
        self.store.wait_committed(seq)?;
        Ok(seq)
    }

    fn alloc_ino(w: &mut u64, t: &mut Txn<'_, S>) -> Ino {
        let ino = Ino(*w);
        *w += 1;
        t.ops.push(Op::NextIno(*w));
        ino
    }

    fn lookups_of(&self, ino: Ino) -> u64 {
        self.lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .map_or(0, |k| k.count)
    }

    /// Records that the kernel now holds one more reference to `ino`, which
    /// it found as `name` in `parent`.
    pub fn remember(&self, parent: Ino, name: &[u8], ino: Ino) {
        if ino != Ino::ROOT {
            let mut l = self.lookups.lock().unwrap_or_else(|p| p.into_inner());
            let k = l.entry(ino).or_default();
            k.count += 1;
            if k.names.len() < NAMES_KEPT
                && !k.names.iter().any(|(p, n)| *p == parent && **n == *name)
            {
                k.names.push((parent, name.into()));
            }
        }
    }

    /// The inodes the kernel holds, each with the names it found them by.
    pub fn known(&self) -> Vec<(Ino, Vec<KnownName>)> {
        self.lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(i, k)| (*i, k.names.clone()))
            .collect()
    }

    /// The kernel dropped `n` references to `ino`; an unlinked inode with none
    /// left is deleted (by a writable mount: a standby's is the primary's to delete).
    pub fn forget(&self, ino: Ino, n: u64) -> Result<(), FsError> {
        let gone = {
            let mut l = self.lookups.lock().unwrap_or_else(|p| p.into_inner());
            match l.get_mut(&ino) {
                Some(k) if k.count > n => {
                    k.count -= n;
                    false
                }
                Some(_) => {
                    l.remove(&ino);
                    true
                }
                None => false,
            }
        };
        if gone && self.view.access() == Access::ReadWrite {
            let w = self.lock();
            if let Some(i) = self.store.inode(ino)? {
                if i.nlink == 0 {
                    self.commit(w, vec![Op::DelInode(ino), Op::DelOrphan(ino)])?;
                }
            }
        }
        Ok(())
    }

    /// The path of `ino` inside the filesystem, for error reports (scans the
    /// directory entries: slow, use only on error paths).
    pub fn path_of(&self, ino: Ino) -> String {
        crate::verify::path_from(ino, |i| self.store.name_of(i).ok().flatten())
    }

    /// `stat`. A standby's view of a store the primary has not given a
    /// root yet shows an empty root directory.
    pub fn getattr(&self, ino: Ino) -> Result<Inode, FsError> {
        match self.store.inode(ino)? {
            Some(i) => Ok(i),
            None if ino == Ino::ROOT && self.view.access() != Access::ReadWrite => {
                let mut root = Inode::new(FileKind::Dir, 0o755, 0, 0, Timestamp::default());
                root.parent = Ino::ROOT;
                Ok(root)
            }
            None => Err(FsError::NotFound),
        }
    }

    /// Looks `name` up in `parent` (does not count a kernel reference; see [`Fs::remember`]).
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Inode), FsError> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        let p = self.getattr(parent)?;
        if p.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        let e = self.store.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        let i = self.store.inode(e.ino)?.ok_or_else(|| {
            FsError::Store(StoreError::BadRecord {
                key: format!("inode {}", e.ino),
                reason: format!(
                    "named by {parent}/{} but missing",
                    String::from_utf8_lossy(name)
                ),
            })
        })?;
        Ok((e.ino, i))
    }

    /// Creates a node of any type (regular file, fifo, socket, device; `mkdir` and
    /// `symlink` are the other creators).
    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> Result<(Ino, Inode), FsError> {
        let kind = FileKind::from_mode(mode).unwrap_or(FileKind::File);
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(FsError::Invalid);
        }
        self.create_inode(ctx, parent, name, kind, mode, |i| i.rdev = rdev)
    }

    /// `mkdir`.
    pub fn mkdir(
        &self,
        ctx: Ctx,
        parent: Ino,
        name: &[u8],
        mode: u32,
    ) -> Result<(Ino, Inode), FsError> {
        self.create_inode(ctx, parent, name, FileKind::Dir, mode, |_| {})
    }

    /// `symlink`.
    pub fn symlink(
        &self,
        ctx: Ctx,
        parent: Ino,
        name: &[u8],
        target: &[u8],
    ) -> Result<(Ino, Inode), FsError> {
        if target.len() > 4095 {
            return Err(FsError::NameTooLong);
        }
        self.create_inode(ctx, parent, name, FileKind::Symlink, 0o777, |i| {
            i.target = target.to_vec();
            i.size = target.len() as u64;
        })
    }

    fn create_inode(
        &self,
        ctx: Ctx,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        init: impl FnOnce(&mut Inode),
    ) -> Result<(Ino, Inode), FsError> {
        check_name(name)?;
        let mut w = self.lock();
        let mut t = Txn::new(&*self.store);
        let mut p = t.dir(parent)?;
        if p.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if self.store.dirent(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let mut perm = (mode & 0o7777) as u16;
        // BSD group semantics in setgid directories (what ext4 does): the new inode takes
        // the directory's group, and new subdirectories inherit the setgid bit.
        let gid = if p.perm & 0o2000 != 0 {
            if kind == FileKind::Dir {
                perm |= 0o2000;
            }
            p.gid
        } else {
            ctx.gid
        };
        let ino = Self::alloc_ino(&mut w, &mut t);
        let mut inode = Inode::new(kind, perm, ctx.uid, gid, t.now);
        init(&mut inode);
        if kind == FileKind::Dir {
            if p.nlink >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            inode.parent = parent;
            p.nlink += 1;
            t.put(parent, p);
        }
        t.link_entry(parent, name, ino, kind)?;
        t.put(ino, inode.clone());
        self.commit(w, t.finish())?;
        Ok((ino, inode))
    }

    /// `link`: a new name for an existing non-directory.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Inode, FsError> {
        check_name(newname)?;
        let w = self.lock();
        let mut t = Txn::new(&*self.store);
        let mut i = t.get(ino)?;
        if i.kind == FileKind::Dir {
            return Err(FsError::Perm);
        }
        let np = t.dir(newparent)?;
        if np.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if self.store.dirent(newparent, newname)?.is_some() {
            return Err(FsError::Exists);
        }
        if i.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if i.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        i.nlink += 1;
        i.ctime = t.now;
        t.put(ino, i.clone());
        t.link_entry(newparent, newname, ino, i.kind)?;
        self.commit(w, t.finish())?;
        Ok(i)
    }

    /// Drops one link of `ino` inside `t`; deletes it or marks it orphan when none remain.
    fn drop_link(&self, t: &mut Txn<'_, S>, ino: Ino) -> Result<(), FsError> {
        let mut i = t.get(ino)?;
        i.nlink = if i.kind == FileKind::Dir {
            0
        } else {
            i.nlink.saturating_sub(1)
        };
        i.ctime = t.now;
        if i.nlink == 0 {
            if self.lookups_of(ino) > 0 {
                t.put(ino, i);
                t.ops.push(Op::PutOrphan(ino));
            } else {
                t.delete(ino);
            }
        } else {
            t.put(ino, i);
        }
        Ok(())
    }

    fn is_empty_dir(&self, ino: Ino) -> Result<bool, FsError> {
        Ok(self.store.read_dir(ino, 0, 1)?.is_empty())
    }

    /// `unlink`.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<(), FsError> {
        let w = self.lock();
        let mut t = Txn::new(&*self.store);
        t.dir(parent)?;
        let e = self.store.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        if e.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        t.unlink_entry(parent, name, &e)?;
        self.drop_link(&mut t, e.ino)?;
        self.commit(w, t.finish())?;
        Ok(())
    }

    /// `rmdir`.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<(), FsError> {
        if name == b"." {
            return Err(FsError::Invalid);
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        let w = self.lock();
        let mut t = Txn::new(&*self.store);
        let mut p = t.dir(parent)?;
        let e = self.store.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        if e.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.is_empty_dir(e.ino)? {
            return Err(FsError::NotEmpty);
        }
        p.nlink = p.nlink.saturating_sub(1);
        t.put(parent, p);
        t.unlink_entry(parent, name, &e)?;
        self.drop_link(&mut t, e.ino)?;
        self.commit(w, t.finish())?;
        Ok(())
    }

    /// `renameat2`.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Result<(), FsError> {
        check_name(newname)?;
        if flags.exchange && flags.noreplace {
            return Err(FsError::Invalid);
        }
        let w = self.lock();
        let mut t = Txn::new(&*self.store);
        t.dir(parent)?;
        t.dir(newparent)?;
        let src = self.store.dirent(parent, name)?.ok_or(FsError::NotFound)?;
        let dst = self.store.dirent(newparent, newname)?;
        if flags.exchange {
            let dst = dst.ok_or(FsError::NotFound)?;
            if src.ino == dst.ino {
                return Ok(());
            }
            // Each name keeps its place (cookie) and now points at the other inode.
            t.ops.push(Op::PutDirent {
                parent,
                name: name.to_vec(),
                entry: DirEntry {
                    ino: dst.ino,
                    kind: dst.kind,
                    cookie: src.cookie,
                },
            });
            t.ops.push(Op::PutDirent {
                parent: newparent,
                name: newname.to_vec(),
                entry: DirEntry {
                    ino: src.ino,
                    kind: src.kind,
                    cookie: dst.cookie,
                },
            });
            if parent != newparent {
                let (sd, dd) = (src.kind == FileKind::Dir, dst.kind == FileKind::Dir);
                if sd != dd {
                    let mut p = t.get(parent)?;
                    let mut np = t.get(newparent)?;
                    if sd {
                        p.nlink -= 1;
                        np.nlink += 1;
                    } else {
                        p.nlink += 1;
                        np.nlink -= 1;
                    }
                    t.put(parent, p);
                    t.put(newparent, np);
                }
            }
            for (ino, new_parent) in [(src.ino, newparent), (dst.ino, parent)] {
                let mut i = t.get(ino)?;
                i.ctime = t.now;
                if i.kind == FileKind::Dir {
                    i.parent = new_parent;
                }
                t.put(ino, i);
            }
            for p in [parent, newparent] {
                let mut d = t.get(p)?;
                d.mtime = t.now;
                d.ctime = t.now;
                t.put(p, d);
            }
            self.commit(w, t.finish())?;
            return Ok(());
        }
        if let Some(dst) = dst {
            if flags.noreplace {
                return Err(FsError::Exists);
            }
            if dst.ino == src.ino {
                // Two names of one inode: POSIX says do nothing.
                return Ok(());
            }
            match (src.kind == FileKind::Dir, dst.kind == FileKind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) => {
                    if !self.is_empty_dir(dst.ino)? {
                        return Err(FsError::NotEmpty);
                    }
                    let mut np = t.get(newparent)?;
                    np.nlink -= 1;
                    t.put(newparent, np);
                }
                (false, false) => {}
            }
            t.unlink_entry(newparent, newname, &dst)?;
            self.drop_link(&mut t, dst.ino)?;
        }
        t.unlink_entry(parent, name, &src)?;
        t.link_entry(newparent, newname, src.ino, src.kind)?;
        let mut i = t.get(src.ino)?;
        i.ctime = t.now;
        if i.kind == FileKind::Dir && parent != newparent {
            i.parent = newparent;
            let mut p = t.get(parent)?;
            p.nlink -= 1;
            t.put(parent, p);
            let mut np = t.get(newparent)?;
            np.nlink += 1;
            t.put(newparent, np);
        }
        t.put(src.ino, i);
        self.commit(w, t.finish())?;
        Ok(())
    }

    /// `readlink`.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        let i = self.getattr(ino)?;
        if i.kind != FileKind::Symlink {
            return Err(FsError::Invalid);
        }
        Ok(i.target)
    }

    /// `setattr`: chmod, chown, truncate, utimens.
    pub fn setattr(&self, ino: Ino, a: SetAttr) -> Result<Inode, FsError> {
        let w = self.lock();
        let mut t = Txn::new(&*self.store);
        let mut i = t.get(ino)?;
        let now = t.now;
        if a.size.is_some() || a.uid.is_some() || a.gid.is_some() {
            self.kill_privs(&mut t, ino, &mut i, a.kill_suidgid && a.mode.is_none())?;
        }
        if let Some(mode) = a.mode {
            i.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = a.uid {
            i.uid = uid;
        }
        if let Some(gid) = a.gid {
            i.gid = gid;
        }
        if let Some(size) = a.size {
            match i.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid),
            }
            if size > MAX_FILE_SIZE {
                return Err(FsError::TooBig);
            }
            if size < i.size {
                let keep = size % BLOCK_SIZE;
                let from = size.div_ceil(BLOCK_SIZE);
                if keep != 0 {
                    let idx = size / BLOCK_SIZE;
                    if let Some(mut b) = self.store.block(ino, idx)? {
                        if b.len() as u64 > keep {
                            b.truncate(keep as usize);
                            t.ops.push(Op::PutBlock { ino, idx, data: b });
                        }
                    }
                }
                t.ops.push(Op::TruncBlocks { ino, from });
            }
            if size != i.size {
                i.mtime = now;
            }
            i.size = size;
        }
        match a.atime {
            Some(SetTime::At(ts)) => i.atime = ts,
            Some(SetTime::Now) => i.atime = now,
            None => {}
        }
        match a.mtime {
            Some(SetTime::At(ts)) => i.mtime = ts,
            Some(SetTime::Now) => i.mtime = now,
            None => {}
        }
        i.ctime = a.ctime.unwrap_or(now);
        t.put(ino, i.clone());
        self.commit(w, t.finish())?;
        Ok(i)
    }

    /// Reads up to `size` bytes at `offset` (short only at end of file).
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let i = self.getattr(ino)?;
        if i.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        if offset >= i.size || size == 0 {
            return Ok(Vec::new());
        }
        let end = i.size.min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let idx = pos / BLOCK_SIZE;
            let bstart = idx * BLOCK_SIZE;
            let lo = (pos - bstart) as usize;
            let hi = ((end - bstart).min(BLOCK_SIZE)) as usize;
            match self.store.block(ino, idx)? {
                Some(b) => {
                    let avail = b.len().min(hi);
                    if lo < avail {
                        out.extend_from_slice(&b[lo..avail]);
                        out.resize(out.len() + (hi - avail), 0);
                    } else {
                        out.resize(out.len() + (hi - lo), 0);
                    }
                }
                None => out.resize(out.len() + (hi - lo), 0),
            }
            pos = bstart + hi as u64;
        }
        Ok(out)
    }

    /// Writes `data` at `offset`; returns the number of bytes written (all of them).
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        self.write_as(ino, offset, data, false)
    }

    /// [`Fs::write`], also dropping setuid/setgid when `kill_suidgid` (the
    /// kernel asks for it when the writer lacks CAP_FSETID and the file has
    /// one of them). A file capability (`security.capability`) goes on every
    /// write, as on the kernel's own filesystems.
    ///
    /// The mount asks the kernel to leave these to the filesystem
    /// (FUSE_HANDLE_KILLPRIV_V2); otherwise the kernel asks for
    /// `security.capability` with a GETXATTR round trip before every write.
    pub fn write_as(
        &self,
        ino: Ino,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> Result<u32, FsError> {
        if data.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::TooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        let w = self.lock();
        let mut t = Txn::new(&*self.store);
        let mut i = t.get(ino)?;
        if i.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        self.kill_privs(&mut t, ino, &mut i, kill_suidgid)?;
        let mut pos = offset;
        while pos < end {
            let idx = pos / BLOCK_SIZE;
            let bstart = idx * BLOCK_SIZE;
            let lo = (pos - bstart) as usize;
            let hi = ((end - bstart).min(BLOCK_SIZE)) as usize;
            let src = &data[(pos - offset) as usize..(bstart + hi as u64 - offset) as usize];
            // A block whose old contents are all overwritten needs no read.
            let block = if lo == 0 && (hi as u64 == BLOCK_SIZE || bstart + hi as u64 >= i.size) {
                src.to_vec()
            } else {
                let mut b = self.store.block(ino, idx)?.unwrap_or_default();
                if b.len() < hi {
                    b.resize(hi, 0);
                }
                b[lo..hi].copy_from_slice(src);
                b
            };
            t.ops.push(Op::PutBlock {
                ino,
                idx,
                data: block,
            });
            pos = bstart + hi as u64;
        }
        i.size = i.size.max(end);
        i.mtime = t.now;
        i.ctime = t.now;
        t.put(ino, i);
        self.commit(w, t.finish())?;
        Ok(data.len() as u32)
    }

    /// What a write, truncate or chown takes away: the file capability, and
    /// setuid plus setgid-with-group-execute when `suidgid` (never on a
    /// directory, where setgid means inheritance).
    fn kill_privs(
        &self,
        t: &mut Txn<'_, S>,
        ino: Ino,
        i: &mut Inode,
        suidgid: bool,
    ) -> Result<(), FsError> {
        if suidgid && i.kind != FileKind::Dir {
            i.perm &= !(libc::S_ISUID as u16);
            if i.perm & libc::S_IXGRP as u16 != 0 {
                i.perm &= !(libc::S_ISGID as u16);
            }
        }
        if i.kind == FileKind::File && self.store.xattr(ino, XATTR_CAPS)?.is_some() {
            t.ops.push(Op::DelXattr {
                ino,
                name: XATTR_CAPS.to_vec(),
            });
        }
        Ok(())
    }

    /// `fallocate`: plain allocation (extends the size) and `FALLOC_FL_KEEP_SIZE`.
    pub fn fallocate(&self, ino: Ino, offset: u64, length: u64, mode: i32) -> Result<(), FsError> {
        let end = offset.checked_add(length).ok_or(FsError::TooBig)?;
        let i = self.getattr(ino)?;
        if i.kind != FileKind::File {
            return Err(if i.kind == FileKind::Dir {
                FsError::IsDir
            } else {
                FsError::NotSupported
            });
        }
        match mode {
            0 if end > i.size => {
                self.setattr(
                    ino,
                    SetAttr {
                        size: Some(end),
                        ..SetAttr::default()
                    },
                )?;
                Ok(())
            }
            0 | libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(FsError::NotSupported),
        }
    }

    /// Makes everything applied so far durable.
    pub fn fsync(&self) -> Result<(), FsError> {
        self.store.sync()?;
        Ok(())
    }

    /// Lists `ino` from `offset` (0 = start). `.` and `..` come first.
    pub fn readdir(
        &self,
        ino: Ino,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<ReaddirEntry>, FsError> {
        let d = self.getattr(ino)?;
        if d.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        let mut out = Vec::new();
        if offset < 1 {
            out.push(ReaddirEntry {
                offset: 1,
                ino,
                kind: FileKind::Dir,
                name: b".".to_vec(),
            });
        }
        if offset < 2 {
            out.push(ReaddirEntry {
                offset: 2,
                ino: d.parent,
                kind: FileKind::Dir,
                name: b"..".to_vec(),
            });
        }
        let after = offset.max(2);
        for (name, e) in self.store.read_dir(ino, after, limit)? {
            out.push(ReaddirEntry {
                offset: e.cookie,
                ino: e.ino,
                kind: e.kind,
                name,
            });
        }
        Ok(out)
    }

    /// Space figures for `statfs`.
    pub fn statfs(&self) -> Result<Usage, FsError> {
        Ok(self.store.usage()?)
    }

    /// `setxattr` with `XATTR_CREATE` / `XATTR_REPLACE` semantics.
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> Result<(), FsError> {
        check_xattr_name(name)?;
        if name.starts_with(b"system.") {
            return Err(FsError::NotSupported);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::TooLarge);
        }
        let w = self.lock();
        let mut t = Txn::new(&*self.store);
        let mut i = t.get(ino)?;
        let exists = self.store.xattr(ino, name)?.is_some();
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoData);
        }
        i.ctime = t.now;
        t.put(ino, i);
        t.ops.push(Op::PutXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
        });
        self.commit(w, t.finish())?;
        Ok(())
    }

    /// `getxattr`.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>, FsError> {
        check_xattr_name(name)?;
        self.getattr(ino)?;
        self.store.xattr(ino, name)?.ok_or(FsError::NoData)
    }

    /// `listxattr`: names, each followed by a NUL.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        self.getattr(ino)?;
        let mut out = Vec::new();
        for n in self.store.xattr_names(ino)? {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    /// `removexattr`.
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<(), FsError> {
        check_xattr_name(name)?;
        let w = self.lock();
        let mut t = Txn::new(&*self.store);
        let mut i = t.get(ino)?;
        if self.store.xattr(ino, name)?.is_none() {
            return Err(FsError::NoData);
        }
        i.ctime = t.now;
        t.put(ino, i);
        t.ops.push(Op::DelXattr {
            ino,
            name: name.to_vec(),
        });
        self.commit(w, t.finish())?;
        Ok(())
    }
}

fn check_xattr_name(name: &[u8]) -> Result<(), FsError> {
    if name.is_empty() || name.len() > 255 {
        return Err(FsError::Range);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DiskStore;

    fn fs() -> (tempfile::TempDir, Fs<DiskStore>) {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(DiskStore::open(d.path()).unwrap());
        (d, Fs::new(s, 0, 0).unwrap())
    }

    const U: Ctx = Ctx {
        uid: 1000,
        gid: 1000,
    };

    #[test]
    fn write_read_across_blocks_and_holes() {
        let (_d, fs) = fs();
        let (f, _) = fs
            .mknod(U, Ino::ROOT, b"f", libc::S_IFREG | 0o644, 0)
            .unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        fs.write(f, 10, &data).unwrap();
        assert_eq!(fs.getattr(f).unwrap().size, 200_010);
        let back = fs.read(f, 0, 300_000).unwrap();
        assert_eq!(&back[..10], &[0u8; 10]);
        assert_eq!(&back[10..], &data[..]);
        // A write far beyond EOF leaves a hole that reads as zeros.
        let far = 5 << 30;
        fs.write(f, far, b"xyz").unwrap();
        assert_eq!(fs.getattr(f).unwrap().size, far + 3);
        assert_eq!(fs.read(f, far - 2, 10).unwrap(), b"\0\0xyz");
        assert_eq!(fs.read(f, 1 << 30, 4).unwrap(), vec![0u8; 4]);
    }

    #[test]
    fn truncate_down_then_up_reads_zeros() {
        let (_d, fs) = fs();
        let (f, _) = fs
            .mknod(U, Ino::ROOT, b"f", libc::S_IFREG | 0o644, 0)
            .unwrap();
        fs.write(f, 0, &[7u8; 150_000]).unwrap();
        fs.setattr(
            f,
            SetAttr {
                size: Some(70_000),
                ..Default::default()
            },
        )
        .unwrap();
        fs.setattr(
            f,
            SetAttr {
                size: Some(140_000),
                ..Default::default()
            },
        )
        .unwrap();
        let b = fs.read(f, 0, 200_000).unwrap();
        assert_eq!(b.len(), 140_000);
        assert!(b[..70_000].iter().all(|&x| x == 7));
        assert!(b[70_000..].iter().all(|&x| x == 0));
    }

    #[test]
    fn namespace_rules() {
        let (_d, fs) = fs();
        let (d, _) = fs.mkdir(U, Ino::ROOT, b"d", 0o755).unwrap();
        assert_eq!(fs.getattr(Ino::ROOT).unwrap().nlink, 3);
        let (f, _) = fs.mknod(U, d, b"f", libc::S_IFREG | 0o644, 0).unwrap();
        assert_eq!(fs.path_of(f), "/d/f");
        assert!(matches!(
            fs.mkdir(U, Ino::ROOT, b"d", 0o755),
            Err(FsError::Exists)
        ));
        assert!(matches!(fs.rmdir(Ino::ROOT, b"d"), Err(FsError::NotEmpty)));
        fs.link(f, Ino::ROOT, b"hard").unwrap();
        assert_eq!(fs.getattr(f).unwrap().nlink, 2);
        fs.unlink(d, b"f").unwrap();
        assert_eq!(fs.getattr(f).unwrap().nlink, 1);
        fs.rmdir(Ino::ROOT, b"d").unwrap();
        assert_eq!(fs.getattr(Ino::ROOT).unwrap().nlink, 2);
        assert!(matches!(fs.lookup(Ino::ROOT, b"d"), Err(FsError::NotFound)));
        let (s, _) = fs.symlink(U, Ino::ROOT, b"s", b"hard").unwrap();
        assert_eq!(fs.readlink(s).unwrap(), b"hard");
        assert!(matches!(
            fs.mknod(U, Ino::ROOT, &[b'a'; 256], libc::S_IFREG, 0),
            Err(FsError::NameTooLong)
        ));
    }

    #[test]
    fn rename_variants() {
        let (_d, fs) = fs();
        let (a, _) = fs.mkdir(U, Ino::ROOT, b"a", 0o755).unwrap();
        let (b, _) = fs.mkdir(U, Ino::ROOT, b"b", 0o755).unwrap();
        let (f, _) = fs.mknod(U, a, b"f", libc::S_IFREG | 0o644, 0).unwrap();
        let (g, _) = fs.mknod(U, b, b"g", libc::S_IFREG | 0o644, 0).unwrap();
        let nr = RenameFlags {
            noreplace: true,
            exchange: false,
        };
        assert!(matches!(
            fs.rename(a, b"f", b, b"g", nr),
            Err(FsError::Exists)
        ));
        let ex = RenameFlags {
            noreplace: false,
            exchange: true,
        };
        fs.rename(a, b"f", b, b"g", ex).unwrap();
        assert_eq!(fs.lookup(a, b"f").unwrap().0, g);
        assert_eq!(fs.lookup(b, b"g").unwrap().0, f);
        // Plain rename over a file replaces it; the replaced inode is gone.
        fs.rename(a, b"f", b, b"g", RenameFlags::default()).unwrap();
        assert_eq!(fs.lookup(b, b"g").unwrap().0, g);
        assert!(matches!(fs.getattr(f), Err(FsError::NotFound)));
        // A directory moves with its nlink bookkeeping.
        fs.rename(Ino::ROOT, b"a", b, b"a2", RenameFlags::default())
            .unwrap();
        assert_eq!(fs.getattr(Ino::ROOT).unwrap().nlink, 3);
        assert_eq!(fs.getattr(b).unwrap().nlink, 3);
        assert_eq!(fs.getattr(a).unwrap().parent, b);
        // Over an empty directory: allowed; over a non-empty one: ENOTEMPTY.
        fs.mkdir(U, Ino::ROOT, b"e", 0o755).unwrap();
        fs.rename(b, b"a2", Ino::ROOT, b"e", RenameFlags::default())
            .unwrap();
        assert!(matches!(
            fs.rename(Ino::ROOT, b"e", Ino::ROOT, b"b", RenameFlags::default()),
            Err(FsError::NotEmpty)
        ));
    }

    #[test]
    fn readdir_offsets_are_stable() {
        let (_d, fs) = fs();
        for i in 0..50 {
            fs.mknod(
                U,
                Ino::ROOT,
                format!("f{i}").as_bytes(),
                libc::S_IFREG | 0o644,
                0,
            )
            .unwrap();
        }
        let first = fs.readdir(Ino::ROOT, 0, 10).unwrap();
        let resume = first.last().unwrap().offset;
        fs.unlink(Ino::ROOT, b"f0").unwrap();
        fs.unlink(Ino::ROOT, b"f20").unwrap();
        fs.mknod(U, Ino::ROOT, b"new", libc::S_IFREG | 0o644, 0)
            .unwrap();
        let rest = fs.readdir(Ino::ROOT, resume, 1000).unwrap();
        let mut names: Vec<_> = first
            .iter()
            .chain(rest.iter())
            .map(|e| e.name.clone())
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "no entry is returned twice");
        assert!(!names.contains(&b"f20".to_vec()));
        assert!(names.contains(&b"f49".to_vec()));
    }

    #[test]
    fn xattrs() {
        let (_d, fs) = fs();
        let (f, _) = fs
            .mknod(U, Ino::ROOT, b"f", libc::S_IFREG | 0o644, 0)
            .unwrap();
        fs.setxattr(f, b"user.a", b"1", 0).unwrap();
        assert!(matches!(
            fs.setxattr(f, b"user.a", b"2", libc::XATTR_CREATE),
            Err(FsError::Exists)
        ));
        assert!(matches!(
            fs.setxattr(f, b"user.b", b"2", libc::XATTR_REPLACE),
            Err(FsError::NoData)
        ));
        assert_eq!(fs.getxattr(f, b"user.a").unwrap(), b"1");
        assert_eq!(fs.listxattr(f).unwrap(), b"user.a\0");
        fs.removexattr(f, b"user.a").unwrap();
        assert!(matches!(fs.getxattr(f, b"user.a"), Err(FsError::NoData)));
    }

    /// A standby's view (issue 15): loading changes nothing, an empty store
    /// shows an empty root, a forgotten orphan is the primary's to delete;
    /// made writable in place, the writer takes the store's next inode
    /// number (which the peer's mutations moved), the root appears, and the
    /// orphans the kernel does not hold are deleted.
    #[test]
    fn a_read_only_view_changes_nothing_until_made_writable() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(d.path()).unwrap());
        let view = View::new(Access::ReadOnly);
        let fs = Fs::with_view(store.clone(), 0, 0, view.clone()).unwrap();
        assert_eq!(store.last_applied(), Seq(0), "loading wrote nothing");
        assert_eq!(fs.getattr(Ino::ROOT).unwrap().kind, FileKind::Dir);
        assert!(fs
            .readdir(Ino::ROOT, 0, 10)
            .unwrap()
            .iter()
            .all(|e| e.name == b"." || e.name == b".."));
        assert!(view.begin_write().is_none(), "no change starts on a view");

        // The peer (here: a writable Fs on the same store) makes a root, a
        // file the kernel of this view looked up, and two orphans.
        let peer = Fs::new(store.clone(), 0, 0).unwrap();
        let (held, _) = peer
            .mknod(U, Ino::ROOT, b"held", libc::S_IFREG | 0o644, 0)
            .unwrap();
        let (gone, _) = peer
            .mknod(U, Ino::ROOT, b"gone", libc::S_IFREG | 0o644, 0)
            .unwrap();
        fs.remember(Ino::ROOT, b"held", held);
        peer.remember(Ino::ROOT, b"held", held);
        peer.remember(Ino::ROOT, b"gone", gone);
        peer.unlink(Ino::ROOT, b"held").unwrap();
        peer.unlink(Ino::ROOT, b"gone").unwrap();
        let next = store.next_ino().unwrap();
        assert_eq!(store.orphans().unwrap().len(), 2);
        // A forget on the view deletes nothing.
        fs.forget(held, 1).unwrap();
        assert_eq!(store.orphans().unwrap().len(), 2);
        fs.remember(Ino::ROOT, b"held", held);
        assert_eq!(fs.known().len(), 1);

        fs.become_writable(0, 0).unwrap();
        assert_eq!(view.access(), Access::ReadWrite);
        assert_eq!(
            store.orphans().unwrap(),
            vec![held],
            "the held orphan stays"
        );
        let (ino, _) = fs.mkdir(U, Ino::ROOT, b"new", 0o755).unwrap();
        assert_eq!(ino.0, next, "the writer took the store's next inode number");
        assert!(view.make_read_only(), "no write in progress");
        assert!(view.begin_write().is_none());
    }

    #[test]
    fn unlinked_open_file_lives_until_forget() {
        let (_d, fs) = fs();
        let (f, _) = fs
            .mknod(U, Ino::ROOT, b"f", libc::S_IFREG | 0o644, 0)
            .unwrap();
        fs.remember(Ino::ROOT, b"f", f);
        fs.write(f, 0, b"still here").unwrap();
        fs.unlink(Ino::ROOT, b"f").unwrap();
        assert_eq!(fs.read(f, 0, 100).unwrap(), b"still here");
        assert_eq!(fs.store().orphans().unwrap(), vec![f]);
        fs.forget(f, 1).unwrap();
        assert!(matches!(fs.getattr(f), Err(FsError::NotFound)));
        assert!(fs.store().orphans().unwrap().is_empty());
    }

    #[test]
    fn setgid_directory_passes_its_group_on() {
        let (_d, fs) = fs();
        let (d, _) = fs.mkdir(Ctx::ROOT, Ino::ROOT, b"d", 0o2775).unwrap();
        fs.setattr(
            d,
            SetAttr {
                gid: Some(50),
                ..Default::default()
            },
        )
        .unwrap();
        let (_, f) = fs.mknod(U, d, b"f", libc::S_IFREG | 0o644, 0).unwrap();
        assert_eq!(f.gid, 50);
        let (_, sub) = fs.mkdir(U, d, b"sub", 0o755).unwrap();
        assert_eq!((sub.gid, sub.perm & 0o2000), (50, 0o2000));
    }
}
