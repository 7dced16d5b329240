//! The `twinfs.*` table a script sees (the reference is in the module docs of
//! [`crate::hooks`]).
//!
//! Each Lua-facing function is a thin Lua wrapper around a Rust function that
//! never raises: it returns `true, results...` or `false, message`, and the
//! wrapper raises the message as a plain Lua string. Scripts therefore get
//! ordinary string errors they can `pcall` and print, and the message already
//! carries the script's file and line (found by walking the Lua stack to the
//! first frame of the script file).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::{lock, ActionRecord, Hook, HookContext, LogLevel, LogLine};
use crate::actions::{Actuators, HttpCheck, ServiceState, Vip};

/// A step that a failed hook undoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Undo {
    VipRelease(Vip),
    ServiceStop(String),
}

/// What the Rust side knows about the hook being run; shared between the
/// runtime, the `twinfs.*` functions and the instruction-count hook.
#[derive(Debug)]
pub(crate) struct RunState {
    script: String,
    pub(crate) node: String,
    limit: Duration,
    /// `Some` while a hook runs; actions are refused otherwise.
    hook: Option<Hook>,
    /// `Some` while Lua code runs under the time limit.
    pub(crate) deadline: Option<Instant>,
    /// Where the time limit stopped the script (`file:line`).
    pub(crate) stopped_at: Option<String>,
    pub(crate) actions: Vec<ActionRecord>,
    pub(crate) journal: Vec<Undo>,
    pub(crate) logs: Vec<LogLine>,
    /// An action (a call into the actuators) is running: it has its own
    /// timeout, so the watchdog does not count its time.
    pub(crate) in_action: bool,
    /// When the last action returned.
    pub(crate) action_ended: Option<Instant>,
}

impl RunState {
    pub(crate) fn new(path: &Path, limit: Duration) -> Self {
        RunState {
            script: path.display().to_string(),
            node: String::new(),
            limit,
            hook: None,
            deadline: None,
            stopped_at: None,
            actions: Vec::new(),
            journal: Vec::new(),
            logs: Vec::new(),
            in_action: false,
            action_ended: None,
        }
    }

    /// Starts the clock for a hook (or, with `None`, for the top-level code).
    pub(crate) fn begin(&mut self, hook: Option<Hook>) {
        self.hook = hook;
        self.deadline = Some(Instant::now() + self.limit);
        self.stopped_at = None;
        self.actions.clear();
        self.journal.clear();
        self.logs.clear();
        self.in_action = false;
        self.action_ended = None;
    }

    pub(crate) fn end(&mut self) {
        self.hook = None;
        self.deadline = None;
    }

    fn what(&self) -> String {
        match self.hook {
            Some(h) => h.function_name().to_string(),
            None => "loading the script".to_string(),
        }
    }

    /// Marks the run as stopped by the time limit (remembering where, the
    /// first time) and returns the message to raise.
    pub(crate) fn stop(&mut self, lua: &Lua) -> String {
        if self.stopped_at.is_none() {
            self.stopped_at = Some(script_location(lua).unwrap_or_else(|| self.script.clone()));
        }
        format!(
            "{}: {} ran longer than its time limit of {:?} and was stopped",
            self.stopped_at.as_deref().unwrap_or_default(),
            self.what(),
            self.limit
        )
    }
}

/// The script's current `file:line`: the innermost stack frame whose code
/// comes from a file (chunk names starting with `@`), so the API wrappers and
/// chunks made by `load` are skipped.
pub(crate) fn script_location(lua: &Lua) -> Option<String> {
    // Bounded: the Lua stack of a hook is shallow; 200 frames is plenty.
    for level in 0..200 {
        let frame = lua.inspect_stack(level, |d| {
            let src = d.source();
            let from_file = src.source.as_deref().is_some_and(|s| s.starts_with('@'));
            let short = src.short_src.as_deref().map(str::to_string);
            (from_file, short, d.current_line())
        })?;
        if let (true, Some(short), Some(line)) = frame {
            return Some(format!("{short}:{line}"));
        }
    }
    None
}

/// Why a `twinfs.*` call failed.
enum ApiError {
    /// An ordinary failure; the script's location gets prepended.
    Msg(String),
    /// The time limit; the message already names the location.
    Stopped(String),
}

impl From<String> for ApiError {
    fn from(s: String) -> Self {
        ApiError::Msg(s)
    }
}

type ApiResult = Result<MultiValue, ApiError>;

struct Api {
    shared: Arc<Mutex<RunState>>,
    act: Arc<dyn Actuators>,
    vars: BTreeMap<String, String>,
    fs_root: PathBuf,
}

/// Builds the `twinfs` global and the sandbox wrappers (`pcall`, `xpcall`,
/// `load`, `print`). Returns the table behind `twinfs.state`, which the
/// runtime refills before each hook.
pub(crate) fn install(
    lua: &Lua,
    shared: &Arc<Mutex<RunState>>,
    act: &Arc<dyn Actuators>,
    ctx: &HookContext,
) -> mlua::Result<Table> {
    lock(shared).node = ctx.node.clone();
    let api = Arc::new(Api {
        shared: Arc::clone(shared),
        act: Arc::clone(act),
        vars: ctx.vars.clone(),
        fs_root: ctx.fs_root.clone(),
    });

    let raw = lua.create_table()?;
    raw.raw_set("vip_claim", raw_fn(lua, &api, Api::vip_claim)?)?;
    raw.raw_set("vip_release", raw_fn(lua, &api, Api::vip_release)?)?;
    raw.raw_set("vip_held", raw_fn(lua, &api, Api::vip_held)?)?;
    raw.raw_set("vip_announce", raw_fn(lua, &api, Api::vip_announce)?)?;
    raw.raw_set("service_start", raw_fn(lua, &api, Api::service_start)?)?;
    raw.raw_set("service_stop", raw_fn(lua, &api, Api::service_stop)?)?;
    raw.raw_set("service_status", raw_fn(lua, &api, Api::service_status)?)?;
    raw.raw_set("http_check", raw_fn(lua, &api, Api::http_check)?)?;
    raw.raw_set("exec", raw_fn(lua, &api, Api::exec)?)?;
    raw.raw_set("file_exists", raw_fn(lua, &api, Api::file_exists)?)?;
    raw.raw_set("log", raw_fn(lua, &api, Api::log)?)?;
    raw.raw_set("check_time", raw_fn(lua, &api, Api::check_time)?)?;

    let state = lua.create_table()?;
    state.raw_set("node", ctx.node.as_str())?;
    let config = lua.create_table()?;
    for (k, v) in &ctx.vars {
        config.raw_set(k.as_str(), v.as_str())?;
    }
    let twinfs: Table = lua
        .load(PRELUDE)
        .set_name("=twinfs")
        .call((raw, state.clone(), config))?;
    lua.globals().raw_set("twinfs", twinfs)?;
    Ok(state)
}

/// Trusted Lua run once before the script. It captures the originals it
/// wraps in locals, so the script cannot reach them.
const PRELUDE: &str = include_str!("prelude.lua");

/// Makes a Rust function callable from the prelude with the `ok, ...`
/// convention described at the top of this file.
fn raw_fn(
    lua: &Lua,
    api: &Arc<Api>,
    f: fn(&Api, &Lua, MultiValue) -> ApiResult,
) -> mlua::Result<Function> {
    let api = Arc::clone(api);
    lua.create_function(move |lua, args: MultiValue| {
        let (ok, rest) = match f(&api, lua, args) {
            Ok(values) => (true, values),
            Err(ApiError::Stopped(msg)) => {
                (false, MultiValue::from_vec(vec![str_value(lua, &msg)?]))
            }
            Err(ApiError::Msg(msg)) => {
                let msg = match script_location(lua) {
                    Some(at) => format!("{at}: {msg}"),
                    None => msg,
                };
                (false, MultiValue::from_vec(vec![str_value(lua, &msg)?]))
            }
        };
        let mut out = rest;
        out.push_front(Value::Boolean(ok));
        Ok(out)
    })
}

fn str_value(lua: &Lua, s: &str) -> mlua::Result<Value> {
    Ok(Value::String(lua.create_string(s)?))
}

fn values(v: Vec<Value>) -> ApiResult {
    Ok(MultiValue::from_vec(v))
}

fn internal(fname: &str) -> impl Fn(mlua::Error) -> ApiError + '_ {
    move |e| ApiError::Msg(format!("{fname}: {e}"))
}

impl Api {
    /// Time left for the running hook; refuses when no hook runs (top-level
    /// code) and when the limit has passed.
    fn remaining(&self, lua: &Lua, fname: &str) -> Result<Duration, ApiError> {
        let mut st = lock(&self.shared);
        if st.hook.is_none() {
            return Err(ApiError::Msg(format!(
                "{fname} can only be called inside a hook function (on_promote, on_demote, ...), \
                 not while the script is being loaded"
            )));
        }
        let now = Instant::now();
        match st.deadline {
            Some(deadline) if now < deadline => Ok(deadline - now),
            _ => Err(ApiError::Stopped(st.stop(lua))),
        }
    }

    /// Runs one action through the actuators, timing it and recording it in
    /// the report and the log.
    fn act<T>(
        &self,
        lua: &Lua,
        fname: &str,
        action: String,
        f: impl FnOnce(&dyn Actuators) -> Result<T, String>,
    ) -> Result<T, ApiError> {
        self.remaining(lua, fname)?;
        let at = script_location(lua);
        let started = Instant::now();
        lock(&self.shared).in_action = true;
        let result = f(self.act.as_ref());
        {
            let mut st = lock(&self.shared);
            st.in_action = false;
            st.action_ended = Some(Instant::now());
        }
        let duration = started.elapsed();
        let error = result.as_ref().err().cloned();
        match &error {
            None => tracing::info!(action = %action, ?duration, at = at.as_deref(), "hook action"),
            Some(e) => {
                tracing::warn!(action = %action, ?duration, at = at.as_deref(), error = %e, "hook action failed")
            }
        }
        lock(&self.shared).actions.push(ActionRecord {
            action,
            at,
            duration,
            error,
        });
        result.map_err(|e| ApiError::Msg(format!("{fname}: {e}")))
    }

    fn journal(&self, step: Undo) {
        lock(&self.shared).journal.push(step);
    }

    /// A release or stop done by the script itself cancels the matching undo.
    fn unjournal(&self, step: &Undo) {
        let mut st = lock(&self.shared);
        if let Some(i) = st.journal.iter().rposition(|s| s == step) {
            st.journal.remove(i);
        }
    }

    fn vip_arg(
        &self,
        lua: &Lua,
        fname: &str,
        args: &MultiValue,
        extra: &[&str],
    ) -> Result<(Vip, Table), ApiError> {
        let mut allowed = vec!["address", "interface"];
        allowed.extend_from_slice(extra);
        let t = table_arg(lua, fname, args, &allowed, true)?;
        let address = match get_string(fname, &t, "address")? {
            Some(a) => a,
            None => self.vars.get("vip").cloned().ok_or_else(|| {
                format!("{fname}: no address: pass address=\"10.0.0.10/24\" or set vip in the [failover] table of twinfs.toml")
            })?,
        };
        let dev = match get_string(fname, &t, "interface")? {
            Some(d) => d,
            None => self.vars.get("interface").cloned().ok_or_else(|| {
                format!("{fname}: no interface: pass interface=\"eth0\" or set interface in the [failover] table of twinfs.toml")
            })?,
        };
        let vip = parse_vip(&address, &dev).map_err(|e| format!("{fname}: {e}"))?;
        Ok((vip, t))
    }

    fn vip_claim(&self, lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.vip.claim";
        let (vip, t) = self.vip_arg(lua, F, &args, &["allow_conflict"])?;
        let allow_conflict = get_bool(F, &t, "allow_conflict")?.unwrap_or(false);
        let claim = self.act(lua, F, format!("vip.claim {vip}"), |a| {
            a.vip_claim(&vip).map_err(|e| e.to_string())
        })?;
        if !claim.already_held {
            self.journal(Undo::VipRelease(vip.clone()));
        }
        // The status and the timeline show what the claim found, not just
        // that it ran: the duplicate-address probe and the announcements.
        if let Some(last) = lock(&self.shared).actions.last_mut() {
            last.action = format!(
                "{}: {}, {} gratuitous ARP, {}",
                last.action,
                if claim.already_held {
                    "already held"
                } else {
                    "address added"
                },
                claim.announcements,
                match &claim.conflict {
                    None => "duplicate probe: no other host answers".to_string(),
                    Some(mac) => format!("duplicate probe: CONFLICT with {mac}"),
                }
            );
        }
        if let (Some(mac), false) = (&claim.conflict, allow_conflict) {
            let msg = format!(
                "{vip}: another host ({mac}) answers for this address; not taking it over \
                 (pass allow_conflict=true to claim it anyway)"
            );
            if let Some(last) = lock(&self.shared).actions.last_mut() {
                last.error = Some(msg.clone());
            }
            return Err(ApiError::Msg(format!("{F}: {msg}")));
        }
        let out = lua.create_table().map_err(internal(F))?;
        out.raw_set("already_held", claim.already_held)
            .map_err(internal(F))?;
        out.raw_set("announcements", claim.announcements)
            .map_err(internal(F))?;
        out.raw_set("conflict", claim.conflict)
            .map_err(internal(F))?;
        values(vec![Value::Table(out)])
    }

    fn vip_release(&self, lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.vip.release";
        let (vip, _) = self.vip_arg(lua, F, &args, &[])?;
        self.act(lua, F, format!("vip.release {vip}"), |a| {
            a.vip_release(&vip).map_err(|e| e.to_string())
        })?;
        self.unjournal(&Undo::VipRelease(vip));
        values(vec![])
    }

    fn vip_held(&self, lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.vip.held";
        let (vip, _) = self.vip_arg(lua, F, &args, &[])?;
        let held = self.act(lua, F, format!("vip.held {vip}"), |a| {
            a.vip_held(&vip).map_err(|e| e.to_string())
        })?;
        values(vec![Value::Boolean(held)])
    }

    fn vip_announce(&self, lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.vip.announce";
        let (vip, _) = self.vip_arg(lua, F, &args, &[])?;
        let n = self.act(lua, F, format!("vip.announce {vip}"), |a| {
            a.vip_announce(&vip).map_err(|e| e.to_string())
        })?;
        values(vec![Value::Integer(i64::from(n))])
    }

    fn service_start(&self, lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.service.start";
        let name = service_name(F, &args)?;
        self.act(lua, F, format!("service.start {name}"), |a| {
            a.service_start(&name).map_err(|e| e.to_string())
        })?;
        self.journal(Undo::ServiceStop(name));
        values(vec![])
    }

    fn service_stop(&self, lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.service.stop";
        let name = service_name(F, &args)?;
        self.act(lua, F, format!("service.stop {name}"), |a| {
            a.service_stop(&name).map_err(|e| e.to_string())
        })?;
        self.unjournal(&Undo::ServiceStop(name));
        values(vec![])
    }

    fn service_status(&self, lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.service.status";
        let name = service_name(F, &args)?;
        let st = self.act(lua, F, format!("service.status {name}"), |a| {
            a.service_status(&name).map_err(|e| e.to_string())
        })?;
        let s = match st {
            ServiceState::Running => "running",
            ServiceState::Stopped => "stopped",
        };
        values(vec![str_value(lua, s).map_err(internal(F))?])
    }

    fn http_check(&self, lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.http.check";
        let t = table_arg(
            lua,
            F,
            &args,
            &[
                "url", "expect", "contains", "timeout", "retries", "interval",
            ],
            false,
        )?;
        let url = get_string(F, &t, "url")?
            .ok_or_else(|| format!("{F}: url is required (url=\"http://10.0.0.10/\")"))?;
        let expect = get_int(F, &t, "expect", 200, 100, 599)? as u16;
        let contains = get_string(F, &t, "contains")?;
        let timeout = get_secs(F, &t, "timeout", 5.0, 300.0)?;
        let retries = get_int(F, &t, "retries", 0, 0, 100)? as u32;
        let interval = get_secs(F, &t, "interval", 1.0, 60.0)?;
        let mut label = format!("http.check {url} expect {expect}");
        if let Some(c) = &contains {
            label.push_str(&format!(" containing {c:?}"));
        }
        let mut last_err = String::new();
        let mut tries = 0;
        // Bounded by `retries` (at most 101 tries) and by the time limit.
        for attempt in 0..=retries {
            let left = self.remaining(lua, F)?;
            let check = HttpCheck {
                url: url.clone(),
                expect_status: expect,
                expect_body: contains.clone(),
                timeout: timeout.min(left),
            };
            tries += 1;
            let result = self.act(lua, F, label.clone(), |a| {
                let answer = a.http_check(&check).map_err(|e| e.to_string())?;
                if answer.status == expect {
                    Ok(answer.status)
                } else {
                    Err(format!(
                        "GET {url}: got status {}, expected {expect}",
                        answer.status
                    ))
                }
            });
            match result {
                Ok(status) => {
                    return values(vec![
                        Value::Boolean(true),
                        Value::Integer(i64::from(status)),
                    ])
                }
                Err(ApiError::Stopped(m)) => return Err(ApiError::Stopped(m)),
                Err(ApiError::Msg(m)) => {
                    last_err = m.trim_start_matches("twinfs.http.check: ").to_string()
                }
            }
            if attempt < retries {
                let left = self.remaining(lua, F)?;
                if left <= interval {
                    last_err.push_str(" (no time left in the hook for another try)");
                    break;
                }
                std::thread::sleep(interval);
            }
        }
        let plural = if tries == 1 { "try" } else { "tries" };
        // The actuator's own messages name the URL (see `Actuators`).
        Err(ApiError::Msg(format!("{F}: {last_err} ({tries} {plural})")))
    }

    fn exec(&self, lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.exec";
        let t = table_arg(lua, F, &args, &["argv", "timeout", "check"], false)?;
        let argv: Vec<String> = match t.raw_get::<Value>("argv").map_err(internal(F))? {
            Value::Table(a) => {
                let mut v = Vec::new();
                for item in a.sequence_values::<Value>() {
                    match item.map_err(internal(F))? {
                        Value::String(s) => v.push(s.to_string_lossy()),
                        other => {
                            return Err(ApiError::Msg(format!(
                                "{F}: argv must hold only strings, found a {}",
                                other.type_name()
                            )))
                        }
                    }
                }
                v
            }
            Value::Nil => {
                return Err(ApiError::Msg(format!(
                    "{F}: argv is required (argv={{\"/usr/bin/foo\", \"arg\"}})"
                )))
            }
            other => {
                return Err(ApiError::Msg(format!(
                    "{F}: argv must be a table of strings, got a {}",
                    other.type_name()
                )))
            }
        };
        if argv.is_empty() {
            return Err(ApiError::Msg(format!(
                "{F}: argv is empty: name the program to run"
            )));
        }
        let timeout = get_secs(F, &t, "timeout", 10.0, 3600.0)?;
        let check = get_bool(F, &t, "check")?.unwrap_or(true);
        let left = self.remaining(lua, F)?;
        let timeout = timeout.min(left);
        let cmd = argv.join(" ");
        let res = self.act(lua, F, format!("exec {cmd}"), |a| {
            let r = a.exec(&argv, timeout).map_err(|e| e.to_string())?;
            if check {
                let failure = if r.timed_out {
                    Some(format!("timed out after {timeout:?}"))
                } else {
                    match r.code {
                        Some(0) => None,
                        Some(c) => Some(format!("exited with code {c}")),
                        None => Some("was killed by a signal".to_string()),
                    }
                };
                if let Some(what) = failure {
                    let stderr = r.stderr.trim();
                    return Err(if stderr.is_empty() {
                        format!("{cmd}: {what}")
                    } else {
                        format!("{cmd}: {what}: {stderr}")
                    });
                }
            }
            Ok(r)
        })?;
        let out = lua.create_table().map_err(internal(F))?;
        out.raw_set("code", res.code).map_err(internal(F))?;
        out.raw_set("stdout", res.stdout).map_err(internal(F))?;
        out.raw_set("stderr", res.stderr).map_err(internal(F))?;
        out.raw_set("timed_out", res.timed_out)
            .map_err(internal(F))?;
        values(vec![Value::Table(out)])
    }

    fn file_exists(&self, _lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.file_exists";
        let path = match args.front() {
            Some(Value::String(s)) => s.to_string_lossy(),
            other => {
                return Err(ApiError::Msg(format!(
                    "{F}: expected a path string, got {}",
                    type_of(other)
                )))
            }
        };
        let rel = Path::new(&path)
            .strip_prefix("/")
            .map_err(|_| format!("{F}: path must be absolute (start with /), got '{path}'"))?;
        values(vec![Value::Boolean(self.fs_root.join(rel).exists())])
    }

    fn log(&self, lua: &Lua, args: MultiValue) -> ApiResult {
        const F: &str = "twinfs.log";
        let mut it = args.into_iter();
        let level = match it.next() {
            Some(Value::String(s)) => s.to_string_lossy(),
            other => {
                return Err(ApiError::Msg(format!(
                    "{F}: level must be a string, got {}",
                    type_of(other.as_ref())
                )))
            }
        };
        let level = match level.as_str() {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" => LogLevel::Error,
            other => {
                return Err(ApiError::Msg(format!(
                    "{F}: unknown level '{other}' (use debug, info, warn or error)"
                )))
            }
        };
        let message = match it.next() {
            Some(Value::String(s)) => s.to_string_lossy(),
            other => {
                return Err(ApiError::Msg(format!(
                    "{F}: message must be a string, got {}",
                    type_of(other.as_ref())
                )))
            }
        };
        let at = script_location(lua);
        let mut st = lock(&self.shared);
        let hook = st.what();
        let at_s = at.as_deref().unwrap_or("");
        match level {
            LogLevel::Debug => tracing::debug!(hook = %hook, at = at_s, "{message}"),
            LogLevel::Info => tracing::info!(hook = %hook, at = at_s, "{message}"),
            LogLevel::Warn => tracing::warn!(hook = %hook, at = at_s, "{message}"),
            LogLevel::Error => tracing::error!(hook = %hook, at = at_s, "{message}"),
        }
        if st.hook.is_some() {
            st.logs.push(LogLine { level, message, at });
        }
        values(vec![])
    }

    fn check_time(&self, lua: &Lua, _args: MultiValue) -> ApiResult {
        let mut st = lock(&self.shared);
        let expired = match st.deadline {
            Some(d) => Instant::now() >= d,
            None => false,
        };
        if st.stopped_at.is_some() || expired {
            return Err(ApiError::Stopped(st.stop(lua)));
        }
        values(vec![])
    }
}

fn type_of(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Nil) => "nothing".into(),
        Some(v) => format!("a {}", v.type_name()),
    }
}

fn service_name(fname: &str, args: &MultiValue) -> Result<String, ApiError> {
    match args.front() {
        Some(Value::String(s)) if !s.as_bytes().is_empty() => Ok(s.to_string_lossy()),
        other => Err(ApiError::Msg(format!(
            "{fname}: expected a service name like \"apache2\", got {}",
            type_of(other)
        ))),
    }
}

/// The options table of a call, with every key checked against `allowed`.
/// With `optional`, a call without a table (`twinfs.vip.claim()`) gets an empty one.
fn table_arg(
    lua: &Lua,
    fname: &str,
    args: &MultiValue,
    allowed: &[&str],
    optional: bool,
) -> Result<Table, ApiError> {
    let t = match args.front() {
        Some(Value::Table(t)) => t.clone(),
        None | Some(Value::Nil) if optional => return lua.create_table().map_err(internal(fname)),
        other => {
            return Err(ApiError::Msg(format!(
                "{fname}: expected a table like {fname}{{{}=...}}, got {}",
                allowed[0],
                type_of(other)
            )))
        }
    };
    for pair in t.pairs::<Value, Value>() {
        let (k, _) = pair.map_err(internal(fname))?;
        let known = match &k {
            Value::String(s) => allowed.contains(&s.to_string_lossy().as_str()),
            _ => false,
        };
        if !known {
            let key = match &k {
                Value::String(s) => s.to_string_lossy(),
                other => format!("[{}]", other.type_name()),
            };
            return Err(ApiError::Msg(format!(
                "{fname}: unknown field '{key}' (known fields: {})",
                allowed.join(", ")
            )));
        }
    }
    Ok(t)
}

fn get_string(fname: &str, t: &Table, key: &str) -> Result<Option<String>, ApiError> {
    match t.raw_get::<Value>(key).map_err(internal(fname))? {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.to_string_lossy())),
        other => Err(ApiError::Msg(format!(
            "{fname}: {key} must be a string, got a {}",
            other.type_name()
        ))),
    }
}

fn get_bool(fname: &str, t: &Table, key: &str) -> Result<Option<bool>, ApiError> {
    match t.raw_get::<Value>(key).map_err(internal(fname))? {
        Value::Nil => Ok(None),
        Value::Boolean(b) => Ok(Some(b)),
        other => Err(ApiError::Msg(format!(
            "{fname}: {key} must be true or false, got a {}",
            other.type_name()
        ))),
    }
}

fn get_number(fname: &str, t: &Table, key: &str) -> Result<Option<f64>, ApiError> {
    match t.raw_get::<Value>(key).map_err(internal(fname))? {
        Value::Nil => Ok(None),
        Value::Integer(i) => Ok(Some(i as f64)),
        Value::Number(n) => Ok(Some(n)),
        other => Err(ApiError::Msg(format!(
            "{fname}: {key} must be a number, got a {}",
            other.type_name()
        ))),
    }
}

fn get_int(
    fname: &str,
    t: &Table,
    key: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    let Some(n) = get_number(fname, t, key)? else {
        return Ok(default);
    };
    if n.fract() != 0.0 || n < min as f64 || n > max as f64 {
        return Err(ApiError::Msg(format!(
            "{fname}: {key} must be a whole number from {min} to {max}, got {n}"
        )));
    }
    Ok(n as i64)
}

fn get_secs(
    fname: &str,
    t: &Table,
    key: &str,
    default: f64,
    max: f64,
) -> Result<Duration, ApiError> {
    let n = get_number(fname, t, key)?.unwrap_or(default);
    if !(n > 0.0 && n <= max) {
        return Err(ApiError::Msg(format!(
            "{fname}: {key} must be more than 0 and at most {max} seconds, got {n}"
        )));
    }
    Ok(Duration::from_secs_f64(n))
}

/// `10.0.0.10/24` (or `10.0.0.10`, a /32) on `dev`.
pub(crate) fn parse_vip(address: &str, dev: &str) -> Result<Vip, String> {
    let (ip, prefix) = match address.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (address, None),
    };
    let addr: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| format!("address '{address}' is not an IP address (like 10.0.0.10/24)"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| {
                format!("address '{address}': prefix must be a number from 0 to {max}")
            })?,
    };
    if dev.is_empty() {
        return Err("interface is empty".into());
    }
    Ok(Vip {
        addr,
        prefix,
        dev: dev.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_addresses_parse_with_and_without_prefix() {
        let v = parse_vip("10.0.0.10/24", "eth0").unwrap();
        assert_eq!(v.to_string(), "10.0.0.10/24 on eth0");
        assert_eq!(parse_vip("10.0.0.10", "eth0").unwrap().prefix, 32);
        assert_eq!(parse_vip("fd00::10/64", "br0").unwrap().prefix, 64);
        assert_eq!(parse_vip("fd00::10", "br0").unwrap().prefix, 128);
    }

    #[test]
    fn bad_vip_addresses_name_the_problem() {
        let e = parse_vip("10.0.0.300/24", "eth0").unwrap_err();
        assert!(e.contains("'10.0.0.300/24' is not an IP address"), "{e}");
        let e = parse_vip("10.0.0.10/33", "eth0").unwrap_err();
        assert!(e.contains("prefix must be a number from 0 to 32"), "{e}");
        assert_eq!(
            parse_vip("10.0.0.10/24", "").unwrap_err(),
            "interface is empty"
        );
    }
}
