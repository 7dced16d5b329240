//! The control socket: `twinfs status/promote/demote/verify` from the CLI,
//! one JSON request line and one JSON answer, root only.

use super::Input;
use crate::control::{self, Request, Response};
use crate::node::handle::Reply;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

/// The effective user id of this process.
fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

pub(super) async fn control_loop(path: PathBuf, node: mpsc::UnboundedSender<Input>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = control::bind_private(&path).and_then(|l| {
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    });
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            error!("cannot create the control socket {}: {e}", path.display());
            return;
        }
    };
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        // Root (or the daemon's own user) only: the data dir is private
        // already; this holds even if someone loosens it.
        let me = effective_uid();
        match sock.peer_cred() {
            Ok(c) if c.uid() == 0 || c.uid() == me => {}
            Ok(c) => {
                warn!(
                    "control socket: refused a client running as uid {} (root only)",
                    c.uid()
                );
                continue;
            }
            Err(_) => continue,
        }
        let node = node.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let (r, mut w) = sock.into_split();
            let mut line = String::new();
            // One request line of at most 64 KiB.
            let mut r = BufReader::new(r.take(64 << 10));
            let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
            let answer = match read {
                Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        let _ = node.send(Input::Control(req, Reply::Socket(tx)));
                        rx.await
                            .unwrap_or_else(|_| Response::Error("the node is stopping".into()))
                    }
                    Err(e) => Response::Error(format!("bad request: {e}")),
                },
                _ => return,
            };
            let mut out = serde_json::to_string(&answer).unwrap_or_default();
            out.push('\n');
            let _ = w.write_all(out.as_bytes()).await;
        });
    }
}
