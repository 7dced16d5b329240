//! The ping and witness threads: they keep [`Probes`] fresh for the
//! driver's observations, and post evidence for the right to acknowledge
//! alone on the node's [`EvidenceBoard`].

use super::millis;
use crate::machine::{PingView, WitnessView};
use crate::witness::{LeaseStatus, WitnessClient};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twinfs_replicator::evidence::{Evidence, EvidenceBoard, EvidenceSource};

/// Shared facts the probe threads keep fresh.
#[derive(Default)]
pub(super) struct Probes {
    pub(super) ping: Option<PingView>,
    pub(super) ping_text: Option<String>,
    pub(super) witness: Option<WitnessView>,
    pub(super) witness_text: Option<String>,
}

/// Commands to the witness thread, with the reply channel.
pub(super) enum WitnessCmd {
    Acquire(mpsc::Sender<Result<(), String>>),
    Release(mpsc::Sender<Result<(), String>>),
}

/// Pings the targets every keepalive; the network is reachable while any
/// answers. Each answer is also evidence for the right to acknowledge alone
/// (when no witness is configured, the node's board accepts it): it counts
/// from the moment its probe was sent, for half of deadtime, so that it has
/// run out before a peer that stops hearing this node may promote.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_pinger(
    targets: Vec<IpAddr>,
    every: Duration,
    deadtime: Duration,
    t0: Instant,
    probes: Arc<Mutex<Probes>>,
    evidence: Arc<EvidenceBoard>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let timeout = (deadtime / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let counts = matches!(evidence.source(), EvidenceSource::Ping(_));
    std::thread::spawn(move || {
        let mut state: Option<(bool, u64)> = None;
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let mut answered = Vec::new();
            for t in &targets {
                let sent = Instant::now();
                if let Ok(true) = crate::actuators::ping(*t, timeout) {
                    answered.push(*t);
                    if counts {
                        evidence.post(Evidence {
                            what: format!("the ping target {t} answered a probe sent"),
                            obtained_at: sent,
                            valid_until: sent + deadtime / 2,
                        });
                    }
                }
            }
            let reachable = !answered.is_empty();
            let now = millis(t0.elapsed());
            let since = match state {
                Some((r, since)) if r == reachable => since,
                _ => now,
            };
            state = Some((reachable, since));
            {
                let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
                p.ping = Some(PingView {
                    reachable,
                    since_ms: since,
                });
                p.ping_text = Some(if reachable {
                    format!("reachable ({} of {} answer)", answered.len(), targets.len())
                } else {
                    format!(
                        "UNREACHABLE for {:.1} s (none of {} answers)",
                        (now - since) as f64 / 1000.0,
                        targets
                            .iter()
                            .map(IpAddr::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
            }
            if let Some(rest) = every.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    })
}

/// Talks to the witness every keepalive: renews the lease while it is wanted,
/// pings otherwise, and carries out the driver's acquire/release steps.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_witness(
    mut client: WitnessClient,
    me: String,
    every: Duration,
    deadtime: Duration,
    rx: mpsc::Receiver<WitnessCmd>,
    want_lease: Arc<AtomicBool>,
    probes: Arc<Mutex<Probes>>,
    evidence: Arc<EvidenceBoard>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next_periodic = Instant::now();
        // Bounded by `stop`: each round waits at most 100 ms.
        while !stop.load(Ordering::SeqCst) {
            let wait = next_periodic
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let cmd = rx.recv_timeout(wait).ok();
            if cmd.is_none() && Instant::now() < next_periodic {
                continue;
            }
            // A granted lease is evidence from the moment its request was sent.
            let sent = Instant::now();
            let (answer, reply) = match cmd {
                Some(WitnessCmd::Acquire(tx)) => (client.renew_lease(), Some(tx)),
                Some(WitnessCmd::Release(tx)) => (client.release_lease(), Some(tx)),
                None => {
                    next_periodic = Instant::now() + every;
                    let a = if want_lease.load(Ordering::SeqCst) {
                        client.renew_lease()
                    } else {
                        client.ping()
                    };
                    (a, None)
                }
            };
            // Unreachable: what was granted runs out by itself.
            if let Ok(a) = &answer {
                match a.lease {
                    LeaseStatus::Granted { until } => evidence.post(Evidence {
                        what: "the witness renewed this node's primary lease, asked".into(),
                        obtained_at: sent,
                        valid_until: until,
                    }),
                    LeaseStatus::NotAsked => {}
                    LeaseStatus::Refused | LeaseStatus::Grace | LeaseStatus::Released => {
                        evidence.withdraw()
                    }
                }
            }
            let (view, text, result) = match &answer {
                Ok(a) => {
                    let holder = a.holder.as_ref().map(|h| h.node.clone());
                    let mine = holder.as_deref() == Some(me.as_str());
                    let granted = matches!(a.lease, LeaseStatus::Granted { .. });
                    let hears_peer = a.peer_heard_ago.is_some_and(|d| d < deadtime);
                    let view = WitnessView {
                        reachable: true,
                        grants_me: mine || holder.is_none() || granted,
                        hears_peer,
                    };
                    let text = format!(
                        "reachable (rtt {:.1} ms), lease {}, {}",
                        a.rtt.as_secs_f64() * 1000.0,
                        match &holder {
                            Some(h) => format!("held by {h}"),
                            None => "free".into(),
                        },
                        match a.peer_heard_ago {
                            Some(d) if d < deadtime =>
                                format!("hears the peer ({:.1} s ago)", d.as_secs_f64()),
                            Some(d) => format!("peer silent for {:.1} s", d.as_secs_f64()),
                            None => "never heard the peer".into(),
                        }
                    );
                    let result = match &a.lease {
                        LeaseStatus::Granted { .. } | LeaseStatus::Released => Ok(()),
                        other => Err(format!(
                            "the witness did not grant the lease ({other:?}; holder {})",
                            holder.as_deref().unwrap_or("none")
                        )),
                    };
                    (view, text, result)
                }
                Err(e) => (
                    WitnessView {
                        reachable: false,
                        grants_me: false,
                        hears_peer: false,
                    },
                    format!("UNREACHABLE: {e}"),
                    Err(format!("witness: {e}")),
                ),
            };
            {
                let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
                p.witness = Some(view);
                p.witness_text = Some(text);
            }
            if let Some(tx) = reply {
                let _ = tx.send(result);
            }
        }
    })
}
