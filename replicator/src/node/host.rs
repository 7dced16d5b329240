//! What the node core asks of the store and the state file, synchronously:
//! the [`Host`] of the real node.

use super::{fss, ps};
use crate::state::{new_generation, now_ms, StateError, StateWriter};
use std::path::PathBuf;
use std::sync::Arc;
use twinfs_fs::{DiskStore, Store as _};
use twinfs_replicator_proto::node::{Host, NodeState};
use twinfs_replicator_proto::Seq;

/// The local store and the state file.
pub(super) struct Local {
    disk: Arc<DiskStore>,
    dir: PathBuf,
    /// Writes the state file, in version order (see [`StateWriter`]).
    writer: Arc<StateWriter>,
    /// The version of the last state handed to `writer`.
    version: u64,
}

impl Local {
    pub(super) fn new(disk: Arc<DiskStore>, dir: PathBuf, writer: Arc<StateWriter>) -> Local {
        Local {
            disk,
            dir,
            writer,
            version: 0,
        }
    }

    /// Saves `state` now, on the node task (transitions must be on disk
    /// before the node acts on them).
    pub(super) fn save_now(&mut self, state: &NodeState) -> Result<(), StateError> {
        self.version += 1;
        self.writer.save(&self.dir, state, self.version).map(|_| ())
    }

    /// Saves `state` on a blocking thread, for the periodic floor update: its
    /// three fsyncs would otherwise hold up the node task, and with it the
    /// acknowledgements of the writes in flight. A newer state saved
    /// meanwhile is never overwritten (the writer orders by version).
    pub(super) fn save_in_background(
        &mut self,
        state: &NodeState,
        done: impl FnOnce(Result<(), String>) + Send + 'static,
    ) {
        self.version += 1;
        let (writer, state, version, dir) = (
            self.writer.clone(),
            state.clone(),
            self.version,
            self.dir.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let r = writer.save(&dir, &state, version);
            done(r.map(|_| ()).map_err(|e| format!("{e:#}")));
        });
    }
}

impl Host for Local {
    fn last_applied(&self) -> Seq {
        ps(self.disk.last_applied())
    }

    fn changed_since(&self, from: Seq) -> Option<u64> {
        self.disk
            .changed_keys_since(fss(from))
            .ok()
            .flatten()
            .map(|k| k.len() as u64)
    }

    fn sync(&mut self) -> Result<(), String> {
        self.disk.sync().map_err(|e| e.to_string())
    }

    fn save(&mut self, state: &NodeState) -> Result<(), String> {
        self.save_now(state).map_err(|e| format!("{e:#}"))
    }

    fn new_generation(&mut self) -> u64 {
        new_generation()
    }

    fn wall_ms(&self) -> u64 {
        now_ms()
    }
}
