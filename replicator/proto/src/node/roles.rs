//! Role changes: promotion (with its refusals), demotion, the split-brain
//! victim's demotion, shutdown, and `discard-my-data`.

use super::{Host, NodeCore, Output, RoleState, Unmounting};
use crate::{DiskState, Generation, Primary, Role};
use std::time::Instant;

impl NodeCore {
    /// `twinfs promote`. `Ok` means the promotion started: the answer comes
    /// from [`NodeCore::mounted`] once the driver mounted. `Err` is the
    /// refusal (or the failure), as the admin reads it.
    pub fn promote(&mut self, now: Instant, host: &mut dyn Host) -> Result<(), String> {
        if self.role() == Role::Primary {
            return Err("this node is already primary".into());
        }
        let disk = self.state.disk;
        if !disk.promotable() {
            return Err(format!(
                "refusing to promote: the local disk is {disk} (it may miss acknowledged writes); \
                 it becomes UpToDate once it has caught up with the peer"
            ));
        }
        if let Some(peer) = self.peer() {
            if peer.role == Role::Primary {
                return Err(format!(
                    "refusing to promote: the peer {} is primary and connected; demote it first",
                    peer.node
                ));
            }
        }
        self.become_primary(now, host).map_err(|e| {
            self.become_secondary(
                now,
                host,
                &format!("promotion failed, back to secondary: {e}"),
            );
            format!("promotion failed: {e}")
        })
    }

    fn become_primary(&mut self, now: Instant, host: &mut dyn Host) -> Result<(), String> {
        host.sync()?;
        let connected = self.peer().is_some();
        if !connected && !self.state.diverged() {
            // Writing without the peer: a new generation, so that the peer is
            // recognised as behind (and a second primary as a split brain).
            self.state.generation = host.new_generation();
            self.state.generation_start = host.last_applied().0;
        }
        self.state.role = Role::Primary;
        self.state.primary_since_ms = host.wall_ms();
        host.save(&self.state)?;
        let last = host.last_applied();
        // Promoted without the peer: it is lost already (see `resume_alone`).
        let primary = if connected {
            Primary::resume(self.cfg.protocol.clone(), last, now)
        } else {
            Primary::resume_alone(self.cfg.protocol.clone(), last, now)
        };
        self.role = RoleState::Primary {
            primary,
            catch_up: None,
            // Nothing above the floor: the peer's history up to here is ours.
            vouched: self.state.floor >= last.0,
            need_ack: false,
            resumed_at: last,
        };
        self.writes_open = true;
        self.outputs.push_back(Output::OpenWrites(last));
        self.outputs.push_back(Output::Mount);
        self.note(format!(
            "promoted to primary (generation {}, seq {})",
            Generation(self.state.generation),
            last.0
        ));
        self.reconnect("role change: now primary");
        Ok(())
    }

    /// The mount of a promotion is up (or failed, with why): the answer to
    /// `twinfs promote`.
    pub fn mounted(
        &mut self,
        now: Instant,
        host: &mut dyn Host,
        result: Result<(), String>,
    ) -> Result<String, String> {
        match result {
            Ok(()) => Ok(format!(
                "{} is now primary (generation {}), mounted",
                self.cfg.name,
                Generation(self.state.generation)
            )),
            Err(e) => {
                if self.role() == Role::Primary {
                    self.become_secondary(
                        now,
                        host,
                        &format!("promotion failed, back to secondary: {e}"),
                    );
                }
                Err(format!("promotion failed: the mount did not come up: {e}"))
            }
        }
    }

    /// `twinfs demote`: `Ok` means the unmount started; the answer comes
    /// from [`NodeCore::unmounted`].
    pub fn demote(&mut self, now: Instant) -> Result<(), String> {
        if self.role() != Role::Primary {
            return Err("this node is not primary".into());
        }
        if self.unmounting.is_some() {
            return Err("already demoting or shutting down".into());
        }
        self.unmounting = Some(Unmounting::Demote);
        self.release_suspended_writes(now);
        let leave = self.leave_mount();
        self.outputs.push_back(leave);
        Ok(())
    }

    /// The unmount finished (or failed). For a demotion, returns the answer
    /// to `twinfs demote`.
    pub fn unmounted(
        &mut self,
        now: Instant,
        host: &mut dyn Host,
        result: Result<(), String>,
    ) -> Option<Result<String, String>> {
        match (self.unmounting.take()?, result) {
            (Unmounting::Demote, Ok(())) => {
                if self.cfg.standby.is_some() {
                    self.demoted_in_place();
                }
                self.become_secondary(now, host, "demoted to secondary");
                Some(Ok(format!("{} is now secondary", self.cfg.name)))
            }
            (Unmounting::Victim, Ok(())) => {
                self.pending_sb_demote = false;
                if self.cfg.standby.is_some() {
                    self.demoted_in_place();
                }
                self.become_secondary(
                    now,
                    host,
                    "demoted by the split-brain policy; this node's own changes will be overwritten",
                );
                None
            }
            (Unmounting::Victim, Err(e)) => {
                self.pending_sb_demote = false;
                self.refuse(format!(
                    "the split-brain policy chose this node's changes to be discarded, but it cannot stop being primary: {e}"
                ));
                None
            }
            (Unmounting::Demote, Err(e)) => {
                // A failed demotion never leaves a node that acknowledges
                // writes: the mount stays (reads go on), every write fails.
                let why = format!(
                    "demotion failed (unmount: {e}): this node refuses every write until it \
                     is demoted"
                );
                self.close_writes(why.clone());
                self.note(why);
                Some(Err(format!(
                    "cannot demote: unmount failed: {e}; still primary, refusing all writes"
                )))
            }
            (Unmounting::Shutdown, r) => {
                if let Err(e) = r {
                    tracing::error!("unmount at shutdown failed: {e}");
                }
                self.close_writes("the node is shutting down".into());
                self.stop();
                None
            }
        }
    }

    fn become_secondary(&mut self, now: Instant, host: &mut dyn Host, why: &str) {
        if self.role() == Role::Primary {
            self.close_writes("the node is no longer primary".into());
            // Publish what the last writes reached, then forget the state machine.
            self.drive(now, host, || None);
        }
        self.role = RoleState::secondary();
        self.state.role = Role::Secondary;
        self.save(host);
        self.note(why.into());
        self.reconnect("role change: now secondary");
    }

    /// SIGTERM/SIGINT: a primary unmounts first (its last writes are still
    /// acknowledged meanwhile); the node stops once [`NodeCore::stopped`].
    pub fn begin_shutdown(&mut self) {
        if self.role() == Role::Primary {
            if self.unmounting.is_none() {
                self.unmounting = Some(Unmounting::Shutdown);
                self.outputs.push_back(Output::Unmount);
            }
        } else {
            self.stop();
        }
    }

    fn stop(&mut self) {
        self.abandon_resync();
        if self.view != super::StandbyView::Off && self.role() != Role::Primary {
            self.view = super::StandbyView::Off;
            self.outputs
                .push_back(Output::Standby(super::StandbyView::Off));
        }
        self.stopped = true;
        self.outputs.push_back(Output::Stop);
    }

    /// `twinfs discard-my-data`: this node gives up what it wrote on its own;
    /// at the next connection it is resynced from the peer.
    pub fn discard_my_data(&mut self, host: &mut dyn Host) -> Result<(), String> {
        if self.role() == Role::Primary {
            return Err(
                "this node is primary: `twinfs demote` it first (its changes since the split are then discarded)"
                    .into(),
            );
        }
        // Pretend this node never moved on: the peer's generation wins, and
        // the resync overwrites everything this node changed after the floor.
        self.state.generation = self.state.shared;
        self.state.generation_start = host.last_applied().0;
        if self.state.disk == DiskState::UpToDate {
            self.state.disk = DiskState::Outdated;
        }
        self.save(host);
        self.outputs.push_back(Output::SplitBrainCleared);
        self.refusal = None;
        self.refusing = false;
        self.reconnect("discarding my data: reconnecting");
        Ok(())
    }
}
