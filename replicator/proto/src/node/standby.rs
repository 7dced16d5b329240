//! The serving standby (issue 15): what a secondary's read-only mount shows,
//! and how far behind the primary that view is.
//!
//! With `[standby] serve`, a secondary mounts its replica read-only once it
//! is UpToDate and following a primary ([`StandbyView::Serving`]). From then
//! on the mount stays: the view is the last consistent state the store
//! applied, through link losses and catch-ups. While a resync makes the disk
//! Inconsistent, the view is [`StandbyView::Hidden`] (the mount answers EIO,
//! the health check fails): the core says so *before* the first resync value
//! is handed to the driver, so no reader ever sees a half-resynced tree.
//! Promotion turns the same mount read-write and demotion read-only again
//! ([`super::Output::Mount`], [`super::Output::ReadOnly`]), in place.
//!
//! The lag is measured on the secondary, from what it can know: the
//! mutations it received and has not applied yet (count, bytes, and the
//! receive time of the oldest), plus, while it is not following the primary
//! (link down, catching up), the time since its view was last known current.

use super::{NodeCore, Output, RoleState};
use crate::{DiskState, Role, Seq};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a secondary's mount shows, as the core tells the driver
/// ([`super::Output::Standby`]); the serde form is the lowercase name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StandbyView {
    /// No standby mount (serving is off, or the node never was in sync yet).
    #[default]
    Off,
    /// Mounted read-only, serving the last consistent applied state.
    Serving,
    /// Mounted, but every request fails (EIO): the disk is Inconsistent.
    Hidden,
}

impl std::fmt::Display for StandbyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StandbyView::Off => "off",
            StandbyView::Serving => "serving",
            StandbyView::Hidden => "hidden",
        })
    }
}

/// How far a standby's view is behind the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyLag {
    /// Mutations the primary has that the view does not show: received and
    /// not yet applied, plus (while catching up) those still to come.
    pub mutations: u64,
    /// The bytes of the received, not yet applied ones.
    pub bytes: u64,
    /// How old the view is: since when the primary has had something the
    /// view does not show. `None` while the view was never current.
    pub age: Option<Duration>,
    /// Whether the figures are exact (following the primary) or a lower
    /// bound (the link is down or catching up: the primary may have more).
    pub exact: bool,
}

/// The secondary's bookkeeping for [`StandbyLag`].
#[derive(Debug, Default)]
pub(super) struct LagTracker {
    /// Mutations handed to the driver and not reported applied: (seq,
    /// bytes, when received). Bounded by what the replica hands out, itself
    /// bounded by the connection's in-flight budget.
    pending: VecDeque<(Seq, u64, Instant)>,
    pending_bytes: u64,
    /// The last moment the view was known to show everything the primary had.
    current_at: Option<Instant>,
}

impl LagTracker {
    pub(super) fn handed_out(&mut self, seq: Seq, bytes: u64, now: Instant) {
        self.pending.push_back((seq, bytes, now));
        self.pending_bytes += bytes;
    }

    pub(super) fn applied(&mut self, seq: Seq) {
        while let Some(&(s, b, _)) = self.pending.front() {
            if s > seq {
                break;
            }
            self.pending_bytes -= b;
            self.pending.pop_front();
        }
    }

    /// The connection is gone: what it handed out is still applied, but the
    /// count starts again with the next one.
    pub(super) fn forget_pending(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }
}

impl NodeCore {
    /// What the mount shows now.
    pub fn standby_view(&self) -> StandbyView {
        self.view
    }

    /// Whether this node follows a connected primary with nothing left to
    /// catch up: then its lag is exactly what it received and did not apply.
    fn following(&self) -> bool {
        matches!(
            &self.role,
            RoleState::Secondary {
                replica: Some(_),
                catch_up: None,
                ..
            }
        ) && self.peer().is_some_and(|p| p.role == Role::Primary)
            && self.resync.is_none()
            && self.pending_jump.is_none()
            && self.state.disk == DiskState::UpToDate
    }

    /// (Secondary) how far behind the primary this node's view is at `now`.
    pub fn standby_lag(&self, now: Instant) -> StandbyLag {
        let l = &self.lag;
        let exact = self.following();
        let mut mutations = l.pending.len() as u64;
        if let RoleState::Secondary {
            catch_up: Some((target, _)),
            replica: Some(r),
            ..
        } = &self.role
        {
            mutations = mutations.max(target.0.saturating_sub(r.last_applied().0));
        }
        let as_of = if exact {
            Some(l.pending.front().map_or(now, |p| p.2))
        } else {
            l.current_at
        };
        StandbyLag {
            mutations,
            bytes: l.pending_bytes,
            age: as_of.map(|t| now.saturating_duration_since(t)),
            exact,
        }
    }

    /// Whether a balancer should send this node reads at `now`: `Ok` with
    /// what it serves, or `Err` with why not (the health check's answer).
    pub fn standby_health(&self, now: Instant) -> Result<String, String> {
        if self.role() == Role::Primary {
            return if self.writes_open {
                Ok("primary".into())
            } else {
                Err("primary, but its writes are closed".into())
            };
        }
        let Some(max_lag) = self.cfg.standby else {
            return Err("secondary without a standby view ([standby] serve = false)".into());
        };
        match self.view {
            StandbyView::Off => Err(format!(
                "secondary, no standby view yet (disk {}, it mounts once UpToDate and connected)",
                self.state.disk
            )),
            StandbyView::Hidden => Err(format!(
                "secondary, view hidden: the disk is {} (a resync runs)",
                self.state.disk
            )),
            StandbyView::Serving => {
                let lag = self.standby_lag(now);
                match lag.age {
                    Some(age) if age <= max_lag => Ok(format!(
                        "standby, {} mutations ({} bytes) behind, {:.3} s old",
                        lag.mutations,
                        lag.bytes,
                        age.as_secs_f64()
                    )),
                    Some(age) => {
                        Err(format!(
                        "standby too far behind: {:.1} s old, more than standby.max_lag {:.1} s{}",
                        age.as_secs_f64(),
                        max_lag.as_secs_f64(),
                        if lag.exact { "" } else { " (not following the primary)" }
                    ))
                    }
                    None => Err("standby view never current yet".into()),
                }
            }
        }
    }

    /// What the mount should show now (serving must be on, and the node a
    /// secondary: a primary's mount is read-write).
    fn desired_view(&self) -> StandbyView {
        if self.cfg.standby.is_none() || self.role() == Role::Primary || self.stopped {
            return self.view;
        }
        match self.state.disk {
            DiskState::Inconsistent | DiskState::Diskless if self.view == StandbyView::Off => {
                StandbyView::Off
            }
            DiskState::Inconsistent | DiskState::Diskless => StandbyView::Hidden,
            DiskState::UpToDate | DiskState::Outdated
                if self.view != StandbyView::Off || self.following() =>
            {
                StandbyView::Serving
            }
            DiskState::UpToDate | DiskState::Outdated => StandbyView::Off,
        }
    }

    /// Keeps the lag's "last known current" moment (after every input).
    pub(super) fn note_lag(&mut self, now: Instant) {
        if self.following() {
            self.lag.current_at = Some(self.lag.pending.front().map_or(now, |p| p.2));
        }
    }

    /// Tells the driver when the view must change. Called where the disk
    /// state changes, before what the change is about is handed out (a
    /// resync's first value), and after every input.
    pub(super) fn update_view(&mut self) {
        let want = self.desired_view();
        if want != self.view {
            self.view = want;
            self.outputs.push_back(Output::Standby(want));
        }
    }

    /// A demotion turned the mount read-only in place: it is a standby view
    /// now (the driver made it so; nothing to tell).
    pub(super) fn demoted_in_place(&mut self) {
        self.view = StandbyView::Serving;
    }

    /// How a primary leaves its mount when it stops being primary.
    pub(super) fn leave_mount(&self) -> Output {
        if self.cfg.standby.is_some() {
            Output::ReadOnly
        } else {
            Output::Unmount
        }
    }
}
