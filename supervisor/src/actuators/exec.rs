//! Running a command with a time limit: no shell, its own process group,
//! output kept up to [`OUTPUT_CAP`] per stream.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use super::show;
use crate::actions::{ActionError, ExecResult};

/// Bytes of stdout and of stderr kept from one command (64 KiB each); the
/// rest is read and dropped so that the command never blocks on a full pipe.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// After the process ended, how long the output readers may still take: a
/// grandchild that kept the pipes open must not hold the caller.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// After SIGKILL, how long to wait for the process to die. A process stuck
/// in the kernel (a hung mount) can outlive SIGKILL; it is then reaped by a
/// background thread and the caller gets its answer anyway.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Marker appended to an output cut at [`OUTPUT_CAP`].
const TRUNCATED: &str = "\n[output truncated at 64 KiB]";

/// Runs `argv` (no shell) for at most `timeout`; on timeout the whole process
/// group is killed with SIGKILL and `timed_out` is set.
pub(crate) fn run(argv: &[String], timeout: Duration) -> Result<ExecResult, ActionError> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(ActionError("exec: empty command".to_string()));
    };
    let started = Instant::now();
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The command leads a new process group (pgid = its pid), so that a
        // timeout kills what it started too (`sh -c 'sleep 30'`).
        .process_group(0)
        .spawn()
        .map_err(|e| ActionError(format!("{}: cannot start: {e}", show(argv))))?;
    let pid = Pid::from_raw(child.id() as i32);
    let stdout = Capture::start(child.stdout.take());
    let stderr = Capture::start(child.stderr.take());

    // WNOWAIT: the waiter sees the exit without reaping, so the pid (and the
    // process group id) cannot be reused before we are done signalling it.
    let (exit_tx, exit_rx) = mpsc::channel();
    thread::spawn(move || {
        for _ in 0..1000 {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(Errno::EINTR) => continue,
                _ => break,
            }
        }
        let _ = exit_tx.send(());
    });

    let timed_out = match exit_rx.recv_timeout(timeout) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => false,
        Err(RecvTimeoutError::Timeout) => true,
    };
    if timed_out {
        tracing::warn!(command = %show(argv), ?timeout, "command timed out, killing its process group");
        if let Err(e) = killpg(pid, Signal::SIGKILL) {
            // ESRCH: the group ended on its own at the last moment.
            if e != Errno::ESRCH {
                return Err(ActionError(format!(
                    "{}: timed out after {timeout:?} and could not be killed (pgid {pid}): {e}",
                    show(argv)
                )));
            }
        }
        if exit_rx.recv_timeout(KILL_GRACE).is_err() {
            reap_later(child);
            return Ok(ExecResult {
                code: None,
                stdout: stdout.take(),
                stderr: stderr.take(),
                timed_out: true,
            });
        }
    }
    let status = child
        .wait()
        .map_err(|e| ActionError(format!("{}: cannot wait for pid {pid}: {e}", show(argv))))?;
    let drain_until = Instant::now() + DRAIN_GRACE;
    stdout.wait_until(drain_until);
    stderr.wait_until(drain_until);
    tracing::debug!(command = %show(argv), code = ?status.code(), elapsed = ?started.elapsed(), timed_out, "command ended");
    Ok(ExecResult {
        code: if timed_out { None } else { status.code() },
        stdout: stdout.take(),
        stderr: stderr.take(),
        timed_out,
    })
}

/// Reaps a child that did not die within [`KILL_GRACE`] once it finally does.
fn reap_later(mut child: Child) {
    thread::spawn(move || {
        let _ = child.wait();
    });
}

/// One output stream read by a thread into a capped buffer.
struct Capture {
    buf: Arc<Mutex<(Vec<u8>, bool)>>,
    done: Option<Receiver<()>>,
}

impl Capture {
    fn start<R: Read + Send + 'static>(src: Option<R>) -> Capture {
        let buf = Arc::new(Mutex::new((Vec::new(), false)));
        let Some(mut src) = src else {
            return Capture { buf, done: None };
        };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::clone(&buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            // Ends at end of file, which comes when the process group dies or
            // closes the pipe; the caller never waits for it past a deadline.
            loop {
                match src.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
                        let room = OUTPUT_CAP.saturating_sub(g.0.len());
                        g.0.extend_from_slice(&chunk[..n.min(room)]);
                        if n > room {
                            g.1 = true;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        Capture {
            buf,
            done: Some(rx),
        }
    }

    fn wait_until(&self, deadline: Instant) {
        if let Some(rx) = &self.done {
            let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
    }

    fn take(&self) -> String {
        let g = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::from_utf8_lossy(&g.0).into_owned();
        if g.1 {
            s.push_str(TRUNCATED);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_command_is_an_error() {
        let e = run(&[], Duration::from_secs(1)).unwrap_err();
        assert!(e.0.contains("empty command"), "{e}");
    }

    #[test]
    fn missing_program_names_it() {
        let e = run(&argv(&["/nonexistent/twinfs-nope"]), Duration::from_secs(1)).unwrap_err();
        assert!(
            e.0.contains("/nonexistent/twinfs-nope: cannot start"),
            "{e}"
        );
    }

    #[test]
    fn output_is_capped() {
        let r = run(
            &argv(&["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.code, Some(0));
        assert_eq!(r.stdout.len(), OUTPUT_CAP + TRUNCATED.len());
        assert!(r.stdout.ends_with(TRUNCATED));
    }
}
