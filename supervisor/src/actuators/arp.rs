//! Raw Ethernet frames for a VIP: the ARP duplicate-address probe (RFC 5227),
//! gratuitous ARP, and the IPv6 unsolicited neighbour advertisement.
//!
//! Frames are built and parsed here by hand (they are 42 to 86 bytes) and
//! sent through an AF_PACKET socket from `pnet_datalink`.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender};

use super::ping::checksum;

/// A MAC address.
pub(crate) type Mac = [u8; 6];

const BROADCAST: Mac = [0xff; 6];
const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// Frames read during one probe at most, whatever the window (a busy
/// segment must not keep us here).
const MAX_FRAMES: usize = 100_000;
/// How long one receive waits before the deadline is checked again.
const POLL: Duration = Duration::from_millis(10);

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn mac_string(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An open raw socket on one interface.
pub(crate) struct Link {
    pub(crate) dev: String,
    pub(crate) mac: Mac,
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
}

impl Link {
    /// Opens a raw socket bound to `dev` (needs CAP_NET_RAW).
    pub(crate) fn open(dev: &str) -> Result<Link, String> {
        let iface = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == dev)
            .ok_or_else(|| format!("interface {dev} not found"))?;
        let mac = iface
            .mac
            .map(|m| m.octets())
            .filter(|m| *m != [0; 6])
            .ok_or_else(|| format!("interface {dev} has no Ethernet address (ARP needs one)"))?;
        let config = pnet_datalink::Config {
            read_timeout: Some(POLL),
            write_timeout: Some(Duration::from_secs(1)),
            promiscuous: false,
            ..Default::default()
        };
        match pnet_datalink::channel(&iface, config) {
            Ok(Channel::Ethernet(tx, rx)) => Ok(Link {
                dev: dev.to_string(),
                mac,
                tx,
                rx,
            }),
            Ok(_) => Err(format!("interface {dev}: not an Ethernet channel")),
            Err(e) => Err(format!(
                "raw socket on {dev}: {e} (root or CAP_NET_RAW needed)"
            )),
        }
    }

    pub(crate) fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        match self.tx.send_to(frame, None) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(format!("sending on {}: {e}", self.dev)),
            None => Err(format!("sending on {}: frame too large", self.dev)),
        }
    }

    /// Asks who has `ip` with an ordinary ARP request from `sender` (this
    /// host's own address, not 0.0.0.0, so that a node claiming the address
    /// right now does not take the question for a competing probe) and
    /// returns the MAC of the first reply within `window`.
    pub(crate) fn who_has(
        &mut self,
        ip: Ipv4Addr,
        sender: Ipv4Addr,
        window: Duration,
    ) -> Result<Option<Mac>, String> {
        let deadline = Instant::now() + window;
        let request = arp_frame(self.mac, ARP_REQUEST, self.mac, sender, [0; 6], ip);
        self.send(&request)?;
        let ours = self.mac;
        self.first_answer(deadline, |arp| {
            (arp.op != ARP_REQUEST && arp.spa == ip && arp.sha != ours).then_some(arp.sha)
        })
    }

    /// Sends an RFC 5227 probe for `ip` and listens for `window`: the MAC of
    /// another host that claims the address, if any. Stops at the first one.
    pub(crate) fn probe(&mut self, ip: Ipv4Addr, window: Duration) -> Result<Option<Mac>, String> {
        let deadline = Instant::now() + window;
        let probe = arp_frame(
            self.mac,
            ARP_REQUEST,
            self.mac,
            Ipv4Addr::UNSPECIFIED,
            [0; 6],
            ip,
        );
        self.send(&probe)?;
        let ours = self.mac;
        self.first_answer(deadline, |arp| conflict(arp, ip, ours))
    }

    /// Reads ARP packets until `deadline` (at most `MAX_FRAMES` frames) and
    /// returns the first MAC `pick` finds in one.
    fn first_answer(
        &mut self,
        deadline: Instant,
        pick: impl Fn(&Arp) -> Option<Mac>,
    ) -> Result<Option<Mac>, String> {
        for _ in 0..MAX_FRAMES {
            if Instant::now() >= deadline {
                break;
            }
            let frame = match self.rx.next() {
                Ok(f) => f,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(format!("receiving on {}: {e}", self.dev)),
            };
            if let Some(mac) = parse_arp(frame).as_ref().and_then(&pick) {
                return Ok(Some(mac));
            }
        }
        Ok(None)
    }
}

/// A parsed ARP packet (Ethernet/IPv4 only).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Arp {
    pub(crate) op: u16,
    pub(crate) sha: Mac,
    pub(crate) spa: Ipv4Addr,
    pub(crate) tha: Mac,
    pub(crate) tpa: Ipv4Addr,
}

/// RFC 5227 2.1.1: while probing, a packet from another host whose sender
/// address is ours, or another host's probe for the same address, is a
/// conflict.
fn conflict(arp: &Arp, ip: Ipv4Addr, ours: Mac) -> Option<Mac> {
    if arp.sha == ours {
        return None;
    }
    let claims = arp.spa == ip;
    let probes_too = arp.op == ARP_REQUEST && arp.spa.is_unspecified() && arp.tpa == ip;
    (claims || probes_too).then_some(arp.sha)
}

/// An Ethernet frame carrying an ARP packet, broadcast, padded to 60 bytes.
pub(crate) fn arp_frame(
    src: Mac,
    op: u16,
    sha: Mac,
    spa: Ipv4Addr,
    tha: Mac,
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&BROADCAST);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETH_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]); // Ethernet, IPv4, sizes
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f.resize(60, 0);
    f
}

/// Gratuitous ARP: a broadcast request with sender = target = the address
/// (RFC 5227's announcement). Linux, switches and routers update an existing
/// entry for the address from it.
pub(crate) fn garp(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    arp_frame(mac, ARP_REQUEST, mac, ip, [0; 6], ip)
}

pub(crate) fn parse_arp(frame: &[u8]) -> Option<Arp> {
    if frame.len() < 42 || frame[12..14] != ETH_ARP.to_be_bytes() {
        return None;
    }
    let a = &frame[14..];
    if a[0..6] != [0, 1, 0x08, 0x00, 6, 4] {
        return None;
    }
    let op = u16::from_be_bytes([a[6], a[7]]);
    if op != ARP_REQUEST && op != ARP_REPLY {
        return None;
    }
    let mac = |i: usize| -> Mac { a[i..i + 6].try_into().unwrap_or([0; 6]) };
    let ip = |i: usize| Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]);
    Some(Arp {
        op,
        sha: mac(8),
        spa: ip(14),
        tha: mac(18),
        tpa: ip(24),
    })
}

/// An unsolicited neighbour advertisement for `ip` to all nodes (RFC 4861
/// 7.2.6), override flag set so that neighbours replace the old address.
pub(crate) fn unsolicited_na(mac: Mac, ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0]; // NA, O flag
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]); // option: target link-layer address
    icmp.extend_from_slice(&mac);
    let mut pseudo = Vec::with_capacity(40 + icmp.len());
    pseudo.extend_from_slice(&ip.octets());
    pseudo.extend_from_slice(&all_nodes.octets());
    pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&icmp);
    let c = checksum(&pseudo);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 (required)
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&all_nodes.octets());
    f.extend_from_slice(&icmp);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn garp_round_trips() {
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let f = garp(A, vip);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &BROADCAST);
        let a = parse_arp(&f).unwrap();
        assert_eq!(
            a,
            Arp {
                op: ARP_REQUEST,
                sha: A,
                spa: vip,
                tha: [0; 6],
                tpa: vip
            }
        );
        assert_eq!(mac_string(&A), "02:00:00:00:00:0a");
    }

    #[test]
    fn conflict_rules() {
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let other = Ipv4Addr::new(192, 0, 2, 2);
        let reply = parse_arp(&arp_frame(B, ARP_REPLY, B, vip, A, Ipv4Addr::UNSPECIFIED)).unwrap();
        assert_eq!(conflict(&reply, vip, A), Some(B));
        // Our own probe, echoed back by the packet socket, is not a conflict.
        let ours = parse_arp(&arp_frame(
            A,
            ARP_REQUEST,
            A,
            Ipv4Addr::UNSPECIFIED,
            [0; 6],
            vip,
        ))
        .unwrap();
        assert_eq!(conflict(&ours, vip, A), None);
        // Another host probing for the same address is.
        let theirs = parse_arp(&arp_frame(
            B,
            ARP_REQUEST,
            B,
            Ipv4Addr::UNSPECIFIED,
            [0; 6],
            vip,
        ))
        .unwrap();
        assert_eq!(conflict(&theirs, vip, A), Some(B));
        // Unrelated traffic is not.
        let unrelated = parse_arp(&arp_frame(B, ARP_REQUEST, B, other, [0; 6], vip)).unwrap();
        assert_eq!(conflict(&unrelated, vip, A), None);
        assert!(parse_arp(&[0u8; 41]).is_none());
    }

    #[test]
    fn na_checksum_and_layout() {
        let ip: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let f = unsolicited_na(A, ip);
        assert_eq!(f.len(), 14 + 40 + 32);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[14 + 7], 255);
        // The checksum over pseudo-header + message verifies to zero.
        let icmp = &f[54..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[22..54]);
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(icmp);
        assert_eq!(checksum(&pseudo), 0);
        assert_eq!(&icmp[8..24], &ip.octets());
        assert_eq!(&icmp[26..32], &A);
    }
}
