//! The dry-run actuator: performs nothing, answers like a healthy machine and
//! writes down each call as one line (`vip.claim 10.0.0.10/24 on eth0`).

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::actions::{
    ActionError, Actuators, ExecResult, HttpAnswer, HttpCheck, ServiceState, Vip, VipClaim,
};

/// Records what a hook would do, for `twinfs hooks dry-run`.
///
/// Its answers: a VIP is not held until claimed here, services are stopped
/// until started here, every HTTP check gets a 200, every command exits 0
/// with no output.
#[derive(Debug, Default)]
pub struct Recorder {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    lines: Vec<String>,
    held: BTreeSet<String>,
    running: BTreeSet<String>,
}

impl Recorder {
    /// A recorder with no VIP held and no service running.
    pub fn new() -> Self {
        Recorder::default()
    }

    /// The calls so far, one line each, in order.
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, line: String) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        inner.lines.push(line);
        inner
    }
}

impl Actuators for Recorder {
    fn vip_claim(&self, vip: &Vip) -> Result<VipClaim, ActionError> {
        let mut inner = self.note(format!("vip.claim {vip}"));
        let already_held = !inner.held.insert(vip.to_string());
        Ok(VipClaim {
            already_held,
            announcements: 3,
            conflict: None,
        })
    }

    fn vip_release(&self, vip: &Vip) -> Result<(), ActionError> {
        self.note(format!("vip.release {vip}"))
            .held
            .remove(&vip.to_string());
        Ok(())
    }

    fn vip_held(&self, vip: &Vip) -> Result<bool, ActionError> {
        Ok(self
            .note(format!("vip.held {vip}"))
            .held
            .contains(&vip.to_string()))
    }

    fn vip_announce(&self, vip: &Vip) -> Result<u32, ActionError> {
        drop(self.note(format!("vip.announce {vip}")));
        Ok(3)
    }

    fn service_start(&self, name: &str) -> Result<(), ActionError> {
        self.note(format!("service.start {name}"))
            .running
            .insert(name.to_string());
        Ok(())
    }

    fn service_stop(&self, name: &str) -> Result<(), ActionError> {
        self.note(format!("service.stop {name}"))
            .running
            .remove(name);
        Ok(())
    }

    fn service_status(&self, name: &str) -> Result<ServiceState, ActionError> {
        let inner = self.note(format!("service.status {name}"));
        Ok(if inner.running.contains(name) {
            ServiceState::Running
        } else {
            ServiceState::Stopped
        })
    }

    fn http_check(&self, check: &HttpCheck) -> Result<HttpAnswer, ActionError> {
        let mut line = format!("http.check {} expect {}", check.url, check.expect_status);
        if let Some(body) = &check.expect_body {
            line.push_str(&format!(" containing {body:?}"));
        }
        drop(self.note(line));
        Ok(HttpAnswer {
            status: check.expect_status,
            body_bytes: 0,
            elapsed: Duration::ZERO,
        })
    }

    fn exec(&self, argv: &[String], _timeout: Duration) -> Result<ExecResult, ActionError> {
        drop(self.note(format!("exec {}", argv.join(" "))));
        Ok(ExecResult {
            code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
            timed_out: false,
        })
    }
}
