//! The virtual IP: `ip addr add|del`, the duplicate probe and the
//! announcements.

use std::net::IpAddr;
use std::thread;
use std::time::Duration;

use super::arp::{self, Link};
use super::{exec, show, System};
use crate::actions::{ActionError, ExecResult, Vip, VipClaim};

/// Time limit for one `ip` command (it answers in milliseconds).
const IP_TIMEOUT: Duration = Duration::from_secs(10);

fn ip(args: &[&str]) -> (Vec<String>, Result<ExecResult, ActionError>) {
    let argv: Vec<String> = std::iter::once("ip")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let r = exec::run(&argv, IP_TIMEOUT);
    (argv, r)
}

/// `ip ...: what it printed` for a failed command.
fn ip_failed(argv: &[String], r: &ExecResult) -> ActionError {
    let said = if r.timed_out {
        format!("no answer within {IP_TIMEOUT:?}")
    } else {
        let s = r.stderr.trim();
        if s.is_empty() {
            format!("exited with {:?}", r.code)
        } else {
            s.to_string()
        }
    };
    ActionError(format!("{}: {said}", show(argv)))
}

fn check(vip: &Vip) -> Result<(), ActionError> {
    let max = if vip.addr.is_ipv4() { 32 } else { 128 };
    if vip.prefix > max {
        return Err(ActionError(format!(
            "VIP {vip}: prefix /{} is longer than {max}",
            vip.prefix
        )));
    }
    if vip.dev.is_empty()
        || vip.dev.starts_with('-')
        || vip.dev.contains(['/', ' '])
        || vip.dev.len() > 15
    {
        return Err(ActionError(format!(
            "VIP {vip}: {:?} is not an interface name",
            vip.dev
        )));
    }
    Ok(())
}

/// Whether `ip -o addr show dev X` output lists `addr/prefix`.
pub(crate) fn parse_held(out: &str, addr: IpAddr, prefix: u8) -> bool {
    out.lines().any(|line| {
        let toks: Vec<&str> = line.split_whitespace().collect();
        toks.windows(2).any(|w| {
            (w[0] == "inet" || w[0] == "inet6")
                && w[1].split_once('/').is_some_and(|(a, p)| {
                    a.parse::<IpAddr>().is_ok_and(|a| a == addr)
                        && p.parse::<u8>().is_ok_and(|p| p == prefix)
                })
        })
    })
}

pub(crate) fn held(vip: &Vip) -> Result<bool, ActionError> {
    check(vip)?;
    let (argv, r) = ip(&["-o", "addr", "show", "dev", &vip.dev]);
    let r = r?;
    if r.timed_out || r.code != Some(0) {
        return Err(ip_failed(&argv, &r));
    }
    Ok(parse_held(&r.stdout, vip.addr, vip.prefix))
}

pub(crate) fn claim(sys: &System, vip: &Vip) -> Result<VipClaim, ActionError> {
    check(vip)?;
    let mut already_held = held(vip)?;
    let cidr = format!("{}/{}", vip.addr, vip.prefix);
    if !already_held {
        let mut args = vec!["addr", "add", &cidr, "dev", &vip.dev];
        if vip.addr.is_ipv6() {
            // No kernel DAD: the address must be usable at once after a
            // failover (keepalived does the same for its IPv6 VIPs).
            args.push("nodad");
        }
        let (argv, r) = ip(&args);
        let r = r?;
        if r.code != Some(0) || r.timed_out {
            if r.stderr.contains("File exists") {
                already_held = true;
            } else {
                return Err(ip_failed(&argv, &r));
            }
        }
    }
    match probe_and_announce(sys, vip) {
        Ok((conflict, announcements)) => {
            let claim = VipClaim {
                already_held,
                announcements,
                conflict,
            };
            tracing::info!(vip = %vip, already_held, announcements, conflict = ?claim.conflict, "VIP claimed");
            Ok(claim)
        }
        Err(e) => {
            // A claim that fails leaves nothing behind: the caller undoes the
            // steps that succeeded, not this one.
            if !already_held {
                if let Err(undo) = release(sys, vip) {
                    tracing::error!(vip = %vip, error = %undo, "could not remove the VIP after a failed claim");
                }
            }
            Err(e)
        }
    }
}

/// The probe (IPv4), then the announcements unless another host answered.
fn probe_and_announce(sys: &System, vip: &Vip) -> Result<(Option<String>, u32), ActionError> {
    let fail = |e: String| ActionError(format!("VIP {vip}: {e}"));
    let mut link = Link::open(&vip.dev).map_err(fail)?;
    if let IpAddr::V4(v4) = vip.addr {
        if let Some(mac) = link.probe(v4, sys.opts.arp_probe).map_err(fail)? {
            let mac = arp::mac_string(&mac);
            // Announcing would take the traffic from a host that still uses
            // the address; the hook decides (release, or announce anyway).
            tracing::warn!(vip = %vip, %mac, "another host answers for the VIP: not announcing");
            return Ok((Some(mac), 0));
        }
    }
    let n = announce_series(sys, vip, link).map_err(fail)?;
    Ok((None, n))
}

pub(crate) fn announce(sys: &System, vip: &Vip) -> Result<u32, ActionError> {
    if !held(vip)? {
        return Err(ActionError(format!(
            "VIP {vip}: not held here, nothing to announce (claim it first)"
        )));
    }
    let link = Link::open(&vip.dev).map_err(|e| ActionError(format!("VIP {vip}: {e}")))?;
    announce_series(sys, vip, link).map_err(|e| ActionError(format!("VIP {vip}: {e}")))
}

/// Sends the first announcement now and the other `garp_count - 1` from a
/// background thread, `garp_interval` apart. Returns `garp_count`: the
/// announcements sent plus those scheduled (a later release or claim of the
/// same address cancels the rest).
fn announce_series(sys: &System, vip: &Vip, mut link: Link) -> Result<u32, String> {
    let count = sys.opts.garp_count;
    if count == 0 {
        return Ok(0);
    }
    let frame = match vip.addr {
        IpAddr::V4(a) => arp::garp(link.mac, a),
        IpAddr::V6(a) => arp::unsolicited_na(link.mac, a),
    };
    let key = (vip.dev.clone(), vip.addr);
    let mine = {
        let mut series = sys.series.lock().unwrap_or_else(|p| p.into_inner());
        let g = series.entry(key.clone()).or_insert(0);
        *g += 1;
        let mine = *g;
        link.send(&frame)?;
        mine
    };
    if count > 1 {
        let series = std::sync::Arc::clone(&sys.series);
        let interval = sys.opts.garp_interval;
        let what = vip.to_string();
        thread::Builder::new()
            .name("twinfs-garp".into())
            .spawn(move || {
                for _ in 1..count {
                    thread::sleep(interval);
                    let series = series.lock().unwrap_or_else(|p| p.into_inner());
                    if series.get(&key) != Some(&mine) {
                        tracing::debug!(vip = %what, "announcements cancelled");
                        return;
                    }
                    if let Err(e) = link.send(&frame) {
                        tracing::warn!(vip = %what, error = %e, "gratuitous announcement failed");
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start the announcement thread: {e}"))?;
    }
    Ok(count)
}

/// Cancels the announcements still scheduled for the address.
fn cancel_series(sys: &System, vip: &Vip) {
    let mut series = sys.series.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = series.get_mut(&(vip.dev.clone(), vip.addr)) {
        *g += 1;
    }
}

pub(crate) fn release(sys: &System, vip: &Vip) -> Result<(), ActionError> {
    check(vip)?;
    cancel_series(sys, vip);
    if !held(vip)? {
        return Ok(());
    }
    let cidr = format!("{}/{}", vip.addr, vip.prefix);
    let (argv, r) = ip(&["addr", "del", &cidr, "dev", &vip.dev]);
    let r = r?;
    if r.code != Some(0) || r.timed_out {
        // Gone meanwhile: the goal is reached.
        if r.stderr.contains("Cannot assign requested address") {
            return Ok(());
        }
        return Err(ip_failed(&argv, &r));
    }
    tracing::info!(vip = %vip, "VIP released");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "2: eth0    inet 10.0.0.1/24 brd 10.0.0.255 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.0.0.10/24 scope global secondary eth0\\       valid_lft forever preferred_lft forever
2: eth0    inet6 2001:db8::10/64 scope global nodad \\       valid_lft forever preferred_lft forever
2: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever
";

    #[test]
    fn held_matches_address_and_prefix() {
        assert!(parse_held(OUT, "10.0.0.10".parse().unwrap(), 24));
        assert!(!parse_held(OUT, "10.0.0.10".parse().unwrap(), 16));
        assert!(!parse_held(OUT, "10.0.0.11".parse().unwrap(), 24));
        assert!(parse_held(OUT, "2001:db8:0::10".parse().unwrap(), 64));
        assert!(!parse_held("", "10.0.0.10".parse().unwrap(), 24));
    }

    #[test]
    fn bad_vips_are_refused_before_any_command() {
        let v = |addr: &str, prefix, dev: &str| Vip {
            addr: addr.parse().unwrap(),
            prefix,
            dev: dev.into(),
        };
        assert!(check(&v("10.0.0.10", 33, "eth0"))
            .unwrap_err()
            .0
            .contains("prefix /33"));
        assert!(check(&v("2001:db8::1", 129, "eth0")).is_err());
        assert!(check(&v("10.0.0.10", 24, "-all"))
            .unwrap_err()
            .0
            .contains("not an interface name"));
        assert!(check(&v("10.0.0.10", 24, "a-very-long-interface")).is_err());
        assert!(check(&v("10.0.0.10", 24, "eth0.100")).is_ok());
    }
}
