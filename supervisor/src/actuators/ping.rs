//! One ICMP echo, for the supervisor's ping target (Heartbeat's `ping` node).

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::actions::ActionError;

/// Sequence numbers shared by all pings of this process, so that a late
/// answer to an earlier ping is never taken for the current one.
static SEQ: AtomicU16 = AtomicU16::new(1);

/// Answers read before giving up, whatever the timeout (other pings' replies
/// on a raw socket).
const MAX_PACKETS: usize = 10_000;

/// Sends one ICMP echo request to `target` and waits up to `timeout` for the
/// reply: `Ok(true)` when it came, `Ok(false)` when it did not (or the
/// network is unreachable from here). IPv4 and IPv6.
///
/// As root a raw ICMP socket is used; otherwise an unprivileged datagram
/// ICMP socket (allowed by `net.ipv4.ping_group_range`). An error means no
/// ping could be sent at all.
pub fn ping(target: IpAddr, timeout: Duration) -> Result<bool, ActionError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let (sock, raw) = open(target)?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let ident = (std::process::id() as u16) ^ 0x7457;
    let request = echo_request(target.is_ipv4(), ident, seq);
    // A connected ICMP socket only receives from the target.
    let to = socket2::SockAddr::from(SocketAddr::new(target, 0));
    if let Err(e) = sock
        .connect(&to)
        .and_then(|()| sock.send(&request).map(drop))
    {
        if unreachable(&e) {
            tracing::debug!(%target, error = %e, "ping: unreachable");
            return Ok(false);
        }
        return Err(ActionError(format!("ping {target}: cannot send: {e}")));
    }
    let mut buf = [0u8; 1500];
    for _ in 0..MAX_PACKETS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| ActionError(format!("ping {target}: {e}")))?;
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) if unreachable(&e) => return Ok(false),
            Err(e) => return Err(ActionError(format!("ping {target}: receiving: {e}"))),
        };
        if is_our_reply(target.is_ipv4(), raw, &buf[..n], ident, seq) {
            tracing::trace!(%target, elapsed = ?started.elapsed(), "ping: reply");
            return Ok(true);
        }
    }
    Ok(false)
}

fn unreachable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable | ErrorKind::ConnectionRefused
    )
}

/// A raw ICMP socket (root), else a datagram ICMP socket; `true` for raw.
fn open(target: IpAddr) -> Result<(Socket, bool), ActionError> {
    let (domain, proto) = match target {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    match Socket::new(domain, Type::RAW, Some(proto)) {
        Ok(s) => Ok((s, true)),
        Err(raw_err) if raw_err.kind() == ErrorKind::PermissionDenied => {
            match Socket::new(domain, Type::DGRAM, Some(proto)) {
                Ok(s) => Ok((s, false)),
                Err(e) => Err(ActionError(format!(
                    "ping {target}: no raw ICMP socket ({raw_err}: run as root) and no datagram ICMP socket ({e}: see net.ipv4.ping_group_range)"
                ))),
            }
        }
        Err(e) => Err(ActionError(format!(
            "ping {target}: cannot open an ICMP socket: {e}"
        ))),
    }
}

const PAYLOAD: &[u8; 16] = b"twinfs-ping-ping";

fn echo_request(v4: bool, ident: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![if v4 { 8 } else { 128 }, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    // ICMPv6 checksums cover a pseudo-header: the kernel fills them in.
    if v4 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// Whether `pkt` is the echo reply to our request. Raw IPv4 sockets deliver
/// the IP header too; datagram sockets rewrite the identifier, so only the
/// sequence number and payload are compared there.
fn is_our_reply(v4: bool, raw: bool, pkt: &[u8], ident: u16, seq: u16) -> bool {
    let icmp = if v4 && raw {
        let Some(first) = pkt.first() else {
            return false;
        };
        let ihl = usize::from(first & 0x0f) * 4;
        if ihl < 20 || pkt.len() < ihl {
            return false;
        }
        &pkt[ihl..]
    } else {
        pkt
    };
    if icmp.len() < 8 + PAYLOAD.len() {
        return false;
    }
    let reply_type = if v4 { 0 } else { 129 };
    icmp[0] == reply_type
        && icmp[1] == 0
        && (!raw || icmp[4..6] == ident.to_be_bytes())
        && icmp[6..8] == seq.to_be_bytes()
        && &icmp[8..8 + PAYLOAD.len()] == PAYLOAD
}

/// The Internet checksum (RFC 1071).
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_request_verifies_to_zero() {
        let p = echo_request(true, 0x1234, 7);
        assert_eq!(checksum(&p), 0);
        // RFC 1071's example words.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn replies_are_matched_on_ident_seq_and_payload() {
        let mut reply = echo_request(true, 9, 3);
        reply[0] = 0;
        let mut ip = vec![0x45u8];
        ip.resize(20, 0);
        ip.extend_from_slice(&reply);
        assert!(is_our_reply(true, true, &ip, 9, 3));
        assert!(!is_our_reply(true, true, &ip, 9, 4));
        assert!(!is_our_reply(true, true, &ip, 8, 3));
        // Datagram socket: no IP header, identifier rewritten by the kernel.
        assert!(is_our_reply(true, false, &reply, 1, 3));
        // Our own request is not a reply.
        assert!(!is_our_reply(true, false, &echo_request(true, 9, 3), 9, 3));
        let mut v6 = echo_request(false, 9, 3);
        v6[0] = 129;
        assert!(is_our_reply(false, true, &v6, 9, 3));
    }

    #[test]
    fn loopback_answers() {
        match ping("127.0.0.1".parse().unwrap(), Duration::from_secs(2)) {
            Ok(up) => assert!(up, "127.0.0.1 did not answer a ping"),
            // Neither root nor in ping_group_range: nothing to test here.
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => eprintln!("skipped: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
}
