//! The Prometheus endpoint of `twinfs run`: `GET /metrics` answers in the
//! text exposition format with what `twinfs status` shows (role, disk,
//! connection, lag, resync progress) and what the supervisor did (promotions,
//! hook runs and durations). It listens on `metrics.listen`, 127.0.0.1:9747 by
//! default. A port that cannot be bound is logged, not fatal: metrics never
//! stop a node.

use crate::supervisor::{FailoverStatus, StatusBoard};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use twinfs_replicator::node::NodeHandle;
use twinfs_replicator::status::{
    ConnectionState, DiskState, Role, StandbyView, Status, WritesState,
};
use twinfs_supervisor::machine::Activity;

/// The running endpoint; dropping it stops it.
pub(crate) struct MetricsHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for MetricsHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving on `addr`, or logs why it cannot.
pub(crate) fn start(
    addr: SocketAddr,
    node: NodeHandle,
    failover: Option<StatusBoard>,
) -> Option<MetricsHandle> {
    let server = match tiny_http::Server::http(addr) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "metrics: cannot listen on {addr}: {e} (set metrics.listen, or \"off\")"
            );
            return None;
        }
    };
    tracing::info!("metrics on http://{addr}/metrics");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            // Bounded by the stop flag: each wait lasts at most 200 ms.
            while !flag.load(Ordering::SeqCst) {
                let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(200)) else {
                    continue;
                };
                let (code, body) = if req.url() == "/metrics" || req.url().starts_with("/metrics?")
                {
                    (200, render(&node, failover.as_ref()))
                } else if req.url() == "/health" {
                    health(&node)
                } else {
                    (
                        404,
                        "not found: the metrics are at /metrics, the health check at /health\n"
                            .to_string(),
                    )
                };
                let header = tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"text/plain; version=0.0.4; charset=utf-8"[..],
                )
                .expect("a valid header");
                let _ = req.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(code)
                        .with_header(header),
                );
            }
        })
        .ok()?;
    Some(MetricsHandle {
        stop,
        thread: Some(thread),
    })
}

/// One metric family: HELP, TYPE and its samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.0,
            "# HELP twinfs_{name} {help}\n# TYPE twinfs_{name} {kind}"
        );
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut l = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(l, "{}{k}=\"{v}\"", if i == 0 { "" } else { "," });
        }
        if l.is_empty() {
            let _ = writeln!(self.0, "twinfs_{name} {value}");
        } else {
            let _ = writeln!(self.0, "twinfs_{name}{{{l}}} {value}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A state set: one sample per possible state, 1 for the current one.
    /// Each state's label is its form in `twinfs status --json`.
    fn states<T: PartialEq + serde::Serialize>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        all: &[T],
        now: &T,
    ) {
        self.family(name, "gauge", help);
        for s in all {
            let value = serde_json::to_value(s).unwrap_or_default();
            let text = value.as_str().unwrap_or_default();
            self.sample(name, &[(label, text)], f64::from(u8::from(s == now)));
        }
    }
}

/// The exposition text for `node` and its supervisor (if `[failover]` runs one).
/// `GET /health`, what a balancer probes (mod_proxy_hcheck through the
/// node's Apache): 200 when this node should get reads (the primary, or a
/// standby view within `standby.max_lag`), else 503; the body says why.
fn health(node: &NodeHandle) -> (u16, String) {
    match node.status(Duration::from_secs(2)) {
        Ok(s) if s.health.ok => (200, format!("ok: {}\n", s.health.why)),
        Ok(s) => (503, format!("unavailable: {}\n", s.health.why)),
        Err(e) => (503, format!("unavailable: the node does not answer: {e}\n")),
    }
}

pub(crate) fn render(node: &NodeHandle, failover: Option<&StatusBoard>) -> String {
    let status = node.status(Duration::from_secs(2)).ok();
    render_from(
        status.as_ref(),
        failover.and_then(StatusBoard::get).as_ref(),
    )
}

fn render_from(status: Option<&Status>, failover: Option<&FailoverStatus>) -> String {
    let mut o = Out(String::new());
    o.one(
        "up",
        "gauge",
        "1 if the replication node answered this scrape.",
        f64::from(u8::from(status.is_some())),
    );
    if let Some(s) = status {
        o.states(
            "role",
            "The node's role.",
            "role",
            &[Role::Primary, Role::Secondary],
            &s.role,
        );
        o.states(
            "disk_state",
            "The local disk's state (only UpToDate may be promoted).",
            "state",
            &[
                DiskState::UpToDate,
                DiskState::Outdated,
                DiskState::Inconsistent,
                DiskState::Diskless,
            ],
            &s.disk,
        );
        o.states(
            "connection_state",
            "The replication link.",
            "state",
            &ConnectionState::ALL,
            &s.connection,
        );
        o.one(
            "suspended",
            "gauge",
            "1 while writes are held back: the peer is lost and this node holds no evidence \
             that it is not the isolated one (or on_peer_loss = suspend).",
            f64::from(u8::from(s.suspended)),
        );
        o.states(
            "writes_state",
            "Whether writes are acknowledged, and on what grounds.",
            "state",
            &WritesState::ALL,
            &s.writes.state,
        );
        o.one(
            "unguarded",
            "gauge",
            "1 when no witness and no ping target are configured: a cut cable can cause a split brain.",
            f64::from(u8::from(s.writes.unguarded)),
        );
        o.one(
            "applied_seq",
            "gauge",
            "The last mutation applied to the local store.",
            s.applied_seq as f64,
        );
        o.one(
            "committed_seq",
            "gauge",
            "The last mutation acknowledged to writers (primary).",
            s.committed_seq as f64,
        );
        o.one(
            "replication_lag_mutations",
            "gauge",
            "Mutations the peer has not applied yet (primary).",
            s.lag.seqs as f64,
        );
        o.one(
            "replication_lag_bytes",
            "gauge",
            "Their payload bytes.",
            s.lag.bytes as f64,
        );
        o.one(
            "health_ok",
            "gauge",
            "1 when a balancer should send this node reads (what /health answers with 200).",
            f64::from(u8::from(s.health.ok)),
        );
        if let Some(v) = &s.standby {
            o.states(
                "standby_view",
                "What the standby's read-only mount shows (issue 15).",
                "view",
                &[StandbyView::Off, StandbyView::Serving, StandbyView::Hidden],
                &v.view,
            );
            o.one(
                "standby_behind_mutations",
                "gauge",
                "Mutations the primary has that the standby view does not show yet.",
                v.behind_mutations as f64,
            );
            o.one(
                "standby_behind_bytes",
                "gauge",
                "The bytes of the received mutations the standby has not applied yet.",
                v.behind_bytes as f64,
            );
            if let Some(ms) = v.behind_ms {
                o.one(
                    "standby_behind_seconds",
                    "gauge",
                    "How old the standby view is (since the primary had something it does not show).",
                    ms as f64 / 1000.0,
                );
            }
        }
        if let Some(h) = s.peer.heard_ms_ago {
            o.one(
                "peer_heard_seconds",
                "gauge",
                "Seconds since the last frame from the peer.",
                h as f64 / 1000.0,
            );
        }
        if let Some(l) = &s.peer.link {
            o.one(
                "link_rtt_seconds",
                "gauge",
                "Smoothed round-trip time of the replication link (QUIC).",
                l.rtt_us as f64 / 1e6,
            );
            o.one(
                "link_datagram_bytes",
                "gauge",
                "UDP payload size in use after path MTU discovery.",
                f64::from(l.path_mtu),
            );
            o.one(
                "link_sent_packets_total",
                "counter",
                "Packets sent on the current replication connection.",
                l.sent_packets as f64,
            );
            o.one(
                "link_lost_packets_total",
                "counter",
                "Packets of the current replication connection declared lost.",
                l.lost_packets as f64,
            );
        }
        let (done, total, eta) = s.resync.as_ref().map_or((0, 0, None), |r| {
            (r.done_bytes, r.total_bytes, r.eta_seconds)
        });
        o.one(
            "resync_active",
            "gauge",
            "1 while a resync runs.",
            f64::from(u8::from(s.resync.is_some())),
        );
        o.one(
            "resync_done_bytes",
            "gauge",
            "Bytes the running resync has shipped.",
            done as f64,
        );
        o.one(
            "resync_total_bytes",
            "gauge",
            "Bytes the running resync ships in all.",
            total as f64,
        );
        if let Some(eta) = eta {
            o.one(
                "resync_eta_seconds",
                "gauge",
                "Seconds left in the running resync, at the current rate.",
                eta as f64,
            );
        }
        o.one(
            "split_brain",
            "gauge",
            "1 while a split brain is detected and unresolved.",
            f64::from(u8::from(s.split_brain.is_some())),
        );
        let c = &s.counters;
        o.one(
            "mutations_sent_total",
            "counter",
            "Mutation frames sent to the peer.",
            c.mutations_sent as f64,
        );
        o.one(
            "mutation_bytes_sent_total",
            "counter",
            "Mutation payload bytes sent to the peer.",
            c.mutation_bytes_sent as f64,
        );
        o.one(
            "mutations_applied_total",
            "counter",
            "Mutations applied from the peer.",
            c.mutations_applied as f64,
        );
        o.one(
            "resync_bytes_sent_total",
            "counter",
            "Bytes sent by resyncs.",
            c.resync_bytes_sent as f64,
        );
        o.one(
            "connections_total",
            "counter",
            "Replication connections that completed a handshake.",
            c.connections as f64,
        );
        o.one(
            "peer_losses_total",
            "counter",
            "Times the peer was declared lost.",
            c.peer_losses as f64,
        );
        o.one(
            "write_suspensions_total",
            "counter",
            "Times writes were suspended (peer lost, no right to acknowledge alone).",
            c.suspensions as f64,
        );
    }
    if let Some(f) = failover {
        o.states(
            "failover_activity",
            "What the supervisor is doing.",
            "activity",
            &[
                Activity::Idle,
                Activity::Promoting,
                Activity::Demoting,
                Activity::RollingBack,
                Activity::Stopped,
            ],
            &f.activity,
        );
        o.one(
            "failover_maintenance",
            "gauge",
            "1 in maintenance mode (no automatic action).",
            f64::from(u8::from(f.maintenance)),
        );
        let c = &f.counters;
        o.one(
            "failover_promotions_total",
            "counter",
            "Promotions the supervisor started.",
            c.promotions as f64,
        );
        o.one(
            "failover_demotions_total",
            "counter",
            "Demotions the supervisor started.",
            c.demotions as f64,
        );
        o.one(
            "failover_rollbacks_total",
            "counter",
            "Promotions undone after a failed step.",
            c.rollbacks as f64,
        );
        o.family("hook_runs_total", "counter", "Lua hook runs.");
        for (h, t) in &c.hooks {
            o.sample("hook_runs_total", &[("hook", h)], t.runs as f64);
        }
        o.family(
            "hook_failures_total",
            "counter",
            "Lua hook runs that failed.",
        );
        for (h, t) in &c.hooks {
            o.sample("hook_failures_total", &[("hook", h)], t.failures as f64);
        }
        o.family(
            "hook_last_duration_seconds",
            "gauge",
            "How long the hook's last run took.",
        );
        for (h, t) in &c.hooks {
            o.sample("hook_last_duration_seconds", &[("hook", h)], t.last_seconds);
        }
        o.family(
            "hook_duration_seconds_total",
            "counter",
            "Time spent in the hook, all runs.",
        );
        for (h, t) in &c.hooks {
            o.sample(
                "hook_duration_seconds_total",
                &[("hook", h)],
                t.total_seconds,
            );
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_states_counters_and_hooks() {
        let s = Status {
            role: Role::Primary,
            disk: DiskState::UpToDate,
            connection: ConnectionState::SyncSource,
            resync: Some(twinfs_replicator::status::Resync {
                direction: "source".into(),
                done_bytes: 10,
                total_bytes: 40,
                eta_seconds: Some(3),
            }),
            health: twinfs_replicator::status::Health {
                ok: true,
                why: "primary".into(),
            },
            standby: Some(twinfs_replicator::status::StandbyStatus {
                view: StandbyView::Serving,
                behind_mutations: 3,
                behind_bytes: 4096,
                behind_ms: Some(1500),
                exact: true,
                max_lag_ms: 10_000,
            }),
            ..Status::default()
        };
        let mut f = FailoverStatus {
            activity: Activity::Idle,
            ..FailoverStatus::default()
        };
        f.counters.promotions = 2;
        f.counters.hooks.insert(
            "on_promote".into(),
            crate::supervisor::HookTiming {
                runs: 2,
                failures: 1,
                last_seconds: 0.25,
                total_seconds: 0.5,
            },
        );
        let text = render_from(Some(&s), Some(&f));
        for want in [
            "twinfs_up 1\n",
            "twinfs_role{role=\"Primary\"} 1\n",
            "twinfs_role{role=\"Secondary\"} 0\n",
            "twinfs_connection_state{state=\"SyncSource\"} 1\n",
            "twinfs_resync_done_bytes 10\n",
            "twinfs_resync_total_bytes 40\n",
            "twinfs_resync_eta_seconds 3\n",
            "twinfs_failover_promotions_total 2\n",
            "twinfs_hook_runs_total{hook=\"on_promote\"} 2\n",
            "twinfs_hook_failures_total{hook=\"on_promote\"} 1\n",
            "twinfs_hook_last_duration_seconds{hook=\"on_promote\"} 0.25\n",
            "# TYPE twinfs_failover_promotions_total counter\n",
            "twinfs_health_ok 1\n",
            "twinfs_standby_view{view=\"serving\"} 1\n",
            "twinfs_standby_view{view=\"hidden\"} 0\n",
            "twinfs_standby_behind_mutations 3\n",
            "twinfs_standby_behind_bytes 4096\n",
            "twinfs_standby_behind_seconds 1.5\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        // Every sample line belongs to a family declared before it.
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{name} has no TYPE line");
            }
        }
        let down = render_from(None, None);
        assert_eq!(down.lines().last(), Some("twinfs_up 0"));
    }
}
