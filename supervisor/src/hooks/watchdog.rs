//! The hook runtime as the supervisor sees it: the script runs on a thread of
//! its own, watched from outside, so that a hook stuck where the Lua time
//! limit cannot reach it does not stop the supervisor.
//!
//! The time limit inside Lua is an instruction-count hook: it stops any loop
//! written in Lua, but not a single call into a C function that does not
//! return (a pathological `string.find` pattern on a long string runs for
//! hours inside one call). So each hook runs on the script's thread while the
//! caller waits; if the hook is neither finished nor inside a `twinfs.*`
//! action (those have their own timeouts) [`GRACE`] after its time limit, the
//! thread is **abandoned**: its steps are undone from here (the undo journal
//! lives outside the Lua state), the failure is reported like any time limit,
//! the thread gets the lowest CPU priority, and the script is loaded afresh on
//! a new thread for the next hook. The abandoned thread ends by itself if its
//! call ever returns (its next instruction hits the time limit).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::api::RunState;
use super::{lock, undo, Engine, Hook, HookContext, HookError, HookLimits, HookReport, HookState};
use crate::actions::Actuators;

/// How long past its time limit (or past its last action's end) a hook that
/// is not inside an action may go on before its thread is abandoned. Code
/// written in Lua is stopped within microseconds of the limit; only a call
/// into a C function can take longer.
pub(super) const GRACE: Duration = Duration::from_secs(2);
/// How often the watchdog looks while it waits.
const POLL: Duration = Duration::from_millis(20);

type Reply = Result<HookReport, HookError>;

/// A loaded script, ready to run hooks. Runs one hook at a time, each on the
/// script's own thread, under the time limit and the watchdog described in
/// the module docs.
pub struct HookRuntime {
    path: PathBuf,
    ctx: HookContext,
    actuators: Arc<dyn Actuators>,
    limits: HookLimits,
    defined: Vec<Hook>,
    worker: Worker,
}

impl std::fmt::Debug for HookRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookRuntime")
            .field("path", &self.path)
            .field("limits", &self.limits)
            .field("defined", &self.defined)
            .finish_non_exhaustive()
    }
}

/// The script's thread: its job queue and the run state it shares.
struct Worker {
    jobs: Sender<(Hook, HookState, Sender<Reply>)>,
    shared: Arc<Mutex<RunState>>,
    /// The thread's Linux thread id, to lower its priority when abandoned.
    tid: i32,
}

impl HookRuntime {
    /// Reads and compiles the script at `path`, runs its top-level code (under
    /// the time limit; `twinfs.*` actions are refused there) and checks that
    /// the hook names it sets are functions.
    pub fn load(
        path: &Path,
        ctx: HookContext,
        actuators: Arc<dyn Actuators>,
        limits: HookLimits,
    ) -> Result<HookRuntime, HookError> {
        let (worker, defined) = Worker::start(path, &ctx, &actuators, limits)?;
        Ok(HookRuntime {
            path: path.to_owned(),
            ctx,
            actuators,
            limits,
            defined,
            worker,
        })
    }

    /// The hooks the script defines.
    pub fn defined(&self) -> &[Hook] {
        &self.defined
    }

    /// The script's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one hook with `state` as `twinfs.state`. A hook the script does
    /// not define returns a report with `defined == false`. On failure the
    /// noted steps are undone in reverse order before this returns.
    ///
    /// This blocks for as long as the hook runs: up to the time limit plus
    /// the time of the actions it is in, plus a grace of 2 s for a hook stuck in a
    /// C function, plus the undos. From async code call it on a blocking thread.
    pub fn run(&mut self, hook: Hook, state: &HookState) -> Result<HookReport, HookError> {
        if !self.defined.contains(&hook) {
            tracing::debug!(%hook, script = %self.path.display(), "hook not defined, nothing to do");
            return Ok(HookReport {
                hook,
                defined: false,
                actions: Vec::new(),
                logs: Vec::new(),
                undone: Vec::new(),
                elapsed: Duration::ZERO,
            });
        }
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        if let Err(mpsc::SendError((hook, state, tx))) =
            self.worker.jobs.send((hook, state.clone(), tx))
        {
            // The thread is gone (it panicked): load the script afresh, once.
            self.restart();
            self.worker
                .jobs
                .send((hook, state, tx))
                .map_err(|_| HookError::Setup("the hook thread could not be started".into()))?;
        }
        self.wait(hook, started, rx)
    }

    fn wait(&mut self, hook: Hook, started: Instant, rx: Receiver<Reply>) -> Reply {
        if let Some(reply) = watch(&rx, &self.worker.shared) {
            return reply;
        }
        // Stuck (or the thread died): take what it did out of the shared
        // state, undo it from here, and load the script afresh.
        let (at, report) = {
            let mut st = lock(&self.worker.shared);
            let at = st
                .stopped_at
                .take()
                .unwrap_or_else(|| format!("{}", self.path.display()));
            let journal = std::mem::take(&mut st.journal);
            let report = HookReport {
                hook,
                defined: true,
                actions: std::mem::take(&mut st.actions),
                logs: std::mem::take(&mut st.logs),
                undone: Vec::new(),
                elapsed: Duration::ZERO,
            };
            st.end();
            (at, (report, journal))
        };
        let (mut report, journal) = report;
        tracing::error!(
            %hook,
            script = %self.path.display(),
            limit = ?self.limits.time,
            "hook still running {GRACE:?} past its time limit outside any action (stuck inside a \
             library function such as string.find): abandoning its thread, undoing its steps and \
             loading the script afresh"
        );
        abandon(self.worker.tid);
        report.undone = undo(self.actuators.as_ref(), journal);
        report.elapsed = started.elapsed();
        self.restart();
        let err = HookError::TimeLimit {
            what: hook.function_name().into(),
            limit: self.limits.time,
            at: format!("{at} (inside a library call that did not return; abandoned)"),
            report: Some(Box::new(report)),
        };
        tracing::error!(%hook, error = %err, "hook failed");
        Err(err)
    }

    /// Loads the script on a new thread (after a stuck or dead one).
    fn restart(&mut self) {
        match Worker::start(&self.path, &self.ctx, &self.actuators, self.limits) {
            Ok((w, defined)) => {
                self.worker = w;
                self.defined = defined;
            }
            Err(e) => {
                // It loaded before; keep the hooks known, every run will fail
                // and say why until the script loads again.
                tracing::error!(script = %self.path.display(), error = %e, "reloading the hook script failed");
            }
        }
    }
}

impl Worker {
    /// Starts the script's thread and loads the script there, under the
    /// watchdog too (top-level code can get stuck in C as well).
    fn start(
        path: &Path,
        ctx: &HookContext,
        actuators: &Arc<dyn Actuators>,
        limits: HookLimits,
    ) -> Result<(Worker, Vec<Hook>), HookError> {
        let shared = Arc::new(Mutex::new(RunState::new(path, limits.time)));
        let (jobs, job_rx) = mpsc::channel::<(Hook, HookState, Sender<Reply>)>();
        let (loaded_tx, loaded_rx) = mpsc::channel();
        let (tid_tx, tid_rx) = mpsc::channel();
        let (p, c, a, sh) = (
            path.to_owned(),
            ctx.clone(),
            Arc::clone(actuators),
            Arc::clone(&shared),
        );
        std::thread::Builder::new()
            .name("twinfs-hooks".into())
            .spawn(move || {
                let _ = tid_tx.send(nix::unistd::gettid().as_raw());
                let mut engine = match Engine::load(&p, c, a, limits, sh) {
                    Ok(e) => {
                        let _ = loaded_tx.send(Ok(e.defined().to_vec()));
                        e
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                // Ends when the runtime drops (or abandons) its sender.
                while let Ok((hook, state, reply)) = job_rx.recv() {
                    let _ = reply.send(engine.run(hook, &state));
                }
            })
            .map_err(|e| HookError::Setup(format!("cannot start the hook thread: {e}")))?;
        let tid = tid_rx.recv().unwrap_or(0);
        let worker = Worker { jobs, shared, tid };
        match watch(&loaded_rx, &worker.shared) {
            Some(Ok(defined)) => Ok((worker, defined)),
            Some(Err(e)) => Err(e),
            None => {
                abandon(worker.tid);
                Err(HookError::TimeLimit {
                    what: "loading the script".into(),
                    limit: limits.time,
                    at: format!(
                        "{} (inside a library call that did not return; abandoned)",
                        path.display()
                    ),
                    report: None,
                })
            }
        }
    }
}

/// Waits for the answer on `rx`. `None` when the run is stuck: past its
/// deadline (or its last action's end, if later) by [`GRACE`] and not inside
/// an action; or when the thread died without answering.
fn watch<T>(rx: &Receiver<T>, shared: &Mutex<RunState>) -> Option<T> {
    loop {
        match rx.recv_timeout(POLL) {
            Ok(v) => return Some(v),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let st = lock(shared);
        if st.in_action {
            continue;
        }
        let Some(deadline) = st.deadline else {
            continue;
        };
        let since = st.action_ended.map_or(deadline, |e| e.max(deadline));
        if Instant::now() >= since + GRACE {
            return None;
        }
    }
}

/// Gives an abandoned thread the lowest CPU priority, so that a call that
/// never returns costs the node as little as possible (best effort: Linux
/// lets `renice` name a thread by its id).
fn abandon(tid: i32) {
    if tid <= 0 {
        return;
    }
    let _ = std::process::Command::new("renice")
        .args(["-n", "19", "-p", &tid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}
