//! The typed way into a running node for the other parts of its process (the
//! supervisor, the metrics endpoint): requests and answers over channels, no
//! socket and no JSON. The control socket is for the CLI only.
//!
//! Besides requests, a handle subscribes to the node's events
//! ([`NodeHandle::subscribe`]): every change of role, disk state and link
//! state, and every note the status lists, as it happens.

use super::Input;
use crate::control::{Request, Response};
use crate::status::Status;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use twinfs_replicator_proto::ConnectionState;
use twinfs_replicator_proto::{DiskState, Role};

/// Events a subscriber holds before the node drops new ones for it (a
/// subscriber that does not read loses events, never stalls the node).
pub const EVENT_BACKLOG: usize = 256;

/// What happened in the node, as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// The role changed.
    Role(Role),
    /// The disk state changed.
    Disk(DiskState),
    /// The link to the peer changed.
    Connection(ConnectionState),
    /// A notable event, as the status's `recent` list shows it.
    Note(String),
}

/// The receiving end of [`NodeHandle::subscribe`].
pub type NodeEvents = std::sync::mpsc::Receiver<NodeEvent>;

/// Where the answer to a request goes.
pub(crate) enum Reply {
    /// The control socket's task (async).
    Socket(oneshot::Sender<Response>),
    /// A [`NodeHandle`] caller on a thread of its own.
    Handle(std::sync::mpsc::SyncSender<Response>),
}

impl Reply {
    /// Delivers the answer; false if nobody waits for it any more.
    pub(crate) fn send(self, answer: Response) -> bool {
        match self {
            Reply::Socket(tx) => tx.send(answer).is_ok(),
            Reply::Handle(tx) => tx.try_send(answer).is_ok(),
        }
    }
}

/// Why a [`NodeHandle`] call got no answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandleError {
    /// The node has stopped (or not started yet).
    #[error("the replication node is not running")]
    Stopped,
    /// No answer within the time given.
    #[error("the replication node did not answer within {0:?}")]
    Timeout(Duration),
    /// The node answered with something else than the request calls for.
    #[error("unexpected answer from the replication node: {0}")]
    Unexpected(String),
}

/// A handle on the node: cheap to clone, usable from any thread outside the
/// node's runtime (calls block up to their timeout).
#[derive(Clone, Debug)]
pub struct NodeHandle {
    tx: mpsc::UnboundedSender<Input>,
}

/// The receiving end of a node's requests: made with its [`NodeHandle`]
/// before the node starts, and given to [`super::run`].
pub struct NodeInbox {
    pub(super) tx: mpsc::UnboundedSender<Input>,
    pub(super) rx: mpsc::UnboundedReceiver<Input>,
}

/// A node's handle and inbox: hand the inbox to [`super::run`] and the
/// handle to whatever in the process needs the node.
pub fn channel() -> (NodeHandle, NodeInbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    (NodeHandle { tx: tx.clone() }, NodeInbox { tx, rx })
}

impl NodeHandle {
    /// Sends `req` and waits at most `timeout` for the answer.
    pub fn call(&self, req: Request, timeout: Duration) -> Result<Response, HandleError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send(Input::Control(req, Reply::Handle(tx)))
            .map_err(|_| HandleError::Stopped)?;
        rx.recv_timeout(timeout).map_err(|e| match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => HandleError::Timeout(timeout),
            std::sync::mpsc::RecvTimeoutError::Disconnected => HandleError::Stopped,
        })
    }

    /// Subscribes to the node's events from now on; the first events are
    /// the current role, disk and link state. Events beyond
    /// [`EVENT_BACKLOG`] unread ones are dropped for this subscriber.
    pub fn subscribe(&self) -> Result<NodeEvents, HandleError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(EVENT_BACKLOG);
        self.tx
            .send(Input::Subscribe(tx))
            .map_err(|_| HandleError::Stopped)?;
        Ok(rx)
    }

    /// The node's status.
    pub fn status(&self, timeout: Duration) -> Result<Status, HandleError> {
        match self.call(Request::Status, timeout)? {
            Response::Status(s) => Ok(*s),
            other => Err(HandleError::Unexpected(format!("{other:?}"))),
        }
    }
}
