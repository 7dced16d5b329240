//! What the supervisor publishes: [`FailoverStatus`], on a [`StatusBoard`]
//! within the process (the metrics endpoint reads it) and in
//! `DATA/failover.json` for the CLI's `twinfs status`.

use super::Driver;
use crate::machine::Activity;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The file `twinfs status` reads.
pub fn status_path(data_dir: &Path) -> PathBuf {
    data_dir.join("failover.json")
}

/// What `DATA/failover.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverStatus {
    /// Process id of the daemon that wrote it (a dead pid means it is stale).
    pub pid: u32,
    /// When it was written (RFC 3339).
    pub written: String,
    /// `Idle`, `Promoting`, `Demoting`, `RollingBack`, `Stopped` (in the JSON).
    pub activity: Activity,
    /// Why the node is in the role it is in, in one line.
    pub why: String,
    pub maintenance: bool,
    /// The last decisions, oldest first: "2026-11-30T09:01:02.123Z promote: peer silent ...".
    pub decisions: Vec<String>,
    /// The actions of the last hooks run, with their durations and results.
    pub last_hooks: Vec<String>,
    /// The public-network beacon: "peer heard 0.1 s ago (Primary, link up)".
    pub beacon: Option<String>,
    /// The ping targets: "10.0.0.1 reachable".
    pub ping: Option<String>,
    /// The witness: "reachable, lease held by www1, hears the peer".
    pub witness: Option<String>,
    /// Counts since the daemon started (for the metrics endpoint).
    #[serde(default)]
    pub counters: FailoverCounters,
}

/// What the supervisor did since the daemon started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverCounters {
    /// Promotions started (automatic, hand-over or election).
    pub promotions: u64,
    /// Demotions started (isolation, switchover, failback).
    pub demotions: u64,
    /// Promotions undone after a step failed.
    pub rollbacks: u64,
    /// Per hook (`on_promote`, ...): runs, failures and durations.
    pub hooks: std::collections::BTreeMap<String, HookTiming>,
}

/// How one hook has run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HookTiming {
    pub runs: u64,
    pub failures: u64,
    pub last_seconds: f64,
    pub total_seconds: f64,
}

impl FailoverStatus {
    /// The lines `twinfs status` adds under the node's own.
    pub fn human(&self) -> String {
        let mut s = format!("failover:    {:?} — {}\n", self.activity, self.why);
        if self.maintenance {
            s.push_str("             maintenance mode: no automatic action\n");
        }
        for (what, v) in [
            ("beacon", &self.beacon),
            ("ping", &self.ping),
            ("witness", &self.witness),
        ] {
            if let Some(v) = v {
                s.push_str(&format!("  {what:<10} {v}\n"));
            }
        }
        if !self.decisions.is_empty() {
            s.push_str("  decisions (oldest first):\n");
            for d in self.decisions.iter().rev().take(8).rev() {
                s.push_str(&format!("    {d}\n"));
            }
        }
        if !self.last_hooks.is_empty() {
            s.push_str("  last hook actions:\n");
            for a in &self.last_hooks {
                s.push_str(&format!("    {a}\n"));
            }
        }
        s
    }
}

/// Reads `DATA/failover.json` if a live daemon wrote it.
pub fn read_status(data_dir: &Path) -> Option<FailoverStatus> {
    let text = std::fs::read_to_string(status_path(data_dir)).ok()?;
    let st: FailoverStatus = serde_json::from_str(&text).ok()?;
    Path::new(&format!("/proc/{}", st.pid))
        .exists()
        .then_some(st)
}

/// The supervisor's latest status, as a value shared within the process (the
/// metrics endpoint reads it); `DATA/failover.json` carries the same for the
/// CLI's `twinfs status`.
#[derive(Clone, Default)]
pub struct StatusBoard(Arc<Mutex<Option<FailoverStatus>>>);

impl StatusBoard {
    fn publish(&self, st: &FailoverStatus) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(st.clone());
    }

    /// The latest status (`None` before the first one).
    pub fn get(&self) -> Option<FailoverStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Driver {
    /// Publishes the status when something changed, at least once a second,
    /// or now if `force`.
    pub(super) fn write_status(&mut self, force: bool) {
        let at = self.clock.now();
        let due = self
            .last_written
            .is_none_or(|t| at.saturating_duration_since(t) >= Duration::from_secs(1));
        if !force && !self.dirty && !due {
            return;
        }
        let now = self.now_ms();
        let (ping, witness) = {
            let p = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            (p.ping_text.clone(), p.witness_text.clone())
        };
        let beacon = self.beacon.as_ref().map(|b| {
            let st = b.status();
            // Under a flood: how much was refused, and how much of it dropped
            // unverified by the rate limits.
            let refused = if st.rejected > 0 {
                format!(
                    "; {} datagrams refused ({} dropped unverified)",
                    st.rejected,
                    st.intake.over_rate + st.intake.queue_full
                )
            } else {
                String::new()
            };
            let text = match st.heard {
                Some(h) => format!(
                    "peer heard {:.1} s ago from {} ({:?}, disk {:?}, replication link {}){}",
                    at.saturating_duration_since(h.at).as_secs_f64(),
                    h.from,
                    h.announce.role,
                    h.announce.disk,
                    if h.announce.link_up { "up" } else { "DOWN" },
                    st.last_rejection
                        .map(|r| format!("; last refused datagram: {r}"))
                        .unwrap_or_default()
                ),
                None => format!(
                    "peer never heard ({} sent){}",
                    st.sent,
                    st.last_rejection
                        .map(|r| format!("; last refused datagram: {r}"))
                        .unwrap_or_default()
                ),
            };
            text + &refused
        });
        let st = FailoverStatus {
            pid: std::process::id(),
            written: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            activity: self.machine.activity(),
            why: self.machine.why(now),
            maintenance: self.machine.maintenance(),
            decisions: self.timeline.iter().cloned().collect(),
            last_hooks: self.last_hooks.clone(),
            beacon,
            ping,
            witness,
            counters: self.counters.clone(),
        };
        self.board.publish(&st);
        let path = status_path(&self.data_dir);
        let tmp = path.with_extension("json.tmp");
        let ok = serde_json::to_vec_pretty(&st)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = ok {
            tracing::warn!("supervisor: cannot write {}: {e}", path.display());
        }
        self.last_written = Some(at);
        self.dirty = false;
    }
}
