//! `twinfs drill`: prove on a real, healthy pair that failover works, without
//! pulling cables. Run on the primary: it compares the block digests of both
//! nodes, switches over to the peer and checks the VIP, the ARP answer and
//! Apache from here, then asks the peer to switch back and checks again,
//! printing a timeline. Nothing is lost: both moves are planned switchovers
//! (demotion completes before the other side promotes).

use crate::config::Config;
use crate::supervisor::{self, AdminRequest, AdminResponse};
use crate::UsageError;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use twinfs_replicator::control::{self, Request, Response};
use twinfs_replicator::status::{ConnectionState, Role, Status};
use twinfs_supervisor::actions::{Actuators as _, HttpCheck, Vip};
use twinfs_supervisor::actuators::{arp_who_has, System};

/// How long each move may take before the drill gives up.
const MOVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the ARP query listens for an answer.
const ARP_WINDOW: Duration = Duration::from_millis(500);

struct Drill {
    started: Instant,
    failures: Vec<String>,
}

impl Drill {
    fn line(&self, what: &str) {
        println!("{:>8.3} s  {what}", self.started.elapsed().as_secs_f64());
    }

    fn check(&mut self, ok: bool, what: String) {
        if ok {
            self.line(&format!("ok    {what}"));
        } else {
            self.line(&format!("FAIL  {what}"));
            self.failures.push(what);
        }
    }
}

fn status(data_dir: &std::path::Path) -> anyhow::Result<Status> {
    match control::call(data_dir, &Request::Status, Duration::from_secs(5))? {
        Response::Status(s) => Ok(*s),
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
}

fn wait_for(
    data_dir: &std::path::Path,
    timeout: Duration,
    pred: impl Fn(&Status) -> bool,
) -> Option<Status> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(s) = status(data_dir) {
            if pred(&s) {
                return Some(s);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `twinfs drill`.
pub(crate) fn run(cfg: &Config) -> anyhow::Result<ExitCode> {
    let data_dir = &cfg.node.data_dir;
    let f = cfg.failover.as_ref().ok_or_else(|| {
        UsageError("twinfs drill needs a [failover] table (the supervisor runs the moves)".into())
    })?;
    let vipc = f.vip.as_ref().ok_or_else(|| {
        UsageError("twinfs drill checks the VIP: set failover.vip and failover.interface".into())
    })?;
    let vip = Vip {
        addr: vipc.addr,
        prefix: vipc.prefix,
        dev: vipc.interface.clone(),
    };
    let check_url = f.check_url.clone().unwrap_or_else(|| match vip.addr {
        IpAddr::V4(a) => format!("http://{a}/"),
        IpAddr::V6(a) => format!("http://[{a}]/"),
    });
    let system = System::default();
    let mut d = Drill {
        started: Instant::now(),
        failures: Vec::new(),
    };
    let s = status(data_dir)?;
    if s.role != Role::Primary || s.connection != ConnectionState::Connected || s.resync.is_some() {
        return Err(UsageError(format!(
            "run the drill on the primary of a healthy pair: this node is {:?} / {} / {}",
            s.role,
            s.connection,
            if s.resync.is_some() {
                "resyncing"
            } else {
                "no resync"
            }
        ))
        .into());
    }
    if supervisor::read_status(data_dir).is_none() {
        return Err(UsageError(
            "the supervisor is not running here (no live failover.json)".into(),
        )
        .into());
    }
    let peer = if s.peer.name.is_empty() {
        s.peer.address.clone()
    } else {
        s.peer.name.clone()
    };
    println!("drill: {} (primary) and {peer}, VIP {vip}", s.node);
    println!("{:>8}    timeline", "t");

    let digests = |d: &mut Drill, when: &str| match control::call(
        data_dir,
        &Request::Verify { repair: false },
        Duration::from_secs(3600),
    ) {
        Ok(Response::Done(line)) => d.check(
            true,
            format!("block digests equal on both nodes {when}: {line}"),
        ),
        Ok(Response::Error(e)) => d.check(false, format!("block digests {when}: {e}")),
        Ok(other) => d.check(false, format!("block digests {when}: unexpected {other:?}")),
        Err(e) => d.check(false, format!("block digests {when}: {e:#}")),
    };
    // The new primary's on_promote starts Apache after the mount: retry for
    // a while, and say how long it took.
    let http = |d: &mut Drill, who: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let r = loop {
            let r = system.http_check(&HttpCheck {
                url: check_url.clone(),
                expect_status: 200,
                expect_body: None,
                timeout: Duration::from_secs(5),
            });
            if r.as_ref().is_ok_and(|a| a.status == 200) || Instant::now() >= deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        match r {
            Ok(a) => d.check(
                a.status == 200,
                format!(
                    "{check_url} answers {} in {:?} (served by {who})",
                    a.status, a.elapsed
                ),
            ),
            Err(e) => d.check(false, format!("{check_url}: {e}")),
        }
    };
    let arp = |d: &mut Drill, expect_other: bool, who: &str| {
        let IpAddr::V4(ip) = vip.addr else {
            d.line("skip  ARP check (IPv6 VIP)");
            return;
        };
        let Some(sender) = own_ipv4(&vip.dev, ip) else {
            d.check(
                false,
                format!(
                    "ARP: {} has no IPv4 address of its own to ask from",
                    vip.dev
                ),
            );
            return;
        };
        match arp_who_has(&vip.dev, ip, sender, ARP_WINDOW) {
            Ok((mine, Some(other))) => d.check(
                expect_other,
                format!("ARP: {ip} answered by {other} (this node is {mine}); expected {who}"),
            ),
            Ok((mine, None)) => d.check(
                !expect_other,
                format!(
                    "ARP: no other host answers for {ip} (this node is {mine}); expected {who}"
                ),
            ),
            Err(e) => d.check(false, format!("ARP: {e}")),
        }
    };

    digests(&mut d, "before");
    http(&mut d, &s.node);

    // 1. Switch over to the peer.
    d.line(&format!("switchover: {} -> {peer}", s.node));
    match supervisor::admin_call(
        data_dir,
        &AdminRequest::Switchover,
        Duration::from_secs(300),
    )? {
        AdminResponse::Done(l) => d.line(&format!("      {l}")),
        AdminResponse::Error(e) => {
            d.check(false, format!("switchover refused: {e}"));
            return finish(d);
        }
    }
    let moved = wait_for(data_dir, MOVE_TIMEOUT, |s| {
        s.role == Role::Secondary && s.peer.role == Some(Role::Primary)
    });
    d.check(
        moved.is_some(),
        format!("{peer} is Primary, this node Secondary"),
    );
    if moved.is_none() {
        return finish(d);
    }
    let held = system.vip_held(&vip).unwrap_or(true);
    d.check(!held, format!("VIP {} released here", vip.addr));
    http(&mut d, &peer);
    arp(&mut d, true, &format!("{peer}'s MAC"));

    // 2. And back: this node asks the peer to hand over.
    d.line(&format!("switchover: {peer} -> {}", s.node));
    match supervisor::admin_call(data_dir, &AdminRequest::TakeOver, Duration::from_secs(30))? {
        AdminResponse::Done(l) => d.line(&format!("      {l}")),
        AdminResponse::Error(e) => {
            d.check(false, format!("take-over refused: {e}"));
            return finish(d);
        }
    }
    let back = wait_for(data_dir, MOVE_TIMEOUT, |s| s.role == Role::Primary);
    d.check(back.is_some(), format!("{} is Primary again", s.node));
    if back.is_none() {
        return finish(d);
    }
    // Primary means mounted; the VIP and Apache follow in on_promote.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !system.vip_held(&vip).unwrap_or(false) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = system.vip_held(&vip).unwrap_or(false);
    d.check(held, format!("VIP {} held here", vip.addr));
    http(&mut d, &s.node);
    arp(&mut d, false, "nobody else");
    let _ = wait_for(data_dir, MOVE_TIMEOUT, |s| {
        s.connection == ConnectionState::Connected && s.resync.is_none()
    });
    digests(&mut d, "after");
    finish(d)
}

fn finish(d: Drill) -> anyhow::Result<ExitCode> {
    if d.failures.is_empty() {
        println!("drill passed in {:.1} s", d.started.elapsed().as_secs_f64());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("drill FAILED ({} checks):", d.failures.len());
        for f in &d.failures {
            println!("  - {f}");
        }
        Ok(ExitCode::from(1))
    }
}

/// This host's own IPv4 address on `dev` (not the VIP), from `ip -o -4 addr`.
fn own_ipv4(dev: &str, vip: std::net::Ipv4Addr) -> Option<std::net::Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "dev", dev])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.split_once('/').and_then(|(a, _)| a.parse().ok()))
        .find(|a: &std::net::Ipv4Addr| *a != vip)
}
