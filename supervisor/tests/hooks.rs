//! The Lua hook runtime against a fake actuator that records calls and can be
//! told to fail: error locations, the time limit, the sandbox, undo on
//! failure, read-only state, and the shipped `scripts/failover.lua`.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use twinfs_supervisor::actions::{
    ActionError, Actuators, ExecResult, HttpAnswer, HttpCheck, ServiceState, Vip, VipClaim,
};
use twinfs_supervisor::hooks::{
    check_script, dry_run, dry_run_with, Hook, HookContext, HookError, HookLimits, HookRuntime,
    HookState,
};

/// Records every call as one line (same format as the dry-run recorder) and
/// fails the calls whose line starts with a prefix it was told about.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    failures: Mutex<Vec<(String, String)>>,
    already_held: bool,
    conflict: Option<String>,
    http_statuses: Mutex<VecDeque<u16>>,
    exec_code: Option<i32>,
}

impl Fake {
    fn new() -> Arc<Self> {
        Arc::new(Fake {
            exec_code: Some(0),
            ..Fake::default()
        })
    }

    fn failing(prefix: &str, message: &str) -> Arc<Self> {
        let f = Fake::new();
        f.fail(prefix, message);
        f
    }

    fn fail(&self, prefix: &str, message: &str) {
        self.failures
            .lock()
            .unwrap()
            .push((prefix.to_string(), message.to_string()));
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, line: String) -> Result<(), ActionError> {
        self.calls.lock().unwrap().push(line.clone());
        for (prefix, msg) in self.failures.lock().unwrap().iter() {
            if line.starts_with(prefix.as_str()) {
                return Err(ActionError(msg.clone()));
            }
        }
        Ok(())
    }
}

impl Actuators for Fake {
    fn vip_claim(&self, vip: &Vip) -> Result<VipClaim, ActionError> {
        self.call(format!("vip.claim {vip}"))?;
        Ok(VipClaim {
            already_held: self.already_held,
            announcements: 3,
            conflict: self.conflict.clone(),
        })
    }
    fn vip_release(&self, vip: &Vip) -> Result<(), ActionError> {
        self.call(format!("vip.release {vip}"))
    }
    fn vip_held(&self, vip: &Vip) -> Result<bool, ActionError> {
        self.call(format!("vip.held {vip}")).map(|()| false)
    }
    fn vip_announce(&self, vip: &Vip) -> Result<u32, ActionError> {
        self.call(format!("vip.announce {vip}")).map(|()| 2)
    }
    fn service_start(&self, name: &str) -> Result<(), ActionError> {
        self.call(format!("service.start {name}"))
    }
    fn service_stop(&self, name: &str) -> Result<(), ActionError> {
        self.call(format!("service.stop {name}"))
    }
    fn service_status(&self, name: &str) -> Result<ServiceState, ActionError> {
        self.call(format!("service.status {name}"))
            .map(|()| ServiceState::Stopped)
    }
    fn http_check(&self, check: &HttpCheck) -> Result<HttpAnswer, ActionError> {
        self.call(format!(
            "http.check {} expect {}",
            check.url, check.expect_status
        ))?;
        let status = self
            .http_statuses
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(200);
        Ok(HttpAnswer {
            status,
            body_bytes: 10,
            elapsed: Duration::from_millis(1),
        })
    }
    fn exec(&self, argv: &[String], _timeout: Duration) -> Result<ExecResult, ActionError> {
        self.call(format!("exec {}", argv.join(" ")))?;
        Ok(ExecResult {
            code: self.exec_code,
            stdout: "out\n".into(),
            stderr: "something broke\n".into(),
            timed_out: false,
        })
    }
}

/// A scratch directory holding the script (and a fake `/` for file_exists).
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn script(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("failover.lua");
        std::fs::write(&p, text).expect("write script");
        p
    }

    fn shipped_script(&self) -> PathBuf {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/failover.lua");
        let text = std::fs::read_to_string(&shipped).expect("read scripts/failover.lua");
        self.script(&text)
    }

    /// Makes `/usr/sbin/NAME` exist under the fake root.
    fn install(&self, name: &str) {
        let sbin = self.dir.path().join("root/usr/sbin");
        std::fs::create_dir_all(&sbin).unwrap();
        std::fs::write(sbin.join(name), "").unwrap();
    }

    fn ctx(&self, vars: &[(&str, &str)]) -> HookContext {
        let mut ctx = HookContext::new(
            "node-a",
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        ctx.fs_root = self.dir.path().join("root");
        ctx
    }

    fn load(&self, text: &str, fake: &Arc<Fake>) -> Result<HookRuntime, HookError> {
        let path = self.script(text);
        HookRuntime::load(&path, self.ctx(VARS), fake.clone(), HookLimits::default())
    }
}

const VARS: &[(&str, &str)] = &[("vip", "10.0.0.10/24"), ("interface", "eth0")];

fn promote(rt: &mut HookRuntime) -> Result<twinfs_supervisor::hooks::HookReport, HookError> {
    rt.run(Hook::Promote, &HookState::example(Hook::Promote))
}

/// The message of a failed hook (panics on any other outcome).
fn failed_message(result: Result<twinfs_supervisor::hooks::HookReport, HookError>) -> String {
    match result {
        Err(HookError::Failed { message, .. }) => message,
        other => panic!("expected a failed hook, got {other:?}"),
    }
}

#[test]
fn syntax_error_names_file_and_line() {
    let lab = Lab::new();
    let path = lab.script("-- ok\nfunction on_promote(\n  x = = 1\nend\n");
    let err = HookRuntime::load(&path, lab.ctx(VARS), Fake::new(), HookLimits::default())
        .expect_err("must not load");
    let HookError::Syntax { message, .. } = &err else {
        panic!("expected a syntax error, got {err:?}")
    };
    assert!(
        message.starts_with(&format!("{}:3:", path.display())),
        "{message}"
    );
    assert!(err.to_string().starts_with("syntax error: "), "{err}");
}

#[test]
fn runtime_error_names_file_and_line() {
    let lab = Lab::new();
    let fake = Fake::new();
    let mut rt = lab
        .load(
            "function on_promote()\n  local t = nil\n  t.x = 1\nend\n",
            &fake,
        )
        .unwrap();
    let msg = failed_message(promote(&mut rt));
    let path = lab.dir.path().join("failover.lua");
    assert!(msg.starts_with(&format!("{}:3: ", path.display())), "{msg}");
    assert!(msg.contains("attempt to index a nil value"), "{msg}");
    assert!(!msg.contains("stack traceback"), "{msg}");
}

#[test]
fn twinfs_error_names_file_line_and_actuator_message() {
    let lab = Lab::new();
    let fake = Fake::failing(
        "vip.claim",
        "ip addr add 10.0.0.10/24 dev eth0: RTNETLINK answers: Operation not permitted",
    );
    let mut rt = lab
        .load(
            "function on_promote()\n  twinfs.log('claiming')\n  twinfs.vip.claim{}\nend\n",
            &fake,
        )
        .unwrap();
    let err = promote(&mut rt).unwrap_err();
    let path = lab.dir.path().join("failover.lua");
    let expected = format!(
        "{}:3: twinfs.vip.claim: ip addr add 10.0.0.10/24 dev eth0: RTNETLINK answers: Operation not permitted",
        path.display()
    );
    assert_eq!(err.to_string(), format!("on_promote failed: {expected}"));
    let report = err.report().expect("a failed hook has a report");
    assert_eq!(report.actions.len(), 1);
    assert_eq!(report.actions[0].action, "vip.claim 10.0.0.10/24 on eth0");
    assert_eq!(report.actions[0].at, Some(format!("{}:3", path.display())));
    assert!(report.actions[0].error.is_some());
    assert_eq!(report.logs.len(), 1);
    assert_eq!(report.logs[0].message, "claiming");
}

#[test]
fn bad_arguments_are_errors_with_location() {
    let lab = Lab::new();
    let fake = Fake::new();
    let mut rt = lab
        .load(
            "function on_promote()\n  twinfs.vip.claim{adress='10.0.0.11/24'}\nend\n\
             function on_demote()\n  twinfs.service.start(42)\nend\n",
            &fake,
        )
        .unwrap();
    let msg = failed_message(promote(&mut rt));
    assert!(msg.ends_with("failover.lua:2: twinfs.vip.claim: unknown field 'adress' (known fields: address, interface, allow_conflict)"), "{msg}");
    let msg = failed_message(rt.run(Hook::Demote, &HookState::example(Hook::Demote)));
    assert!(msg.ends_with("failover.lua:5: twinfs.service.start: expected a service name like \"apache2\", got a integer"), "{msg}");
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[test]
fn time_limit_stops_an_endless_loop() {
    let lab = Lab::new();
    let path = lab.script(
        "function on_promote()\n  twinfs.service.start('apache2')\n  while true do end\nend\n",
    );
    let fake = Fake::new();
    let limits = HookLimits {
        time: Duration::from_millis(300),
        ..HookLimits::default()
    };
    let mut rt = HookRuntime::load(&path, lab.ctx(VARS), fake.clone(), limits).unwrap();
    let err = promote(&mut rt).unwrap_err();
    let HookError::TimeLimit {
        what, limit, at, ..
    } = &err
    else {
        panic!("expected a time limit error, got {err:?}")
    };
    assert_eq!(what, "on_promote");
    assert_eq!(*limit, Duration::from_millis(300));
    assert_eq!(at, &format!("{}:3", path.display()));
    let text = err.to_string();
    assert!(
        text.contains("on_promote ran longer than its time limit of 300ms and was stopped"),
        "{text}"
    );
    // The service it had started is stopped again.
    assert!(
        text.ends_with("; undone: service.stop apache2 (ok)"),
        "{text}"
    );
    assert_eq!(
        fake.calls(),
        ["service.start apache2", "service.stop apache2"]
    );
}

/// A hook stuck inside one C call (a pathological pattern: `string.find`
/// backtracks for hours on a 30 KB string), where the instruction-count limit
/// cannot reach: its thread is abandoned past the limit, the failure is
/// reported as a time limit, its steps are undone, and the next hook runs on a
/// freshly loaded script.
#[test]
fn a_hook_stuck_inside_a_c_function_is_abandoned_undone_and_the_next_hook_runs() {
    let lab = Lab::new();
    let path = lab.script(
        "function on_promote()\n  twinfs.service.start('apache2')\n  \
         local s = string.rep('a', 30000)\n  \
         string.find(s, string.rep('a-', 12) .. 'b')\nend\n\
         function on_demote()\n  twinfs.service.stop('apache2')\nend\n",
    );
    let fake = Fake::new();
    let limits = HookLimits {
        time: Duration::from_millis(300),
        ..HookLimits::default()
    };
    let mut rt = HookRuntime::load(&path, lab.ctx(VARS), fake.clone(), limits).unwrap();
    let err = promote(&mut rt).unwrap_err();
    let HookError::TimeLimit { what, at, .. } = &err else {
        panic!("expected a time limit error, got {err:?}")
    };
    assert_eq!(what, "on_promote");
    assert!(at.contains("abandoned"), "{at}");
    let text = err.to_string();
    assert!(
        text.ends_with("; undone: service.stop apache2 (ok)"),
        "{text}"
    );
    assert_eq!(
        fake.calls(),
        ["service.start apache2", "service.stop apache2"]
    );
    // The runtime goes on: the next hook runs on a new interpreter.
    let report = rt
        .run(Hook::Demote, &HookState::example(Hook::Demote))
        .expect("on_demote after an abandoned hook");
    assert!(report.defined);
    assert_eq!(
        fake.calls(),
        [
            "service.start apache2",
            "service.stop apache2",
            "service.stop apache2"
        ]
    );
}

#[test]
fn time_limit_cannot_be_caught_by_pcall() {
    let lab = Lab::new();
    let path = lab.script(
        "function on_promote()\n  for i = 1, 1e12 do\n    pcall(function() while true do end end)\n    xpcall(function() while true do end end, print)\n  end\nend\n",
    );
    let limits = HookLimits {
        time: Duration::from_millis(200),
        ..HookLimits::default()
    };
    let mut rt = HookRuntime::load(&path, lab.ctx(VARS), Fake::new(), limits).unwrap();
    let err = promote(&mut rt).unwrap_err();
    assert!(matches!(err, HookError::TimeLimit { .. }), "{err:?}");
}

#[test]
fn time_limit_applies_while_loading() {
    let lab = Lab::new();
    let path = lab.script("local n = 0\nwhile true do n = n + 1 end\n");
    let limits = HookLimits {
        time: Duration::from_millis(200),
        ..HookLimits::default()
    };
    let err = HookRuntime::load(&path, lab.ctx(VARS), Fake::new(), limits).unwrap_err();
    let HookError::TimeLimit { what, at, .. } = &err else {
        panic!("expected a time limit error, got {err:?}")
    };
    assert_eq!(what, "loading the script");
    assert_eq!(at, &format!("{}:2", path.display()));
}

#[test]
fn sandbox_denies_dangerous_functions() {
    let lab = Lab::new();
    let cases = [
        ("io.open('/etc/passwd')", "global 'io'"),
        ("os.execute('true')", "field 'execute'"),
        ("os.getenv('HOME')", "field 'getenv'"),
        ("os.remove('/tmp/x')", "field 'remove'"),
        ("os.exit(1)", "field 'exit'"),
        ("require('socket')", "global 'require'"),
        ("debug.getinfo(1)", "global 'debug'"),
        ("dofile('/etc/passwd')", "global 'dofile'"),
        ("loadfile('/etc/passwd')", "global 'loadfile'"),
        ("rawset(twinfs.state, 'role', 'x')", "global 'rawset'"),
        ("string.dump(print)", "field 'dump'"),
        ("coroutine.create(print)", "global 'coroutine'"),
        (
            "local f, e = load(string.char(27) .. 'LuaT', 'x', 'b'); error(e)",
            "attempt to load a binary chunk (mode is 't')",
        ),
    ];
    for (code, expected) in cases {
        let fake = Fake::new();
        let mut rt = lab
            .load(&format!("function on_promote()\n  {code}\nend\n"), &fake)
            .unwrap();
        let msg = failed_message(promote(&mut rt));
        assert!(msg.contains(":2:"), "{code}: {msg}");
        assert!(msg.contains(expected), "{code}: {msg}");
    }
}

#[test]
fn sandbox_keeps_the_useful_libraries() {
    let lab = Lab::new();
    let fake = Fake::new();
    let mut rt = lab
        .load(
            "function on_promote()\n\
               local parts = {}\n\
               for w in ('a b c'):gmatch('%a') do table.insert(parts, w:upper()) end\n\
               assert(table.concat(parts, ',') == 'A,B,C')\n\
               assert(math.floor(2.5) == 2 and utf8.char(72) == 'H')\n\
               assert(type(os.time()) == 'number' and type(os.clock()) == 'number')\n\
               assert(type(os.date('%Y')) == 'string')\n\
               assert(load('return 1 + 1')() == 2)\n\
               local ok, err = pcall(error, 'caught')\n\
               assert(not ok and err == 'caught')\n\
               twinfs.log.info(string.format('%d-%s', 7, 'ok'))\n\
             end\n",
            &fake,
        )
        .unwrap();
    let report = promote(&mut rt).expect("the allowed libraries work");
    assert_eq!(report.logs[0].message, "7-ok");
}

#[test]
fn actions_are_refused_while_loading() {
    let lab = Lab::new();
    let fake = Fake::new();
    let err = lab
        .load("twinfs.service.start('apache2')\n", &fake)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "failover.lua:1: twinfs.service.start can only be called inside a hook function"
        ),
        "{text}"
    );
    assert!(fake.calls().is_empty());
}

#[test]
fn failure_undoes_done_steps_in_reverse_order() {
    let lab = Lab::new();
    let fake = Fake::failing("http.check", "GET http://10.0.0.10/: connection refused");
    let mut rt = lab
        .load(
            "function on_promote()\n\
               twinfs.vip.claim{}\n\
               twinfs.service.start('memcached')\n\
               twinfs.service.start('apache2')\n\
               twinfs.http.check{url='http://10.0.0.10/'}\n\
             end\n",
            &fake,
        )
        .unwrap();
    let err = promote(&mut rt).unwrap_err();
    assert_eq!(
        fake.calls(),
        [
            "vip.claim 10.0.0.10/24 on eth0",
            "service.start memcached",
            "service.start apache2",
            "http.check http://10.0.0.10/ expect 200",
            "service.stop apache2",
            "service.stop memcached",
            "vip.release 10.0.0.10/24 on eth0",
        ]
    );
    let report = err.report().unwrap();
    let undone: Vec<&str> = report.undone.iter().map(|u| u.action.as_str()).collect();
    assert_eq!(
        undone,
        [
            "service.stop apache2",
            "service.stop memcached",
            "vip.release 10.0.0.10/24 on eth0"
        ]
    );
    assert_eq!(report.actions.len(), 4);
    let text = err.to_string();
    assert!(
        text.contains(
            "failover.lua:5: twinfs.http.check: GET http://10.0.0.10/: connection refused (1 try)"
        ),
        "{text}"
    );
    assert!(text.ends_with("; undone: service.stop apache2 (ok), service.stop memcached (ok), vip.release 10.0.0.10/24 on eth0 (ok)"), "{text}");
}

#[test]
fn undo_errors_are_reported_and_do_not_stop_the_other_undos() {
    let lab = Lab::new();
    let fake = Fake::failing("service.stop", "systemctl stop apache2: exit 1");
    fake.fail("exec", "cannot run /bin/false");
    let mut rt = lab
        .load(
            "function on_promote()\n  twinfs.vip.claim{}\n  twinfs.service.start('apache2')\n  twinfs.exec{argv={'/bin/false'}}\nend\n",
            &fake,
        )
        .unwrap();
    let err = promote(&mut rt).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("undone: service.stop apache2 (failed: systemctl stop apache2: exit 1), vip.release 10.0.0.10/24 on eth0 (ok)"), "{text}");
}

#[test]
fn steps_the_hook_did_not_change_or_already_reverted_are_not_undone() {
    let lab = Lab::new();
    let fake = Arc::new(Fake {
        already_held: true,
        exec_code: Some(0),
        ..Fake::default()
    });
    fake.fail("http.check", "connection refused");
    let mut rt = lab
        .load(
            "function on_promote()\n  twinfs.vip.claim{}\n  twinfs.service.start('a')\n  twinfs.service.stop('a')\n  twinfs.http.check{url='http://x/'}\nend\n",
            &fake,
        )
        .unwrap();
    let err = promote(&mut rt).unwrap_err();
    assert!(err.report().unwrap().undone.is_empty(), "{err}");
}

#[test]
fn conflict_is_an_error_unless_allowed() {
    let lab = Lab::new();
    let fake = Arc::new(Fake {
        conflict: Some("aa:bb:cc:dd:ee:ff".into()),
        exec_code: Some(0),
        ..Fake::default()
    });
    let mut rt = lab
        .load(
            "function on_promote()\n  twinfs.vip.claim{}\nend\n\
             function on_peer_back()\n  local c = twinfs.vip.claim{allow_conflict=true}\n  twinfs.log(c.conflict)\nend\n",
            &fake,
        )
        .unwrap();
    let err = promote(&mut rt).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("failover.lua:2: twinfs.vip.claim: 10.0.0.10/24 on eth0: another host (aa:bb:cc:dd:ee:ff) answers for this address"), "{text}");
    assert!(
        text.ends_with("undone: vip.release 10.0.0.10/24 on eth0 (ok)"),
        "{text}"
    );
    let report = rt
        .run(Hook::PeerBack, &HookState::example(Hook::PeerBack))
        .expect("allowed conflict");
    assert_eq!(report.logs[0].message, "aa:bb:cc:dd:ee:ff");
}

#[test]
fn state_and_config_are_readable_and_read_only() {
    let lab = Lab::new();
    let fake = Fake::new();
    let mut rt = lab
        .load(
            "function on_promote()\n\
               twinfs.log(twinfs.state.node .. ' ' .. twinfs.state.role .. ' ' .. twinfs.state.hook .. ' ' .. twinfs.config.vip)\n\
               local n = 0\n\
               for k, v in pairs(twinfs.config) do n = n + 1 end\n\
               twinfs.log(tostring(n))\n\
               twinfs.state.role = 'secondary'\n\
             end\n\
             function on_demote()\n\
               twinfs.config.vip = '10.9.9.9'\n\
             end\n\
             function on_peer_lost()\n\
               setmetatable(twinfs.state, {})\n\
             end\n",
            &fake,
        )
        .unwrap();
    let err = promote(&mut rt).unwrap_err();
    let report = err.report().unwrap();
    assert_eq!(
        report.logs[0].message,
        "node-a primary on_promote 10.0.0.10/24"
    );
    assert_eq!(report.logs[1].message, "2");
    assert!(
        err.to_string()
            .contains("failover.lua:6: twinfs.state is read-only (tried to set role)"),
        "{err}"
    );
    let msg = failed_message(rt.run(Hook::Demote, &HookState::example(Hook::Demote)));
    assert!(
        msg.ends_with("failover.lua:9: twinfs.config is read-only (tried to set vip)"),
        "{msg}"
    );
    let msg = failed_message(rt.run(Hook::PeerLost, &HookState::example(Hook::PeerLost)));
    assert!(msg.contains("cannot change a protected metatable"), "{msg}");
}

#[test]
fn a_missing_hook_does_nothing() {
    let lab = Lab::new();
    let fake = Fake::new();
    let mut rt = lab.load("function on_promote() end\n", &fake).unwrap();
    assert_eq!(rt.defined(), [Hook::Promote]);
    let report = rt
        .run(Hook::SplitBrain, &HookState::example(Hook::SplitBrain))
        .unwrap();
    assert!(!report.defined);
    assert!(report.actions.is_empty());
}

#[test]
fn http_check_retries_until_the_expected_status() {
    let lab = Lab::new();
    let fake = Fake::new();
    fake.http_statuses.lock().unwrap().extend([503, 503, 200]);
    let mut rt = lab
        .load(
            "function on_promote()\n  local ok, status = twinfs.http.check{url='http://10.0.0.10/', retries=5, interval=0.01}\n  twinfs.log(tostring(ok) .. ' ' .. status)\nend\n\
             function on_demote()\n  twinfs.http.check{url='http://10.0.0.10/', retries=1, interval=0.01}\nend\n",
            &fake,
        )
        .unwrap();
    let report = promote(&mut rt).unwrap();
    assert_eq!(report.actions.len(), 3);
    assert_eq!(report.logs[0].message, "true 200");
    fake.http_statuses.lock().unwrap().extend([500, 502]);
    let msg = failed_message(rt.run(Hook::Demote, &HookState::example(Hook::Demote)));
    assert!(msg.ends_with("failover.lua:6: twinfs.http.check: GET http://10.0.0.10/: got status 502, expected 200 (2 tries)"), "{msg}");
}

#[test]
fn exec_raises_on_failure_unless_check_is_false() {
    let lab = Lab::new();
    let fake = Arc::new(Fake {
        exec_code: Some(3),
        ..Fake::default()
    });
    let mut rt = lab
        .load(
            "function on_promote()\n  local r = twinfs.exec{argv={'/usr/bin/foo', 'x'}, check=false}\n  twinfs.log(r.code .. ' ' .. r.stdout)\n  twinfs.exec{argv={'/usr/bin/foo', 'y'}}\nend\n",
            &fake,
        )
        .unwrap();
    let err = promote(&mut rt).unwrap_err();
    assert_eq!(err.report().unwrap().logs[0].message, "3 out\n");
    assert!(
        err.to_string().contains(
            "failover.lua:4: twinfs.exec: /usr/bin/foo y: exited with code 3: something broke"
        ),
        "{err}"
    );
}

/// The shipped failover.lua, loaded with the usual settings and `fake`'s actions.
fn shipped(lab: &Lab, fake: &Arc<Fake>) -> HookRuntime {
    HookRuntime::load(
        &lab.shipped_script(),
        lab.ctx(VARS),
        fake.clone(),
        HookLimits::default(),
    )
    .unwrap()
}

#[test]
fn failover_lua_promote_claims_then_starts_then_checks() {
    let lab = Lab::new();
    lab.install("apache2");
    let fake = Fake::new();
    let mut rt = shipped(&lab, &fake);
    assert_eq!(rt.defined(), &Hook::ALL[..5], "all but on_fence");
    let report = promote(&mut rt).unwrap();
    assert_eq!(
        fake.calls(),
        [
            "vip.claim 10.0.0.10/24 on eth0",
            "service.start apache2",
            "http.check http://10.0.0.10/ expect 200",
        ]
    );
    assert_eq!(report.actions.len(), 3);
}

#[test]
fn failover_lua_demote_stops_then_releases_even_when_stop_fails() {
    let lab = Lab::new();
    lab.install("apache2");
    let fake = Fake::new();
    let mut rt = shipped(&lab, &fake);
    rt.run(Hook::Demote, &HookState::example(Hook::Demote))
        .unwrap();
    assert_eq!(
        fake.calls(),
        ["service.stop apache2", "vip.release 10.0.0.10/24 on eth0"]
    );

    fake.fail("service.stop", "systemctl stop apache2: timed out");
    let msg = failed_message(rt.run(Hook::Demote, &HookState::example(Hook::Demote)));
    assert!(
        msg.contains("twinfs.service.stop: systemctl stop apache2: timed out"),
        "{msg}"
    );
    assert_eq!(
        fake.calls()[2..],
        ["service.stop apache2", "vip.release 10.0.0.10/24 on eth0"]
    );
}

/// `HookState::example(hook)` on a node whose standby serves (or not).
fn standby(hook: Hook, serves: bool) -> HookState {
    HookState {
        standby_serves: serves,
        ..HookState::example(hook)
    }
}

#[test]
fn state_standby_serves_is_a_boolean_the_script_reads() {
    let lab = Lab::new();
    let fake = Fake::new();
    let mut rt = lab
        .load(
            "function on_demote()\n  twinfs.log.info(type(twinfs.state.standby_serves) .. \" \" .. tostring(twinfs.state.standby_serves))\nend\n",
            &fake,
        )
        .unwrap();
    for serves in [true, false] {
        let report = rt
            .run(Hook::Demote, &standby(Hook::Demote, serves))
            .unwrap();
        assert_eq!(report.logs[0].message, format!("boolean {serves}"));
    }
}

#[test]
fn failover_lua_demote_with_standby_serving_releases_the_vip_and_keeps_apache() {
    let lab = Lab::new();
    lab.install("apache2");
    let fake = Fake::new();
    let mut rt = shipped(&lab, &fake);
    rt.run(Hook::Demote, &standby(Hook::Demote, true)).unwrap();
    assert_eq!(
        fake.calls(),
        ["vip.release 10.0.0.10/24 on eth0", "service.start apache2"]
    );
    // Off: today's demotion, Apache stopped.
    rt.run(Hook::Demote, &standby(Hook::Demote, false)).unwrap();
    assert_eq!(
        fake.calls()[2..],
        ["service.stop apache2", "vip.release 10.0.0.10/24 on eth0"]
    );
    // The address goes first: a failed release starts nothing.
    fake.fail("vip.release", "ip addr del: no such device");
    let msg = failed_message(rt.run(Hook::Demote, &standby(Hook::Demote, true)));
    assert!(msg.contains("ip addr del: no such device"), "{msg}");
    assert_eq!(fake.calls()[4..], ["vip.release 10.0.0.10/24 on eth0"]);
}

#[test]
fn failover_lua_promote_is_the_same_whether_the_standby_serves() {
    let mut seen = Vec::new();
    for serves in [false, true] {
        let lab = Lab::new();
        lab.install("apache2");
        let fake = Fake::new();
        let mut rt = HookRuntime::load(
            &lab.shipped_script(),
            lab.ctx(VARS),
            fake.clone(),
            HookLimits::default(),
        )
        .unwrap();
        rt.run(Hook::Promote, &standby(Hook::Promote, serves))
            .unwrap();
        seen.push(fake.calls());
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0][0], "vip.claim 10.0.0.10/24 on eth0");
}

#[test]
fn dry_run_with_standby_serving_lists_the_standby_demotion() {
    let lab = Lab::new();
    lab.install("apache2");
    let path = lab.shipped_script();
    let lines = dry_run_with(
        &path,
        Hook::Demote,
        lab.ctx(VARS),
        &standby(Hook::Demote, true),
    )
    .unwrap();
    assert_eq!(
        lines,
        ["vip.release 10.0.0.10/24 on eth0", "service.start apache2"]
    );
}

#[test]
fn failover_lua_picks_apache2_or_httpd() {
    for (installed, vars, expected) in [
        ("apache2", VARS.to_vec(), "service.start apache2"),
        ("httpd", VARS.to_vec(), "service.start httpd"),
        (
            "httpd",
            [VARS, &[("service", "nginx")]].concat(),
            "service.start nginx",
        ),
    ] {
        let lab = Lab::new();
        lab.install(installed);
        let fake = Fake::new();
        let mut rt = HookRuntime::load(
            &lab.shipped_script(),
            lab.ctx(&vars),
            fake.clone(),
            HookLimits::default(),
        )
        .unwrap();
        promote(&mut rt).unwrap();
        assert_eq!(fake.calls()[1], expected, "{installed} {vars:?}");
    }
}

#[test]
fn failover_lua_without_vip_names_the_missing_setting() {
    let lab = Lab::new();
    lab.install("apache2");
    let fake = Fake::new();
    let path = lab.shipped_script();
    let mut rt = HookRuntime::load(
        &path,
        lab.ctx(&[("interface", "eth0")]),
        fake.clone(),
        HookLimits::default(),
    )
    .unwrap();
    let msg = failed_message(promote(&mut rt));
    assert!(msg.starts_with(&format!("{}:", path.display())), "{msg}");
    assert!(
        msg.contains("set vip = \"10.0.0.10/24\" in the [failover] table of twinfs.toml"),
        "{msg}"
    );
    assert!(fake.calls().is_empty());
}

#[test]
fn failover_lua_peer_back_announces_only_on_the_primary() {
    let lab = Lab::new();
    lab.install("httpd");
    let fake = Fake::new();
    let mut rt = shipped(&lab, &fake);
    rt.run(Hook::PeerBack, &HookState::example(Hook::PeerBack))
        .unwrap();
    let secondary = HookState {
        role: "secondary".into(),
        ..HookState::example(Hook::PeerBack)
    };
    let report = rt.run(Hook::PeerBack, &secondary).unwrap();
    assert_eq!(fake.calls(), ["vip.announce 10.0.0.10/24 on eth0"]);
    assert!(report.logs[0].message.contains("is back"));
    let report = rt
        .run(Hook::SplitBrain, &HookState::example(Hook::SplitBrain))
        .unwrap();
    assert!(report.logs[0].message.starts_with("split brain"));
}

#[test]
fn check_script_finds_misspelled_hooks_and_non_functions() {
    let lab = Lab::new();
    let path = lab.script(
        "function on_demote() end\n\nfunction on_promot()\nend\nOn_Peer_Lost = function() end\nlocal helper = 1\n",
    );
    let report = check_script(&path).unwrap();
    assert_eq!(report.defined, [Hook::Demote]);
    assert_eq!(
        report.warnings,
        [
            format!("{}:3: global 'on_promot' looks like a misspelled hook name (did you mean on_promote?); twinfs never calls it", path.display()),
            format!("{}:5: global 'On_Peer_Lost' looks like a misspelled hook name (did you mean on_peer_lost?); twinfs never calls it", path.display()),
        ]
    );

    let path = lab.script("function on_promote() end\non_demote = 'stop apache'\n");
    let err = check_script(&path).unwrap_err();
    assert!(matches!(err, HookError::NotAFunction { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2: on_demote must be a function, but the script sets it to a string",
            path.display()
        )
    );
}

#[test]
fn check_script_accepts_the_shipped_script() {
    let lab = Lab::new();
    let report = check_script(&lab.shipped_script()).unwrap();
    assert_eq!(report.defined, &Hook::ALL[..5], "all but on_fence");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn dry_run_of_failover_lua_lists_the_actions() {
    let lab = Lab::new();
    lab.install("apache2");
    let path = lab.shipped_script();
    let lines = dry_run(&path, Hook::Promote, lab.ctx(VARS)).unwrap();
    assert_eq!(
        lines,
        [
            "vip.claim 10.0.0.10/24 on eth0",
            "service.start apache2",
            "http.check http://10.0.0.10/ expect 200",
        ]
    );
    let lines = dry_run(&path, Hook::Demote, lab.ctx(VARS)).unwrap();
    assert_eq!(
        lines,
        ["service.stop apache2", "vip.release 10.0.0.10/24 on eth0"]
    );
    let lines = dry_run(&path, "peer-back".parse().unwrap(), lab.ctx(VARS)).unwrap();
    assert_eq!(lines, ["vip.announce 10.0.0.10/24 on eth0"]);
}

#[test]
fn memory_limit_stops_a_greedy_script_and_the_runtime_stays_usable() {
    let lab = Lab::new();
    let path = lab.script(
        "function on_promote()\n  local t = {}\n  for i = 1, 1e7 do t[i] = string.rep('x', 1000) .. i end\nend\n\
         function on_demote() twinfs.log('still here') end\n",
    );
    let limits = HookLimits {
        memory: 8 << 20,
        ..HookLimits::default()
    };
    let mut rt = HookRuntime::load(&path, lab.ctx(VARS), Fake::new(), limits).unwrap();
    let msg = failed_message(promote(&mut rt));
    assert!(msg.contains("memory limit of 8 MiB"), "{msg}");
    let report = rt
        .run(Hook::Demote, &HookState::example(Hook::Demote))
        .unwrap();
    assert_eq!(report.logs[0].message, "still here");
}

#[test]
fn print_goes_to_the_log() {
    let lab = Lab::new();
    let fake = Fake::new();
    let mut rt = lab
        .load(
            "function on_promote()\n  print('a', 1, nil, true)\nend\n",
            &fake,
        )
        .unwrap();
    let report = promote(&mut rt).unwrap();
    assert_eq!(report.logs[0].message, "a\t1\tnil\ttrue");
    assert_eq!(
        report.logs[0].at.as_deref(),
        Some(format!("{}:2", lab.dir.path().join("failover.lua").display()).as_str())
    );
}

#[test]
fn hook_names_parse_from_the_command_line() {
    assert_eq!("promote".parse::<Hook>(), Ok(Hook::Promote));
    assert_eq!("on_demote".parse::<Hook>(), Ok(Hook::Demote));
    assert_eq!("Peer-Lost".parse::<Hook>(), Ok(Hook::PeerLost));
    assert_eq!("split_brain".parse::<Hook>(), Ok(Hook::SplitBrain));
    let err = "failover".parse::<Hook>().unwrap_err();
    assert!(err.contains("unknown hook 'failover'"), "{err}");
}

#[test]
fn the_runtime_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<HookRuntime>();
    let lab = Lab::new();
    let fake = Fake::new();
    let mut rt = lab
        .load(
            "function on_promote() twinfs.service.start('apache2') end\n",
            &fake,
        )
        .unwrap();
    let report = std::thread::spawn(move || promote(&mut rt))
        .join()
        .expect("hook thread")
        .unwrap();
    assert_eq!(report.actions[0].action, "service.start apache2");
}
