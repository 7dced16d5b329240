//! The fuser adapter: each callback is one call into [`crate::ops`] and one reply.
//!
//! Caching policy (see ARCHITECTURE.md): this node is the only writer, so the
//! kernel may cache attributes, entries and pages for long. `open` and `opendir`
//! answer ENOSYS, which tells the kernel we keep no per-open state: it then sends
//! no open/release at all and keeps the page cache across opens (FOPEN_KEEP_CACHE),
//! which is what makes Apache on the mount run at native speed.

use crate::error::FsError;
use crate::ops::{Ctx, Fs, RenameFlags, SetAttr, SetTime};
use crate::store::Store;
use crate::types::{FileKind, Ino, Inode, BLOCK_SIZE};
use crate::view::{Access, Invalidate, Touched, WriteGuard};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, RwLockReadGuard};
use std::time::{Duration, SystemTime};

/// Kernel-facing options of a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseOptions {
    /// How long the kernel may cache attributes and directory entries.
    pub attr_timeout: Duration,
    /// Let the kernel buffer writes in its page cache (writes reach the store in
    /// large batches; fsync and close still push them through).
    pub writeback_cache: bool,
    /// Number of threads serving FUSE requests.
    pub threads: usize,
    /// Whether setuid/setgid bits take effect and device nodes open on the
    /// mount. Off by default (the mount is `nosuid,nodev`, issue 13): the mount
    /// is a web root, and the store's content comes from the peer too, so a
    /// setuid binary or a device node written there must not become a way to
    /// root on this node. Mode bits are stored and shown either way.
    pub suid_dev: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            attr_timeout: Duration::from_secs(60),
            writeback_cache: false,
            threads: 4,
            suid_dev: false,
        }
    }
}

/// A [`Fs`] served to the kernel.
#[derive(Debug)]
pub struct FuseFs<S: Store> {
    fs: Arc<Fs<S>>,
    opts: FuseOptions,
}

impl<S: Store> FuseFs<S> {
    /// Wraps `fs`.
    pub fn new(fs: Arc<Fs<S>>, opts: FuseOptions) -> Self {
        FuseFs { fs, opts }
    }

    /// The fuser mount configuration for these options.
    pub fn mount_config(&self) -> fuser::Config {
        let mut c = fuser::Config::default();
        c.mount_options = vec![
            fuser::MountOption::FSName("twinfs".into()),
            // fuser's own Subtype option only reaches fusermount; as root the kernel
            // gets the mount data directly, and `subtype=` there makes the type
            // show as `fuse.twinfs` in /proc/mounts and findmnt.
            fuser::MountOption::CUSTOM("subtype=twinfs".into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::RW,
            if self.opts.suid_dev {
                fuser::MountOption::Suid
            } else {
                fuser::MountOption::NoSuid
            },
            if self.opts.suid_dev {
                fuser::MountOption::Dev
            } else {
                fuser::MountOption::NoDev
            },
            fuser::MountOption::Exec,
        ];
        c.acl = fuser::SessionACL::All;
        c.n_threads = Some(self.opts.threads.max(1));
        c.clone_fd = true;
        c
    }

    fn attr(&self, ino: Ino, i: &Inode) -> FileAttr {
        attr(ino, i)
    }

    /// Replies with the entry `parent/name` found or made by `r`.
    fn entry(
        &self,
        reply: ReplyEntry,
        (parent, name): (INodeNo, &[u8]),
        r: Result<(Ino, Inode), FsError>,
        op: &str,
    ) {
        match r {
            Ok((ino, i)) => {
                self.fs.remember(Ino(parent.0), name, ino);
                reply.entry(&self.opts.attr_timeout, &self.attr(ino, &i), Generation(0));
            }
            Err(e) => reply.error(errno(op, e)),
        }
    }

    /// What a read must hold while it runs: nothing on a read-write mount;
    /// on a standby's view the store's read gate (so that it sees each of
    /// the peer's mutations whole or not at all); a hidden view fails.
    fn reading(&self) -> Result<Option<RwLockReadGuard<'_, ()>>, Errno> {
        match self.fs.view().access() {
            Access::ReadWrite => Ok(None),
            Access::ReadOnly => Ok(self.fs.store().read_gate()),
            Access::Hidden => Err(Errno::EIO),
        }
    }

    /// Whether a change may be made: only on a read-write mount (EROFS on a
    /// standby's view, before any work and without a log line). The guard
    /// lets a demotion wait for the change to finish.
    fn writing(&self) -> Result<WriteGuard<'_>, Errno> {
        self.fs.view().begin_write().ok_or(Errno::EROFS)
    }
}

/// Drops what the kernel cached of the peer's mutations, for a standby's
/// view ([`crate::view::Invalidate`]).
pub struct KernelCache<S: Store> {
    notifier: fuser::Notifier,
    fs: Arc<Fs<S>>,
}

impl<S: Store> KernelCache<S> {
    /// The invalidator of the session `notifier` belongs to, serving `fs`.
    pub fn new(notifier: fuser::Notifier, fs: Arc<Fs<S>>) -> Arc<KernelCache<S>> {
        Arc::new(KernelCache { notifier, fs })
    }

    fn inode(&self, ino: Ino, range: Option<(u64, u64)>) {
        // A negative offset invalidates the attributes only; a length of 0
        // the data to the end.
        let (off, len) = range.map_or((-1, 0), |(o, l)| (o as i64, l as i64));
        if let Err(e) = self.notifier.inval_inode(INodeNo(ino.0), off, len) {
            tracing::debug!(ino = ino.0, error = %e, "cache invalidation failed");
        }
    }

    fn entry(&self, parent: Ino, name: &[u8]) {
        if let Err(e) = self
            .notifier
            .inval_entry(INodeNo(parent.0), OsStr::from_bytes(name))
        {
            tracing::debug!(parent = parent.0, error = %e, "entry invalidation failed");
        }
    }
}

impl<S: Store> Invalidate for KernelCache<S> {
    fn invalidate(&self, t: &Touched) {
        if t.everything {
            self.inode(Ino::ROOT, Some((0, 0)));
            for (ino, names) in self.fs.known() {
                self.inode(ino, Some((0, 0)));
                for (parent, name) in names {
                    self.entry(parent, &name);
                }
            }
        }
        for (&ino, &range) in &t.inodes {
            self.inode(ino, range);
        }
        for (parent, name) in &t.entries {
            self.entry(*parent, name);
        }
    }
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

/// The `stat` view of an inode.
pub fn attr(ino: Ino, i: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino.0),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: i.atime.into(),
        mtime: i.mtime.into(),
        ctime: i.ctime.into(),
        crtime: i.crtime.into(),
        kind: kind(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: BLOCK_SIZE as u32,
        flags: 0,
    }
}

/// Maps an error to its errno, logging the ones an operator must see.
fn errno(op: &str, e: FsError) -> Errno {
    if let FsError::Store(s) = &e {
        tracing::error!(op, error = %s, "store error");
    }
    Errno::from_i32(e.errno())
}

/// Holds what a read needs for the rest of the callback ([`FuseFs::reading`]),
/// or replies with the error.
macro_rules! reading {
    ($self:ident, $reply:ident) => {
        match $self.reading() {
            Ok(g) => g,
            Err(e) => return $reply.error(e),
        }
    };
}

/// Replies EROFS unless the mount is read-write ([`FuseFs::writing`]);
/// holds the write guard for the rest of the callback.
macro_rules! writing {
    ($self:ident, $reply:ident) => {
        match $self.writing() {
            Ok(g) => g,
            Err(e) => return $reply.error(e),
        }
    };
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::SpecificTime(t) => SetTime::At(t.into()),
        TimeOrNow::Now => SetTime::Now,
    }
}

impl<S: Store> fuser::Filesystem for FuseFs<S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // HANDLE_KILLPRIV_V2: this filesystem drops setuid/setgid and file
        // capabilities on write, truncate and chown itself (`Fs::write_as`,
        // `SetAttr::kill_suidgid`). Without it the kernel asks for
        // `security.capability` with a GETXATTR round trip before every write.
        let mut want = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if self.opts.writeback_cache {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        if let Err(missing) = config.add_capabilities(want) {
            tracing::warn!(
                ?missing,
                "kernel lacks some FUSE capabilities; continuing without them"
            );
            let _ = config.add_capabilities(want - missing);
        }
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _gate = reading!(self, reply);
        self.entry(
            reply,
            (parent, name.as_bytes()),
            self.fs.lookup(Ino(parent.0), name.as_bytes()),
            "lookup",
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Err(e) = self.fs.forget(Ino(ino.0), nlookup) {
            tracing::error!(ino = ino.0, error = %e, "forget failed; the inode is removed at the next mount");
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _gate = reading!(self, reply);
        match self.fs.getattr(Ino(ino.0)) {
            Ok(i) => reply.attr(&self.opts.attr_timeout, &self.attr(Ino(ino.0), &i)),
            Err(e) => reply.error(errno("getattr", e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _write = writing!(self, reply);
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ctime: ctime.map(Into::into),
            // With HANDLE_KILLPRIV_V2 the kernel leaves this to us, but fuser
            // does not pass its FATTR_KILL_SUIDGID flag on: a chown always
            // drops setuid/setgid (as on ext4), a truncate when the caller is
            // not root (root stands in for CAP_FSETID).
            kill_suidgid: uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0),
        };
        match self.fs.setattr(Ino(ino.0), a) {
            Ok(i) => reply.attr(&self.opts.attr_timeout, &self.attr(Ino(ino.0), &i)),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _gate = reading!(self, reply);
        match self.fs.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _write = writing!(self, reply);
        self.entry(
            reply,
            (parent, name.as_bytes()),
            self.fs
                .mknod(ctx(req), Ino(parent.0), name.as_bytes(), mode, rdev),
            "mknod",
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _write = writing!(self, reply);
        self.entry(
            reply,
            (parent, name.as_bytes()),
            self.fs
                .mkdir(ctx(req), Ino(parent.0), name.as_bytes(), mode),
            "mkdir",
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _write = writing!(self, reply);
        empty(
            reply,
            "unlink",
            self.fs.unlink(Ino(parent.0), name.as_bytes()),
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _write = writing!(self, reply);
        empty(
            reply,
            "rmdir",
            self.fs.rmdir(Ino(parent.0), name.as_bytes()),
        )
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _write = writing!(self, reply);
        let r = self.fs.symlink(
            ctx(req),
            Ino(parent.0),
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
        );
        self.entry(reply, (parent, link_name.as_bytes()), r, "symlink");
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _write = writing!(self, reply);
        let f = RenameFlags {
            noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        if flags.contains(fuser::RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        empty(
            reply,
            "rename",
            self.fs.rename(
                Ino(parent.0),
                name.as_bytes(),
                Ino(newparent.0),
                newname.as_bytes(),
                f,
            ),
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _write = writing!(self, reply);
        let r = self
            .fs
            .link(Ino(ino.0), Ino(newparent.0), newname.as_bytes())
            .map(|i| (Ino(ino.0), i));
        self.entry(reply, (newparent, newname.as_bytes()), r, "link");
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No per-open state: see the module docs.
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let _gate = reading!(self, reply);
        match self.fs.read(Ino(ino.0), offset, size) {
            Ok(d) => reply.data(&d),
            Err(FsError::Store(e @ crate::error::StoreError::Corrupt { .. })) => {
                // Wrong bytes are never returned: EIO, and a line the operator can act on.
                let path = self.fs.path_of(Ino(ino.0));
                tracing::error!(file = %path, error = %e, "damaged data block; run `twinfs verify`");
                reply.error(Errno::EIO);
            }
            Err(e) => reply.error(errno("read", e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let _write = writing!(self, reply);
        let kill = write_flags.contains(fuser::WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.fs.write_as(Ino(ino.0), offset, data, kill) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do on close (durability is fsync's job, and there is no per-open
        // state); ENOSYS makes the kernel stop sending FLUSH at all.
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // isatty() and friends: not a terminal, and not worth a log line.
        reply.error(Errno::from_i32(libc::ENOTTY));
    }
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.writing().is_err() {
            // A view has nothing of its own to make durable.
            return reply.ok();
        }
        empty(reply, "fsync", self.fs.fsync())
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _gate = reading!(self, reply);
        // Bounded: each round consumes at least one entry or stops.
        let mut off = offset;
        loop {
            let batch = match self.fs.readdir(Ino(ino.0), off, 256) {
                Ok(b) => b,
                Err(e) => return reply.error(errno("readdir", e)),
            };
            if batch.is_empty() {
                break;
            }
            for e in batch {
                if reply.add(
                    INodeNo(e.ino.0),
                    e.offset,
                    kind(e.kind),
                    OsStr::from_bytes(&e.name),
                ) {
                    return reply.ok();
                }
                off = e.offset;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.writing().is_err() {
            // A view has nothing of its own to make durable.
            return reply.ok();
        }
        empty(reply, "fsyncdir", self.fs.fsync())
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(u) => reply.statfs(
                u.blocks, u.bfree, u.bavail, u.files, u.ffree, u.frsize, 255, u.frsize,
            ),
            Err(e) => reply.error(errno("statfs", e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _write = writing!(self, reply);
        empty(
            reply,
            "setxattr",
            self.fs.setxattr(Ino(ino.0), name.as_bytes(), value, flags),
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _gate = reading!(self, reply);
        match self.fs.getxattr(Ino(ino.0), name.as_bytes()) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno("getxattr", e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _gate = reading!(self, reply);
        match self.fs.listxattr(Ino(ino.0)) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno("listxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _write = writing!(self, reply);
        empty(
            reply,
            "removexattr",
            self.fs.removexattr(Ino(ino.0), name.as_bytes()),
        )
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions (default_permissions).
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _write = writing!(self, reply);
        match self
            .fs
            .mknod(ctx(req), Ino(parent.0), name.as_bytes(), mode, 0)
        {
            Ok((ino, i)) => {
                self.fs.remember(Ino(parent.0), name.as_bytes(), ino);
                reply.created(
                    &self.opts.attr_timeout,
                    &self.attr(ino, &i),
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::FOPEN_KEEP_CACHE,
                );
            }
            Err(e) => reply.error(errno("create", e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _write = writing!(self, reply);
        empty(
            reply,
            "fallocate",
            self.fs.fallocate(Ino(ino.0), offset, length, mode),
        )
    }
}

/// Replies to an operation that returns nothing.
fn empty(reply: ReplyEmpty, op: &str, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, e)),
    }
}

fn xattr_reply(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}
