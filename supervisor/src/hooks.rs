//! The Lua hook runtime: runs the admin's failover script (`/etc/twinfs/failover.lua`).
//!
//! A script is plain Lua 5.4. It defines some of these global functions, and
//! the supervisor calls each one at the matching moment:
//!
//! | function         | called when                                                 |
//! |------------------|-------------------------------------------------------------|
//! | `on_promote`     | this node becomes primary (bring the site up here)          |
//! | `on_demote`      | this node stops being primary (take the site down here)     |
//! | `on_peer_lost`   | the peer stopped answering                                  |
//! | `on_peer_back`   | the peer answers again                                      |
//! | `on_split_brain` | both nodes were primary; an admin must choose               |
//!
//! A function the script does not define is simply skipped. Setting one of
//! these names to something that is not a function is an error at load.
//! Globals survive from one hook to the next (the script is loaded once).
//!
//! # The `twinfs` API
//!
//! Every call that fails raises a Lua error whose message starts with the
//! script's file and line, then the call, then what the system answered:
//! `/etc/twinfs/failover.lua:14: twinfs.vip.claim: ip addr add 10.0.0.10/24 dev
//! eth0: RTNETLINK answers: Operation not permitted`. Catch it with `pcall`
//! when a failure is acceptable. Tables given to a call may hold only the
//! fields listed here: a misspelled field is an error, not a silent default.
//!
//! ## Virtual IP
//!
//! - `twinfs.vip.claim{address="10.0.0.10/24", interface="eth0", allow_conflict=false}`
//!   adds the address (nothing to do when it is already there), checks that no
//!   other host answers for it and announces it with gratuitous ARP. Returns
//!   `{already_held=bool, announcements=n, conflict=nil|"aa:bb:cc:dd:ee:ff"}`.
//!   When another host answers for the address the call raises an error,
//!   unless `allow_conflict=true`. `address` defaults to `twinfs.config.vip`
//!   and `interface` to `twinfs.config.interface`; an address without
//!   `/prefix` is a /32 (IPv4) or /128 (IPv6).
//! - `twinfs.vip.release{...}` removes the address; not holding it is fine.
//! - `twinfs.vip.held{...}` → `true` when the address is on the interface now.
//! - `twinfs.vip.announce{...}` re-sends gratuitous ARP, returns how many.
//!
//! ## Services
//!
//! - `twinfs.service.start(name)`, `twinfs.service.stop(name)`: start or stop
//!   a service (`"apache2"`); both are fine when already in that state.
//! - `twinfs.service.status(name)` → `"running"` or `"stopped"`.
//!
//! ## Checks and commands
//!
//! - `twinfs.http.check{url="http://10.0.0.10/", expect=200, contains=nil,
//!   timeout=5, retries=0, interval=1}` sends a GET and returns `true, status`
//!   when the answer has status `expect` (and, with `contains`, a body holding
//!   that text). Otherwise it tries again, at most `retries` more times (0 to
//!   100), waiting `interval` seconds (at most 60) between tries, then raises
//!   an error saying what the last try got. Apache needs a moment after start:
//!   `retries=10, interval=1` gives it ten seconds.
//! - `twinfs.exec{argv={"/usr/local/bin/notify", "promoted"}, timeout=10,
//!   check=true}` runs a program directly (no shell) and returns
//!   `{code=n|nil, stdout="...", stderr="...", timed_out=bool}`. A non-zero exit
//!   or a timeout raises an error unless `check=false`.
//! - `twinfs.file_exists(path)` → whether the absolute `path` exists (a
//!   read-only look; used to tell Debian's `/usr/sbin/apache2` from RHEL's
//!   `/usr/sbin/httpd`).
//!
//! ## Logging
//!
//! - `twinfs.log.debug(msg)`, `.info(msg)`, `.warn(msg)`, `.error(msg)`, or
//!   `twinfs.log(msg)` (info) and `twinfs.log("warn", msg)`. Messages go to the
//!   twinfs log (journal) and into the hook's report. `print(...)` logs at
//!   info level.
//!
//! ## What the node knows (read-only)
//!
//! - `twinfs.state`: `node` (this node's name), `hook` (`"on_promote"`...),
//!   `role` (`"primary"`/`"secondary"`, the role the node has or is taking),
//!   `disk` (`"UpToDate"`, `"Outdated"`...), `peer` (`"connected"`, `"lost"`...),
//!   `peer_address` (or `nil`), `generation` (a number), `standby_serves`
//!   (a boolean: `standby.serve`, the secondary serves its replica read-only,
//!   so its web server stays up), and any extra field the supervisor adds.
//!   While the script loads, only `node` is set.
//! - `twinfs.config`: the string values of the `[failover]` table of
//!   `twinfs.toml` (`vip`, `interface`, `service`, `check_url`, ...). A key that
//!   is not set is `nil`.
//!
//! Assigning to either raises an error (`twinfs.state is read-only`).
//!
//! # Undo on failure
//!
//! While a hook runs, each step that can be undone is noted: a `vip.claim`
//! that added the address (undone by `vip.release`) and a `service.start`
//! (undone by `service.stop`). A later `vip.release` or `service.stop` of the
//! same thing cancels the note. When the hook fails (error or time limit),
//! the noted steps are undone in reverse order, and the error lists each undo
//! and whether it worked. A claim that found the address already there is not
//! undone: the hook did not add it.
//!
//! # Time and memory limits
//!
//! A hook, and the script's top-level code when it is loaded, runs for at most
//! [`HookLimits::time`] (30 s by default). A loop that never ends is stopped
//! with an error naming the hook, the limit and the line it was at; `pcall`
//! cannot catch that error. `http.check` and `exec` are given at most the
//! time left. The other actions (VIP, services) have their own timeouts and
//! are not cut short; the limit is checked again when they return. Lua memory
//! is limited to [`HookLimits::memory`] (64 MiB by default).
//!
//! # The standard library
//!
//! Available: the base functions except the ones listed below, and the
//! `string` (without `string.dump`), `table`, `math` and `utf8` libraries, and
//! `os.time`, `os.clock`, `os.date`. `load` accepts Lua source text only,
//! never precompiled chunks. `pcall`, `xpcall`, `error`, `pairs`, `ipairs`,
//! `select`, `type`, `tostring`, `tonumber`, `setmetatable`, `getmetatable`,
//! `rawget`, `rawequal`, `rawlen`, `next`, `assert` and `collectgarbage` work
//! as usual.
//!
//! Not available: `io`, `debug`, `package`, `require`, `dofile`, `loadfile`,
//! `rawset`, `coroutine`, and the rest of `os` (`execute`, `remove`, `rename`,
//! `exit`, `getenv`, `tmpname`, `setlocale`). Effects go through `twinfs.*`,
//! which logs them, limits their time and undoes them on failure.
//!
//! # Calling it from Rust
//!
//! ```no_run
//! use std::{path::Path, sync::Arc};
//! use twinfs_supervisor::hooks::{Hook, HookContext, HookLimits, HookRuntime, HookState, Recorder};
//!
//! let ctx = HookContext::new("node-a", [("vip".into(), "10.0.0.10/24".into())].into());
//! let mut rt = HookRuntime::load(
//!     Path::new("/etc/twinfs/failover.lua"),
//!     ctx,
//!     Arc::new(Recorder::new()),
//!     HookLimits::default(),
//! )?;
//! let report = rt.run(Hook::Promote, &HookState::example(Hook::Promote))?;
//! for action in &report.actions {
//!     println!("{action}");
//! }
//! # Ok::<(), twinfs_supervisor::hooks::HookError>(())
//! ```

mod api;
mod check;
mod recorder;
mod watchdog;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mlua::{ChunkMode, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

use crate::actions::Actuators;

pub use check::{check_script, dry_run, dry_run_with, CheckReport};
pub use recorder::Recorder;
pub use watchdog::HookRuntime;

use api::{RunState, Undo};

/// One of the moments a script can react to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `on_promote`: this node becomes primary.
    Promote,
    /// `on_demote`: this node stops being primary.
    Demote,
    /// `on_peer_lost`: the peer stopped answering.
    PeerLost,
    /// `on_peer_back`: the peer answers again.
    PeerBack,
    /// `on_split_brain`: both nodes were primary.
    SplitBrain,
    /// `on_fence`: before taking over from a peer declared dead, make sure
    /// it is really down (power it off through its BMC, cut its switch
    /// port). Only defined when the admin has a fence device; an error stops
    /// the promotion.
    Fence,
}

impl Hook {
    /// Every hook, in the order the reference lists them.
    pub const ALL: [Hook; 6] = [
        Hook::Promote,
        Hook::Demote,
        Hook::PeerLost,
        Hook::PeerBack,
        Hook::SplitBrain,
        Hook::Fence,
    ];

    /// The Lua function name: `on_promote`, `on_demote`, ...
    pub fn function_name(self) -> &'static str {
        match self {
            Hook::Promote => "on_promote",
            Hook::Demote => "on_demote",
            Hook::PeerLost => "on_peer_lost",
            Hook::PeerBack => "on_peer_back",
            Hook::SplitBrain => "on_split_brain",
            Hook::Fence => "on_fence",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.function_name())
    }
}

impl FromStr for Hook {
    type Err = String;

    /// Accepts `promote`, `on_promote`, `peer-lost`, `peer_lost`, ...
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let norm = norm.strip_prefix("on_").unwrap_or(&norm);
        Hook::ALL
            .into_iter()
            .find(|h| &h.function_name()[3..] == norm)
            .ok_or_else(|| {
                format!(
                    "unknown hook '{s}': expected one of promote, demote, peer_lost, peer_back, split_brain, fence"
                )
            })
    }
}

/// What stays the same for the life of a loaded script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookContext {
    /// This node's name (`twinfs.state.node`).
    pub node: String,
    /// The `[failover]` values of twinfs.toml, as strings (`twinfs.config`).
    pub vars: BTreeMap<String, String>,
    /// Where `twinfs.file_exists` looks: `/` in production; tests point it at
    /// a scratch directory.
    pub fs_root: PathBuf,
}

impl HookContext {
    /// A context for `node` with these `[failover]` values, looking at the real `/`.
    pub fn new(node: impl Into<String>, vars: BTreeMap<String, String>) -> Self {
        HookContext {
            node: node.into(),
            vars,
            fs_root: PathBuf::from("/"),
        }
    }
}

/// What the node looks like when a hook runs (`twinfs.state`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookState {
    /// `primary` or `secondary`: the role the node has, or is taking.
    pub role: String,
    /// The local disk: `UpToDate`, `Outdated`, `Inconsistent`, ...
    pub disk: String,
    /// The peer: `connected`, `lost`, ...
    pub peer: String,
    /// The peer's replication address, when known.
    pub peer_address: Option<String>,
    /// The data generation.
    pub generation: u64,
    /// `standby.serve`: the secondary serves its replica read-only (both
    /// servers serving), so a demoted node keeps its web server running.
    pub standby_serves: bool,
    /// More fields, visible to the script under their own names.
    pub extra: BTreeMap<String, String>,
}

impl HookState {
    /// A plausible state for running `hook` in a dry run: promotion and
    /// re-announce run as primary, demotion as secondary.
    pub fn example(hook: Hook) -> Self {
        let (role, peer) = match hook {
            Hook::Promote => ("primary", "lost"),
            Hook::Demote => ("secondary", "connected"),
            Hook::PeerLost => ("primary", "lost"),
            Hook::PeerBack => ("primary", "connected"),
            Hook::SplitBrain => ("primary", "connected"),
            Hook::Fence => ("secondary", "lost"),
        };
        HookState {
            role: role.into(),
            disk: "UpToDate".into(),
            peer: peer.into(),
            peer_address: Some("192.168.100.2:7788".into()),
            generation: 1,
            standby_serves: false,
            extra: BTreeMap::new(),
        }
    }
}

/// How long and how much memory a hook may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookLimits {
    /// Wall time for one hook, and for loading the script (default 30 s).
    pub time: Duration,
    /// Lua memory for the whole script, in bytes (default 64 MiB).
    pub memory: usize,
}

impl Default for HookLimits {
    fn default() -> Self {
        HookLimits {
            time: Duration::from_secs(30),
            memory: 64 << 20,
        }
    }
}

/// One `twinfs.*` action a hook took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    /// What was done: `vip.claim 10.0.0.10/24 on eth0`, `service.start apache2`.
    pub action: String,
    /// Where in the script: `/etc/twinfs/failover.lua:14`.
    pub at: Option<String>,
    /// How long the action took.
    pub duration: Duration,
    /// `None` when it worked, else what went wrong.
    pub error: Option<String>,
}

impl fmt::Display for ActionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.action, self.duration)?;
        if let Some(at) = &self.at {
            write!(f, " at {at}")?;
        }
        match &self.error {
            Some(e) => write!(f, ": failed: {e}"),
            None => Ok(()),
        }
    }
}

/// One undo done after a hook failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoRecord {
    /// What was undone: `vip.release 10.0.0.10/24 on eth0`.
    pub action: String,
    /// How long the undo took.
    pub duration: Duration,
    /// `None` when the undo worked, else what went wrong.
    pub error: Option<String>,
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `twinfs.log.debug`.
    Debug,
    /// `twinfs.log.info`, `twinfs.log(msg)`, `print`.
    Info,
    /// `twinfs.log.warn`.
    Warn,
    /// `twinfs.log.error`.
    Error,
}

/// A line the script logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: LogLevel,
    /// The text.
    pub message: String,
    /// Where in the script: `/etc/twinfs/failover.lua:20`.
    pub at: Option<String>,
}

/// What one hook run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReport {
    /// The hook that ran.
    pub hook: Hook,
    /// `false` when the script does not define it (nothing ran).
    pub defined: bool,
    /// Every action, in order, with its duration, including a failed last one.
    pub actions: Vec<ActionRecord>,
    /// What the script logged.
    pub logs: Vec<LogLine>,
    /// The undos done because the hook failed, in the order they were done.
    pub undone: Vec<UndoRecord>,
    /// Wall time of the whole hook, undos included.
    pub elapsed: Duration,
}

/// Why a script could not be loaded or a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The script file could not be read.
    #[error("cannot read hook script {}: {source}", path.display())]
    Read {
        /// The script.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The script is not valid Lua; `message` starts with `file:line:`.
    #[error("syntax error: {message}")]
    Syntax {
        /// The script.
        path: PathBuf,
        /// Lua's message, starting with `file:line:`.
        message: String,
    },
    /// The script's top-level code raised an error while loading.
    #[error("hook script {} failed while loading: {message}", path.display())]
    Load {
        /// The script.
        path: PathBuf,
        /// The error, starting with `file:line:`.
        message: String,
    },
    /// A hook name is set to something that is not a function.
    #[error("{}:{line}: {name} must be a function, but the script sets it to a {found}", path.display())]
    NotAFunction {
        /// The script.
        path: PathBuf,
        /// The hook name (`on_promote`).
        name: String,
        /// The Lua type it has instead (`string`).
        found: String,
        /// Best guess of the line, `?` when unknown.
        line: String,
    },
    /// A hook raised an error; the steps it had done were undone.
    #[error("{hook} failed: {message}{}", undo_summary(report))]
    Failed {
        /// The hook.
        hook: Hook,
        /// The error, starting with `file:line:`.
        message: String,
        /// What ran and what was undone.
        report: Box<HookReport>,
    },
    /// A hook, or the script while loading, ran past its time limit.
    #[error("{at}: {what} ran longer than its time limit of {limit:?} and was stopped{}",
        report.as_deref().map(undo_summary).unwrap_or_default())]
    TimeLimit {
        /// `on_promote`, or `loading the script`.
        what: String,
        /// The limit.
        limit: Duration,
        /// Where it was stopped: `file:line`.
        at: String,
        /// What ran and what was undone (`None` while loading).
        report: Option<Box<HookReport>>,
    },
    /// The Lua interpreter could not be set up.
    #[error("cannot set up the Lua interpreter: {0}")]
    Setup(String),
}

impl HookError {
    /// The report of the failed hook, when the error comes from one.
    pub fn report(&self) -> Option<&HookReport> {
        match self {
            HookError::Failed { report, .. } => Some(report),
            HookError::TimeLimit { report, .. } => report.as_deref(),
            _ => None,
        }
    }
}

fn undo_summary(report: &HookReport) -> String {
    if report.undone.is_empty() {
        return String::new();
    }
    let steps: Vec<String> = report
        .undone
        .iter()
        .map(|u| match &u.error {
            None => format!("{} (ok)", u.action),
            Some(e) => format!("{} (failed: {e})", u.action),
        })
        .collect();
    format!("; undone: {}", steps.join(", "))
}

/// A loaded script on the thread that runs it (see [`HookRuntime`], which
/// watches it from outside).
pub(crate) struct Engine {
    lua: Lua,
    path: PathBuf,
    shared: Arc<Mutex<RunState>>,
    actuators: Arc<dyn Actuators>,
    state_table: Table,
    limits: HookLimits,
    defined: Vec<Hook>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.path)
            .field("limits", &self.limits)
            .field("defined", &self.defined)
            .finish_non_exhaustive()
    }
}

/// How often (in Lua VM instructions) the time limit is checked.
const CHECK_EVERY: u32 = 1000;

pub(crate) fn lock(shared: &Mutex<RunState>) -> MutexGuard<'_, RunState> {
    // A panic while holding the lock leaves plain data behind; keep using it.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// Reads and compiles the script at `path`, runs its top-level code (under
    /// the time limit; `twinfs.*` actions are refused there) and checks that
    /// the hook names it sets are functions. `shared` is the run state the
    /// watchdog reads.
    pub(crate) fn load(
        path: &Path,
        ctx: HookContext,
        actuators: Arc<dyn Actuators>,
        limits: HookLimits,
        shared: Arc<Mutex<RunState>>,
    ) -> Result<Engine, HookError> {
        let source = std::fs::read(path).map_err(|source| HookError::Read {
            path: path.to_owned(),
            source,
        })?;
        let setup = |e: mlua::Error| HookError::Setup(e.to_string());
        let lua = Lua::new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::OS,
            LuaOptions::new(),
        )
        .map_err(setup)?;
        lua.set_memory_limit(limits.memory).map_err(setup)?;
        restrict_stdlib(&lua).map_err(setup)?;

        let state_table = api::install(&lua, &shared, &actuators, &ctx).map_err(setup)?;

        let hook_shared = Arc::clone(&shared);
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(CHECK_EVERY),
            move |lua, _debug| {
                let mut st = lock(&hook_shared);
                match st.deadline {
                    Some(deadline) if Instant::now() >= deadline => {
                        let msg = st.stop(lua);
                        Err(mlua::Error::RuntimeError(msg))
                    }
                    _ => Ok(VmState::Continue),
                }
            },
        )
        .map_err(setup)?;

        let rt = Engine {
            lua,
            path: path.to_owned(),
            shared,
            actuators,
            state_table,
            limits,
            defined: Vec::new(),
        };
        rt.run_top_level(&source)?;
        let defined = rt.find_hooks()?;
        Ok(Engine { defined, ..rt })
    }

    /// The hooks the script defines.
    pub(crate) fn defined(&self) -> &[Hook] {
        &self.defined
    }

    fn run_top_level(&self, source: &[u8]) -> Result<(), HookError> {
        let func = self
            .lua
            .load(source)
            .set_name(format!("@{}", self.path.display()))
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| HookError::Syntax {
                path: self.path.clone(),
                message: error_message(&e, self.limits.memory),
            })?;
        lock(&self.shared).begin(None);
        let result = func.call::<()>(());
        let mut st = lock(&self.shared);
        let stopped_at = st.stopped_at.take();
        st.end();
        drop(st);
        if let Some(at) = stopped_at {
            return Err(HookError::TimeLimit {
                what: "loading the script".into(),
                limit: self.limits.time,
                at,
                report: None,
            });
        }
        result.map_err(|e| HookError::Load {
            path: self.path.clone(),
            message: error_message(&e, self.limits.memory),
        })
    }

    fn find_hooks(&self) -> Result<Vec<Hook>, HookError> {
        let globals = self.lua.globals();
        let mut defined = Vec::new();
        for hook in Hook::ALL {
            let value: Value = globals
                .raw_get(hook.function_name())
                .map_err(|e| HookError::Setup(e.to_string()))?;
            match value {
                Value::Nil => {}
                Value::Function(_) => defined.push(hook),
                other => {
                    return Err(HookError::NotAFunction {
                        path: self.path.clone(),
                        name: hook.function_name().into(),
                        found: other.type_name().into(),
                        line: find_assignment_line(&self.path, hook.function_name()),
                    })
                }
            }
        }
        Ok(defined)
    }

    /// Runs one hook with `state` as `twinfs.state`. A hook the script does
    /// not define returns a report with `defined == false`. On failure the
    /// noted steps are undone in reverse order before this returns.
    ///
    /// This blocks for as long as the hook runs (up to the time limit, plus
    /// the undos).
    pub(crate) fn run(&mut self, hook: Hook, state: &HookState) -> Result<HookReport, HookError> {
        let started = Instant::now();
        let mut report = HookReport {
            hook,
            defined: self.defined.contains(&hook),
            actions: Vec::new(),
            logs: Vec::new(),
            undone: Vec::new(),
            elapsed: Duration::ZERO,
        };
        if !report.defined {
            tracing::debug!(%hook, script = %self.path.display(), "hook not defined, nothing to do");
            return Ok(report);
        }
        self.fill_state(hook, state)
            .map_err(|e| HookError::Setup(e.to_string()))?;
        let func: mlua::Function = self
            .lua
            .globals()
            .raw_get(hook.function_name())
            .map_err(|e| HookError::Setup(e.to_string()))?;

        tracing::info!(%hook, script = %self.path.display(), "running hook");
        lock(&self.shared).begin(Some(hook));
        let result = func.call::<()>(());
        let mut st = lock(&self.shared);
        let stopped_at = st.stopped_at.take();
        let journal = std::mem::take(&mut st.journal);
        report.actions = std::mem::take(&mut st.actions);
        report.logs = std::mem::take(&mut st.logs);
        st.end();
        drop(st);

        // The time limit wins over whatever error it caused on its way out.
        let stopped_or_message = match (stopped_at, result) {
            (None, Ok(())) => {
                report.elapsed = started.elapsed();
                tracing::info!(%hook, elapsed = ?report.elapsed, actions = report.actions.len(), "hook done");
                return Ok(report);
            }
            (Some(at), _) => (Some(at), String::new()),
            (None, Err(e)) => (None, error_message(&e, self.limits.memory)),
        };

        report.undone = self.undo(journal);
        report.elapsed = started.elapsed();
        let err = match stopped_or_message {
            (Some(at), _) => HookError::TimeLimit {
                what: hook.function_name().into(),
                limit: self.limits.time,
                at,
                report: Some(Box::new(report)),
            },
            (None, message) => HookError::Failed {
                hook,
                message,
                report: Box::new(report),
            },
        };
        tracing::error!(%hook, error = %err, "hook failed");
        Err(err)
    }

    fn fill_state(&self, hook: Hook, state: &HookState) -> mlua::Result<()> {
        let t = &self.state_table;
        t.clear()?;
        for (k, v) in &state.extra {
            t.raw_set(k.as_str(), v.as_str())?;
        }
        t.raw_set("node", lock(&self.shared).node.clone())?;
        t.raw_set("hook", hook.function_name())?;
        t.raw_set("role", state.role.as_str())?;
        t.raw_set("disk", state.disk.as_str())?;
        t.raw_set("peer", state.peer.as_str())?;
        t.raw_set("peer_address", state.peer_address.as_deref())?;
        t.raw_set("generation", state.generation)?;
        t.raw_set("standby_serves", state.standby_serves)?;
        Ok(())
    }

    fn undo(&self, journal: Vec<Undo>) -> Vec<UndoRecord> {
        undo(self.actuators.as_ref(), journal)
    }
}

/// Undoes the journal, newest first. Each undo gets its own line in the
/// log: an admin reading it must see what was put back and what was not.
pub(crate) fn undo(actuators: &dyn Actuators, journal: Vec<Undo>) -> Vec<UndoRecord> {
    journal
        .into_iter()
        .rev()
        .map(|step| {
            let started = Instant::now();
            let (action, result) = match &step {
                Undo::VipRelease(vip) => (format!("vip.release {vip}"), actuators.vip_release(vip)),
                Undo::ServiceStop(name) => {
                    (format!("service.stop {name}"), actuators.service_stop(name))
                }
            };
            let error = result.err().map(|e| e.to_string());
            match &error {
                None => tracing::warn!(undo = %action, "undone after hook failure"),
                Some(e) => tracing::error!(undo = %action, error = %e, "undo failed"),
            }
            UndoRecord {
                action,
                duration: started.elapsed(),
                error,
            }
        })
        .collect()
}

/// Removes what a failover script must not reach (see the module docs).
fn restrict_stdlib(lua: &Lua) -> mlua::Result<()> {
    let g = lua.globals();
    for name in [
        "dofile", "loadfile", "require", "rawset", "package", "debug", "io",
    ] {
        g.raw_set(name, Value::Nil)?;
    }
    let string: Table = g.raw_get("string")?;
    string.raw_set("dump", Value::Nil)?;
    let os: Table = g.raw_get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "clock", "date"] {
        safe_os.raw_set(name, os.raw_get::<Value>(name)?)?;
    }
    g.raw_set("os", safe_os)?;
    Ok(())
}

/// Turns an mlua error into the script-facing message: `file:line: what`,
/// without mlua's wrapping and without the Lua traceback.
pub(crate) fn error_message(err: &mlua::Error, memory_limit: usize) -> String {
    match err {
        mlua::Error::CallbackError { cause, .. } => error_message(cause, memory_limit),
        mlua::Error::RuntimeError(msg) => strip_traceback(msg),
        mlua::Error::SyntaxError { message, .. } => strip_traceback(message),
        mlua::Error::MemoryError(msg) => format!(
            "{}: the script used more than its memory limit of {} MiB",
            strip_traceback(msg),
            memory_limit >> 20
        ),
        mlua::Error::WithContext { context, cause } => {
            format!("{context}: {}", error_message(cause, memory_limit))
        }
        other => strip_traceback(&other.to_string()),
    }
}

fn strip_traceback(msg: &str) -> String {
    msg.split("\nstack traceback:")
        .next()
        .unwrap_or(msg)
        .trim_end()
        .to_string()
}

/// Finds the line that assigns `name` at the start of a statement, for
/// errors about hook names that are not functions.
fn find_assignment_line(path: &Path, name: &str) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return "?".into();
    };
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| (i + 1).to_string())
        .unwrap_or_else(|| "?".into())
}
