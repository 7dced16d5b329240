//! Carrying out the machine's decisions: the witness lease, the store's
//! role, the Lua hooks (with their timings for the metrics) and the
//! escalation after a failed demotion. Each step's result goes back to the
//! machine, which may answer with the next step or a rollback.

use super::probes::WitnessCmd;
use super::{Driver, HANDOVER_ANNOUNCE};
use crate::hooks::{Hook, HookState};
use crate::machine::{Action, Decision, Escalation, Role, Step};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;
use twinfs_replicator::status::{ConnectionState, DiskState, Status};

impl Driver {
    /// Logs every decision and carries out the driver's ones, one step at a time.
    pub(super) fn process(&mut self, decisions: Vec<Decision>) {
        let mut todo: VecDeque<Decision> = decisions.into();
        let mut guard = 0;
        while let Some(d) = todo.pop_front() {
            guard += 1;
            if guard > 1000 {
                tracing::error!("supervisor: too many decisions in one go; stopping this round");
                break;
            }
            self.record(&d);
            match d.action {
                Action::Promote => self.counters.promotions += 1,
                Action::Demote => self.counters.demotions += 1,
                Action::RollBack => self.counters.rollbacks += 1,
                _ => {}
            }
            match d.action {
                Action::Step(step) => {
                    let result = self.run_step(step);
                    if let Err(e) = &result {
                        self.note(format!("step {step:?} failed: {e}"));
                    }
                    match self
                        .machine
                        .handle_step_finished(self.now_ms(), step, result)
                    {
                        Ok(more) => todo.extend(more),
                        Err(e) => tracing::error!("supervisor: {e}"),
                    }
                }
                Action::RunHook(h) => {
                    let hook = match h {
                        crate::machine::Hook::PeerLost => Hook::PeerLost,
                        crate::machine::Hook::PeerBack => Hook::PeerBack,
                        crate::machine::Hook::SplitBrain => Hook::SplitBrain,
                    };
                    let status = self.last_status.clone().unwrap_or_default();
                    if let Err(e) = self.run_hook(hook, &status, status.role) {
                        self.note(format!("hook {hook} failed: {e}"));
                    }
                }
                Action::Escalate(e) => self.escalate(e),
                Action::HandOver => {
                    self.handover_until = Some(self.clock.now() + HANDOVER_ANNOUNCE);
                    if self.beacon.is_none() {
                        self.note(
                            "hand-over: no beacon configured (failover.public), so the peer \
                             is not told; it promotes by itself only if it is the home node"
                                .into(),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    fn run_step(&mut self, step: Step) -> Result<(), String> {
        let status = self.last_status.clone().unwrap_or_default();
        match step {
            Step::AcquireLease | Step::ReleaseLease => {
                let Some(tx) = &self.witness_tx else {
                    return Ok(());
                };
                let (rtx, rrx) = mpsc::channel();
                let cmd = if step == Step::AcquireLease {
                    WitnessCmd::Acquire(rtx)
                } else {
                    WitnessCmd::Release(rtx)
                };
                tx.send(cmd)
                    .map_err(|_| "the witness thread is gone".to_string())?;
                let r = rrx
                    .recv_timeout(Duration::from_secs(5))
                    .map_err(|_| "the witness did not answer in 5 s".to_string())?;
                if step == Step::AcquireLease && r.is_ok() {
                    self.want_lease.store(true, Ordering::SeqCst);
                }
                if step == Step::ReleaseLease {
                    self.want_lease.store(false, Ordering::SeqCst);
                }
                r
            }
            Step::FencePeer => self.run_hook(Hook::Fence, &status, Role::Secondary),
            Step::PromoteStore => {
                // The machine may declare the peer dead a little before the
                // node's own timer does; the node refuses to promote while
                // it still sees a connected primary, so let it catch up.
                let limit = Duration::from_millis(self.machine.config().deadtime_ms);
                let deadline = self.clock.now() + limit;
                while self.clock.now() < deadline {
                    match self.node_status() {
                        Some(s)
                            if s.peer.role == Some(Role::Primary)
                                && s.connection == ConnectionState::Connected =>
                        {
                            self.clock.sleep(Duration::from_millis(10));
                        }
                        _ => break,
                    }
                }
                let r = self.node.promote();
                self.role_done(r)
            }
            Step::DemoteStore => {
                // Idempotent: a node that is already Secondary is demoted.
                if self
                    .node_status()
                    .is_some_and(|s| s.role == Role::Secondary)
                {
                    return Ok(());
                }
                self.demoting.store(true, Ordering::SeqCst);
                let r = self.node.demote();
                self.demoting.store(false, Ordering::SeqCst);
                self.role_done(r)
            }
            Step::OnPromote => self.run_hook(Hook::Promote, &status, Role::Primary),
            Step::OnDemote => self.run_hook(Hook::Demote, &status, Role::Secondary),
        }
    }

    /// Notes the node's answer to a promotion or demotion.
    fn role_done(&mut self, answer: Result<String, String>) -> Result<(), String> {
        let line = answer?;
        self.note(line);
        // The next observation must see the new role.
        self.node_status();
        Ok(())
    }

    /// Runs `hook` for a node about to be (or being) `role`.
    pub(super) fn run_hook(
        &mut self,
        hook: Hook,
        status: &Status,
        role: Role,
    ) -> Result<(), String> {
        self.run_hook_with_disk(hook, status, Some(status.disk), role)
    }

    pub(super) fn run_hook_with_disk(
        &mut self,
        hook: Hook,
        status: &Status,
        disk: Option<DiskState>,
        role: Role,
    ) -> Result<(), String> {
        let state = HookState {
            // Hooks see roles in lowercase, as `twinfs.state().role`.
            role: role.to_string(),
            disk: disk.map_or_else(|| "Unknown".into(), |d| d.to_string()),
            peer: if status.connection == ConnectionState::Connected {
                "connected".into()
            } else {
                "lost".into()
            },
            peer_address: Some(self.peer_address.clone()),
            generation: u64::from_str_radix(&status.generation, 16).unwrap_or(0),
            standby_serves: self.standby_serves,
            extra: Default::default(),
        };
        let started = self.now_ms();
        let clock = self.clock.now();
        let result = self.hooks.run(hook, &state);
        let took = self.clock.now().saturating_duration_since(clock);
        let t = self
            .counters
            .hooks
            .entry(hook.function_name().to_string())
            .or_default();
        t.runs += 1;
        t.failures += u64::from(result.is_err());
        t.last_seconds = took.as_secs_f64();
        t.total_seconds += t.last_seconds;
        let report = match &result {
            Ok(r) => Some(r),
            Err(e) => e.report(),
        };
        if let Some(r) = report {
            if r.defined {
                self.last_hooks = r
                    .actions
                    .iter()
                    .map(|a| format!("{} {a}", hook.function_name()))
                    .chain(r.undone.iter().map(|u| {
                        format!(
                            "{} undo {} ({:?}){}",
                            hook.function_name(),
                            u.action,
                            u.duration,
                            u.error
                                .as_ref()
                                .map(|e| format!(": failed: {e}"))
                                .unwrap_or_default()
                        )
                    }))
                    .collect();
                for line in self.last_hooks.clone() {
                    let at = self.wall(started);
                    self.push_timeline(format!("{at} {line}"));
                }
            }
        }
        self.dirty = true;
        result.map(|_| ()).map_err(|e| e.to_string())
    }

    fn escalate(&mut self, e: Escalation) {
        let default: &[&str] = match e {
            Escalation::None => {
                self.note(
                    "demotion failed and escalation is \"none\": this node may still hold \
                     the VIP or run the service; fix it, then `twinfs maintenance off`"
                        .into(),
                );
                return;
            }
            Escalation::Reboot => &["systemctl", "reboot", "--force"],
            Escalation::Poweroff => &["systemctl", "poweroff", "--force"],
        };
        let argv: Vec<String> = self
            .escalation_command
            .clone()
            .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        self.note(format!("escalating ({e:?}): {}", argv.join(" ")));
        self.write_status(true);
        match std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .status()
        {
            Ok(st) if st.success() => {}
            Ok(st) => self.note(format!("escalation {} exited with {st}", argv.join(" "))),
            Err(err) => self.note(format!("escalation {} failed: {err}", argv.join(" "))),
        }
    }
}
