//! `failover.sock`, the supervisor's admin socket (`twinfs switchover`,
//! `twinfs maintenance`), served so that no local user can disturb the
//! supervisor:
//!
//! - only root (or the daemon's own user) is served: the peer's credentials
//!   (`SO_PEERCRED`) are checked before a byte is read;
//! - a request is one line of at most [`MAX_REQUEST`] bytes, read within
//!   [`DEADLINE`];
//! - it is read on a thread of its own, and handed to the supervisor's tick
//!   as a typed request with a reply channel: a slow or silent client delays
//!   nobody but itself.
//!
//! The socket lives in the data dir, which is private to root (0700), so no
//! other user can reach it in the first place.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{AdminRequest, AdminResponse};

/// The longest request line.
pub(crate) const MAX_REQUEST: u64 = 64 << 10;
/// How long a client has to send its request.
pub(crate) const DEADLINE: Duration = Duration::from_secs(2);
/// How long the acceptor waits for the supervisor's answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(300);

/// A request for the supervisor's tick, with where its answer goes.
pub(crate) type Pending = (AdminRequest, Sender<AdminResponse>);

/// Whether a client with user id `uid` may talk to the daemon: root, or the
/// user the daemon runs as.
pub(crate) fn allowed_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// The user id of the process at the other end of `stream`.
pub(crate) fn peer_uid(stream: &impl AsFd) -> Option<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

/// Serves `listener` on its own thread until `stop`; each request reaches
/// the returned receiver (see the module docs).
pub(crate) fn serve(
    listener: UnixListener,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(Receiver<Pending>, JoinHandle<()>)> {
    listener.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("twinfs-admin".into())
        .spawn(move || {
            // Bounded by `stop`: one accept attempt every 50 ms when idle.
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => one(stream, &tx),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    Ok((rx, thread))
}

fn one(stream: UnixStream, tx: &Sender<Pending>) {
    let answer = match read_request(&stream) {
        Err(e) => AdminResponse::Error(e),
        Ok(req) => {
            let (rtx, rrx) = mpsc::channel();
            if tx.send((req, rtx)).is_err() {
                return;
            }
            rrx.recv_timeout(ANSWER_LIMIT)
                .unwrap_or_else(|_| AdminResponse::Error("the supervisor did not answer".into()))
        }
    };
    let mut w = &stream;
    let _ = w.set_write_timeout(Some(DEADLINE));
    let _ = writeln!(
        w,
        "{}",
        serde_json::to_string(&answer).unwrap_or_else(|_| "{}".into())
    );
}

fn read_request(stream: &UnixStream) -> Result<AdminRequest, String> {
    match peer_uid(stream) {
        Some(uid) if allowed_uid(uid) => {}
        Some(uid) => {
            tracing::warn!("failover.sock: refused a client running as uid {uid} (root only)");
            return Err(format!(
                "refused: only root may use this socket (you are uid {uid})"
            ));
        }
        None => return Err("refused: cannot read the client's credentials".into()),
    }
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(DEADLINE)))
        .map_err(|e| format!("setting up the connection: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST))
        .read_line(&mut line)
        .map_err(|e| format!("reading the request (within {DEADLINE:?}): {e}"))?;
    if !line.ends_with('\n') {
        return Err(format!(
            "the request must be one line of at most {MAX_REQUEST} bytes"
        ));
    }
    serde_json::from_str(&line).map_err(|e| format!("bad request {line:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_client_delays_only_itself_and_requests_reach_the_tick() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("failover.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (rx, thread) = serve(listener, stop.clone()).unwrap();
        // A client that connects and says nothing.
        let _silent = UnixStream::connect(&path).unwrap();
        // A real request gets through once the silent one timed out.
        let mut c = UnixStream::connect(&path).unwrap();
        writeln!(
            c,
            "{}",
            serde_json::to_string(&AdminRequest::Clear).unwrap()
        )
        .unwrap();
        let (req, reply) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(req, AdminRequest::Clear));
        reply.send(AdminResponse::Done("ok".into())).unwrap();
        let mut answer = String::new();
        BufReader::new(&c).read_line(&mut answer).unwrap();
        assert!(answer.contains("ok"), "{answer}");
        // An over-long line is refused without reaching the tick.
        let mut big = UnixStream::connect(&path).unwrap();
        big.write_all(&vec![b'x'; MAX_REQUEST as usize + 10])
            .unwrap();
        let mut answer = String::new();
        BufReader::new(&big).read_line(&mut answer).unwrap();
        assert!(answer.contains("at most"), "{answer}");
        assert!(rx.try_recv().is_err());
        stop.store(true, Ordering::SeqCst);
        thread.join().unwrap();
    }

    #[test]
    fn only_root_or_the_daemon_s_user_is_served() {
        assert!(allowed_uid(0));
        assert!(allowed_uid(nix::unistd::geteuid().as_raw()));
        if nix::unistd::geteuid().is_root() {
            assert!(!allowed_uid(65534));
        }
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(peer_uid(&a), Some(nix::unistd::geteuid().as_raw()));
    }
}
