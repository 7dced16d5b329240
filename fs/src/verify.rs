//! Offline integrity check: every block in the index is read back and compared
//! with its blake3 digest; damaged blocks are reported with the path of the file
//! that owns them.

use crate::error::StoreError;
use crate::store::{DiskStore, Store};
use crate::types::Ino;
use std::collections::HashMap;
use std::path::PathBuf;

/// One damaged block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The file's path inside the filesystem (`<ino N>` if it has no name).
    pub path: String,
    /// The inode.
    pub ino: Ino,
    /// The block index within the file.
    pub idx: u64,
    /// The log segment holding the block.
    pub segment: PathBuf,
    /// The block's offset in the segment.
    pub offset: u64,
}

/// The result of [`verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Blocks checked.
    pub blocks: u64,
    /// Bytes checked.
    pub bytes: u64,
    /// Damaged blocks, in index order.
    pub damaged: Vec<Damage>,
}

impl Report {
    /// The distinct damaged file paths, sorted.
    pub fn damaged_files(&self) -> Vec<String> {
        let mut v: Vec<String> = self.damaged.iter().map(|d| d.path.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The path of `ino`, walking up through `name_of` (which names an inode's
/// parent and its name there). `<inode N, unlinked>` when a step is missing.
pub(crate) fn path_from(
    ino: Ino,
    mut name_of: impl FnMut(Ino) -> Option<(Ino, Vec<u8>)>,
) -> String {
    let mut parts = Vec::new();
    let mut cur = ino;
    // Bounded: no real tree is 4096 levels deep; a loop in damaged metadata stops here.
    for _ in 0..4096 {
        if cur == Ino::ROOT {
            parts.reverse();
            return format!("/{}", parts.join("/"));
        }
        let Some((parent, name)) = name_of(cur) else {
            break;
        };
        parts.push(String::from_utf8_lossy(&name).into_owned());
        cur = parent;
    }
    format!("<inode {ino}, unlinked>")
}

/// Builds a function from inode to path, from the directory entries (read once).
pub fn path_resolver(store: &DiskStore) -> Result<impl Fn(Ino) -> String, StoreError> {
    let mut up: HashMap<Ino, (Ino, Vec<u8>)> = HashMap::new();
    for e in store.all_dirents() {
        let (parent, name, entry) = e?;
        up.entry(entry.ino).or_insert((parent, name));
    }
    Ok(move |ino: Ino| path_from(ino, |i| up.get(&i).cloned()))
}

/// Checks every data block of the store against its digest.
pub fn verify(store: &DiskStore) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let mut bad = Vec::new();
    for b in store.blocks() {
        let (ino, idx, r) = b?;
        report.blocks += 1;
        report.bytes += u64::from(r.len);
        match store.read_ref(ino, idx, &r) {
            Ok(_) => {}
            Err(StoreError::Corrupt {
                segment, offset, ..
            }) => bad.push((ino, idx, segment, offset)),
            Err(StoreError::Io { path, source })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                bad.push((ino, idx, path, r.offset))
            }
            Err(e) => return Err(e),
        }
    }
    if !bad.is_empty() {
        let path = path_resolver(store)?;
        report.damaged = bad
            .into_iter()
            .map(|(ino, idx, segment, offset)| Damage {
                path: path(ino),
                ino,
                idx,
                segment,
                offset,
            })
            .collect();
    }
    // Touch the inode table too: a record that does not decode is damage of another kind.
    let _ = store.inode(Ino::ROOT)?;
    Ok(report)
}
