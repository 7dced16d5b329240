//! The node's event stream: each subscriber's channel, and the states it
//! was last told, so that only changes go out.

use super::NodeEvent;
use std::sync::mpsc::{SyncSender, TrySendError};
use twinfs_replicator_proto::node::NodeCore;
use twinfs_replicator_proto::ConnectionState;
use twinfs_replicator_proto::{DiskState, Role};

/// The subscribers and the last published states.
#[derive(Default)]
pub(super) struct Publisher {
    subscribers: Vec<SyncSender<NodeEvent>>,
    last: Option<(Role, DiskState, ConnectionState)>,
}

impl Publisher {
    /// A new subscriber: first the current states.
    pub(super) fn subscribe(&mut self, tx: SyncSender<NodeEvent>, core: &NodeCore) {
        let (role, disk, conn) = now(core);
        for ev in [
            NodeEvent::Role(role),
            NodeEvent::Disk(disk),
            NodeEvent::Connection(conn),
        ] {
            let _ = tx.try_send(ev);
        }
        self.subscribers.push(tx);
    }

    /// Publishes what changed since the last call.
    pub(super) fn changes(&mut self, core: &NodeCore) {
        let cur = now(core);
        let Some(last) = self.last.replace(cur) else {
            return;
        };
        if cur.0 != last.0 {
            self.publish(NodeEvent::Role(cur.0));
        }
        if cur.1 != last.1 {
            self.publish(NodeEvent::Disk(cur.1));
        }
        if cur.2 != last.2 {
            self.publish(NodeEvent::Connection(cur.2));
        }
    }

    /// Sends `ev` to every subscriber; one that went away is dropped, one
    /// that does not keep up loses the event.
    pub(super) fn publish(&mut self, ev: NodeEvent) {
        self.subscribers
            .retain(|tx| !matches!(tx.try_send(ev.clone()), Err(TrySendError::Disconnected(_))));
    }
}

fn now(core: &NodeCore) -> (Role, DiskState, ConnectionState) {
    (core.role(), core.state().disk, core.connection())
}
